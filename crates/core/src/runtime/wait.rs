//! Waiting: a thread blocks until the owner table wakes it (in a worker, lending its CPU
//! for the wait), and `block_on` runs a future on the calling thread.

use super::*;

impl Runtime {
    /// Blocks the calling thread until `poll` is ready or the deadline passes (`None`).
    /// In a worker, a task that waits gives its CPU back for the wait.
    pub(crate) fn block_until<R>(
        &self,
        deadline: Option<Instant>,
        mut poll: impl FnMut(&Waker) -> Poll<R>,
    ) -> Option<R> {
        let tw = Arc::new(ThreadWaker { thread: thread::current() });
        let waker = Waker::from(tw);
        let mut blocked = None;
        loop {
            if let Poll::Ready(r) = poll(&waker) {
                return Some(r);
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
