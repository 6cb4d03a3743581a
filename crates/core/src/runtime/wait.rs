//! Waiting: a thread blocks until the owner table wakes it (in a worker, lending its CPU
//! for the wait), and `block_on` runs a future on the calling thread.

use super::*;

impl Runtime {
    /// Blocks the calling thread until `poll` is ready or the deadline passes (`None`).
    /// In a worker, a task that waits gives its CPU back for the wait.
    pub(crate) fn block_until<R>(&self, deadline: Option<Instant>, poll: impl FnMut(&Waker) -> Poll<R>) -> Option<R> {
        with_thread_waker(|waker| self.block_with(waker, deadline, poll))
    }

    fn block_with<R>(
        &self,
        waker: &Waker,
        deadline: Option<Instant>,
        mut poll: impl FnMut(&Waker) -> Poll<R>,
    ) -> Option<R> {
        let mut blocked = None;
        loop {
            if let Poll::Ready(r) = poll(waker) {
                return Some(r);
            }
            // The task waiting here was cancelled: its wait ends (the caller says so).
            if crate::executor::cancelled_now() {
                return None;
            }
            if blocked.is_none() {
                blocked = Some(self.executor.as_ref().and_then(|x| x.enter_blocked(&self.node)));
            }
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    thread::park_timeout(d - now);
                }
            }
        }
    }
}

struct ThreadWaker {
    thread: thread::Thread,
}

thread_local! {
    /// This thread's waker, made once: a `get` of a value that is already there (the common
    /// case) then costs no allocation and no `thread::current()`.
    static THREAD_WAKER: Waker = Waker::from(Arc::new(ThreadWaker { thread: thread::current() }));
}

/// Runs `f` with a waker that unparks this thread.
fn with_thread_waker<R>(f: impl FnOnce(&Waker) -> R) -> R {
    let mut f = Some(f);
    match THREAD_WAKER.try_with(|w| (f.take().expect("called once"))(w)) {
        Ok(r) => r,
        // While this thread's locals are torn down: a waker of its own.
        Err(_) => (f.take().expect("not called"))(&Waker::from(Arc::new(ThreadWaker { thread: thread::current() }))),
    }
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.thread.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.thread.unpark();
    }
}

/// Runs a future to completion on this thread (used for `async fn` tasks).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let tw = Arc::new(ThreadWaker { thread: thread::current() });
    let waker = Waker::from(tw);
    let mut cx = std::task::Context::from_waker(&waker);
    let mut blocked = None;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        if blocked.is_none() {
            if let Some(rt) = try_runtime() {
                blocked = Some(rt.executor.as_ref().and_then(|x| x.enter_blocked(&rt.node)));
            }
        }
        thread::park();
    }
}
