//! Streaming tasks (Ray's generators): the producer's values reach the owner one by one
//! (`FromWorker::Streamed`), become objects `0, 1, ..` of the task as they arrive, and are
//! taken in order by the caller's `RefStream`.
//!
//! The stream holds one handle of each value it has not handed out yet; taking a value
//! passes that handle to the consumer's `ObjectRef`. Back-pressure: the producer may run
//! `window` values ahead of what was taken; each take tells its worker (`StreamTaken`).
//! A producer run again (a retry after its worker died, or to remake a lost value from
//! lineage) sends every value again: those the owner has stand, lost ones are filled in,
//! and a run again that makes fewer values than the first fails the missing ones.

use super::*;

/// A stream's state at its owner, from submission until its `RefStream` is dropped and its
/// task is over.
#[derive(Debug)]
pub(super) struct StreamState {
    /// Values made so far (objects `0..count`).
    count: u32,
    /// Values taken by the consumer (each taken value's handle passed to it).
    taken: u32,
    /// How the producer ended: `Some(None)` with every value made, `Some(Some(e))` with an
    /// error after its values so far.
    end: Option<Option<Error>>,
    waker: Option<Waker>,
    /// The `RefStream` is gone: new values are dropped.
    dropped: bool,
    /// Some value holds refs or actor handles: the task is not made again from lineage.
    holds_refs: bool,
}

impl StreamState {
    pub(super) fn new() -> StreamState {
        StreamState { count: 0, taken: 0, end: None, waker: None, dropped: false, holds_refs: false }
    }
}

impl OwnerState {
    /// The worker running `task` now (a lease's, or its actor's), if it is pushed.
    fn running_on(&self, task: TaskId) -> Option<WorkerId> {
        match self.tasks.get(&task)?.state {
            TaskState::Pushed { worker, .. } => Some(worker),
            _ => None,
        }
    }

    /// What the worker is told of the stream when `task` is pushed.
    pub(super) fn stream_spec(&self, task: TaskId, window: u32) -> ferry_proto::msg::StreamSpec {
        // A stream nobody consumes any more (its task run again for lineage): no bound.
        let taken = self.streams.get(&task).map_or(u32::MAX - window, |s| s.taken);
        ferry_proto::msg::StreamSpec { window, taken }
    }

    /// Value `index` of streaming task `task` arrived.
    pub fn on_streamed(&mut self, task: TaskId, index: u32, value: Return, inside: Inside, fx: &mut Effects) {
        let contained = self.pin_contained(inside.refs);
        let holds = !contained.is_empty() || !inside.actors.is_empty();
        let id = ObjectId { task, index };
        let state = match value {
            Return::Inline(v) => ObjState::Ready(Ready::Inline(Arc::new(v))),
            Return::Stored { size, node } => ObjState::Ready(Ready::Stored { size, node, view: None }),
        };
        let known = self.tasks.get(&task).filter(|t| t.stream.is_some()).map(|t| t.returns);
        let growing = self.streams.get(&task).is_some_and(|s| s.end.is_none() && !s.dropped);
        match known {
            // A value a run before this one made: it stands, or is filled in if lost.
            Some(count) if index < count => {
                let pending = self.objects.get(&id).is_some_and(|e| matches!(e.state, ObjState::Pending));
                self.resolve_with(id, state, contained, fx);
                self.returned_actors(if pending { id } else { ObjectId::default() }, inside.actors, fx);
            }
            Some(count) if index == count && growing => {
                self.tasks.get_mut(&task).expect("known").returns += 1;
                // The stream's own handle, passed to the consumer when it takes the value.
                self.objects.insert(id, ObjEntry::new(ObjState::Pending, 1));
                self.resolve_with(id, state, contained, fx);
                self.returned_actors(id, inside.actors, fx);
                let s = self.streams.get_mut(&task).expect("growing");
                s.count += 1;
                s.holds_refs |= holds;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
            // Not wanted: the stream is gone or cancelled, or a run again made more values.
            _ => {
                if let ObjState::Ready(Ready::Stored { node, .. }) = state {
                    if !self.objects.contains_key(&id) {
                        fx.frees.push((node, id));
                    }
                }
                self.unpin_all(contained, fx);
                self.returned_actors(ObjectId::default(), inside.actors, fx);
            }
        }
    }

    /// The consumer's next value (`index`): its id (the consumer now holds its handle), the
    /// stream's end (`None`), its error, or pending until one of those.
    pub fn poll_stream(
        &mut self,
        task: TaskId,
        index: u32,
        waker: &Waker,
        fx: &mut Effects,
    ) -> Poll<Option<Result<ObjectId, Error>>> {
        let Some(s) = self.streams.get_mut(&task) else {
            return Poll::Ready(None);
        };
        if index < s.count {
            s.taken = s.taken.max(index + 1);
            let taken = s.taken;
            if let Some(worker) = self.running_on(task) {
                fx.to_workers.push((worker, ToWorker::StreamTaken { task, taken }));
            }
            return Poll::Ready(Some(Ok(ObjectId { task, index })));
        }
        match &s.end {
            Some(None) => Poll::Ready(None),
            Some(Some(e)) => Poll::Ready(Some(Err(e.clone()))),
            None => {
                s.waker = Some(waker.clone());
                Poll::Pending
            }
        }
    }

    /// The consumer dropped its `RefStream` having taken values `..next`: the values it did
    /// not take go, and a producer still running is cancelled (it would wait for takes
    /// that never come).
    pub fn drop_stream(&mut self, task: TaskId, next: u32, fx: &mut Effects) {
        let Some(s) = self.streams.get_mut(&task) else { return };
        s.dropped = true;
        let (count, ended) = (s.count, s.end.is_some());
        if ended {
            self.streams.remove(&task);
        }
        for index in next..count {
            self.remove_local_ref(ObjectId { task, index }, fx);
        }
        if !ended {
            self.cancel(ObjectId { task, index: 0 }, false, true, fx);
        }
    }

    /// A streaming task ended, with `err` or with all its values; a stream that ended
    /// already (a run again to remake a value) keeps its first end.
    pub(super) fn end_stream(&mut self, task: TaskId, err: Option<Error>) {
        let Some(s) = self.streams.get_mut(&task) else { return };
        if s.end.is_none() {
            s.end = Some(err);
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        if s.dropped {
            self.streams.remove(&task);
        }
    }

    /// A streaming task's reply: its values are all here. Returns whether its value can be
    /// made again (some value is stored, and none holds refs).
    pub(super) fn stream_done(&mut self, t: &TaskEntry, fx: &mut Effects) -> bool {
        let task = t.ret.task;
        // A run again that made fewer values than the first: those it did not make are lost.
        let short: Vec<ObjectId> =
            t.rets().filter(|r| self.objects.get(r).is_some_and(|e| matches!(e.state, ObjState::Pending))).collect();
        for r in short {
            let reason = format!("task {} made fewer values when run again to make it again", t.name);
            self.resolve(r, ObjState::Failed(Error::ObjectLost { object: r, reason }), fx);
        }
        self.end_stream(task, None);
        let holds = self.streams.get(&task).is_some_and(|s| s.holds_refs);
        !holds
            && t.rets()
                .any(|r| matches!(self.objects.get(&r).map(|e| &e.state), Some(ObjState::Ready(Ready::Stored { .. }))))
    }
}
