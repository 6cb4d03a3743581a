//! [`RefStream`]: the refs a streaming task (Ray's generator) yields, each as soon as its
//! value exists. The owner's side is `owner::stream`.

use crate::error::{Error, Result};
use crate::object_ref::ObjectRef;
use crate::runtime::{runtime, Runtime};
use crate::task::{self, TaskArg, TaskOptions};
use ferry_proto::{ObjectId, TaskId};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The values of a streaming task (`#[ferry::remote(streaming)]`, or an actor method with
/// `#[ferry::method(streaming)]`), as refs, in the order the task yields them: each is
/// yielded as soon as its value exists, while the task goes on.
///
/// Both an [`Iterator`] (blocking) and a [`futures_util::Stream`]. Back-pressure: the task
/// runs at most a window of values ahead of what was taken from here (`backpressure(n)` on
/// the call's options, 64 by default), then waits. Errors in place: if the task fails
/// midway (a panic, its worker lost with no retries left, a cancel), the values it made
/// stand, and one last ref carries the error (its `get` returns it); then the stream ends.
///
/// Dropping the stream frees the values not taken and cancels a task still running.
#[must_use = "a stream does nothing unless iterated; dropping it cancels its task"]
pub struct RefStream<T> {
    rt: Option<&'static Runtime>,
    task: Option<TaskId>,
    next: u32,
    /// A ref to yield once, then end (the call failed before a task existed).
    failed: Option<ObjectId>,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for RefStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefStream").field("task", &self.task).field("taken", &self.next).finish()
    }
}

impl<T> RefStream<T> {
    pub(crate) fn of(submitted: task::Submitted) -> RefStream<T> {
        let (rt, task, failed) = match submitted {
            task::Submitted::Task(t) => (runtime().ok(), Some(t), None),
            task::Submitted::Failed(rt, e) => (Some(rt), None, Some(rt.failed_object(e))),
            task::Submitted::NoRuntime => (None, None, Some(ObjectId::default())),
        };
        RefStream { rt, task, next: 0, failed, done: false, _t: PhantomData }
    }

    /// How many refs were taken from it so far.
    pub fn taken(&self) -> u32 {
        self.next
    }

    /// The streaming task's id (`None` if the call failed before it became a task).
    pub fn task_id(&self) -> Option<TaskId> {
        self.task
    }

    /// Cancels the task making the values (as [`crate::cancel_with`]); the values made
    /// stand, and the stream ends with a ref whose `get` returns `Cancelled`.
    pub fn cancel(&self, opts: crate::CancelOptions) {
        if let (Some(rt), Some(task)) = (self.rt, self.task) {
            rt.with_state(|st, fx| st.cancel(ObjectId { task, index: 0 }, opts.force, opts.recursive, fx));
        }
    }

    fn poll_ref(&mut self, waker: &Waker) -> Poll<Option<ObjectRef<T>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(id) = self.failed.take() {
            self.done = true;
            return Poll::Ready(Some(ObjectRef::from_id(id)));
        }
        let (Some(rt), Some(task)) = (self.rt, self.task) else {
            self.done = true;
            return Poll::Ready(None);
        };
        let next = self.next;
        match rt.with_state(|st, fx| st.poll_stream(task, next, waker, fx)) {
            Poll::Ready(Some(Ok(id))) => {
                self.next += 1;
                Poll::Ready(Some(ObjectRef::from_id(id)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(ObjectRef::from_id(rt.failed_object(e))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next ref, awaited (the [`futures_util::Stream`] side without its trait).
    pub async fn next_async(&mut self) -> Option<ObjectRef<T>> {
        std::future::poll_fn(|cx| self.poll_ref(cx.waker())).await
    }

    /// The next ref, waiting at most `timeout` for it: `Ok(None)` at the end, and
    /// [`Error::Timeout`] if the task made no new value in time (the stream goes on).
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ObjectRef<T>>> {
        self.wait_next(Some(Instant::now() + timeout)).ok_or(Error::Timeout { waited: timeout })
    }

    fn wait_next(&mut self, deadline: Option<Instant>) -> Option<Option<ObjectRef<T>>> {
        match self.rt {
            Some(rt) => rt.block_until(deadline, |w| self.poll_ref(w)),
            // No runtime: only a failed ref to yield, or the end.
            None => match self.poll_ref(Waker::noop()) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            },
        }
    }
}

impl<T> Iterator for RefStream<T> {
    type Item = ObjectRef<T>;

    /// Blocks until the task yields its next value (or ends).
    fn next(&mut self) -> Option<ObjectRef<T>> {
        match self.wait_next(None) {
            Some(r) => r,
            // The task waiting here was cancelled: the stream ends for it with that.
            None if !self.done => {
                self.done = true;
                let name = "the task iterating a stream".to_string();
                self.rt.map(|rt| ObjectRef::from_id(rt.failed_object(Error::Cancelled { task: name })))
            }
            None => None,
        }
    }
}

impl<T> futures_util::Stream for RefStream<T> {
    type Item = ObjectRef<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ObjectRef<T>>> {
        self.get_mut().poll_ref(cx.waker())
    }
}

// A stream is only ever polled through `&mut`: nothing in it is pinned.
impl<T> Unpin for RefStream<T> {}

impl<T> Drop for RefStream<T> {
    fn drop(&mut self) {
        if let (Some(rt), Some(task)) = (self.rt, self.task) {
            let next = self.next;
            rt.with_state(|st, fx| st.drop_stream(task, next, fx));
        }
    }
}

/// Submits a streaming task (used by generated code).
#[doc(hidden)]
pub fn submit_stream<T>(function: &'static str, opts: &TaskOptions, args: Vec<TaskArg>) -> RefStream<T> {
    RefStream::of(task::submit_streaming(function, opts, args))
}
