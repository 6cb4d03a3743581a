//! Tasks, from submission to reply: scheduling classes and their queues, pushing queued
//! tasks to leases in batches, replies, failures and retries, cancellation.

use super::*;
use ferry_proto::state::TaskState as Seen;

impl OwnerState {
    pub(super) fn next_id(&mut self) -> TaskId {
        let seq = self.next_seq;
        self.next_seq += 1;
        TaskId { owner: self.me, seq }
    }

    pub(super) fn class_of(&mut self, shape: &Shape, placement: &Placement, priority: Priority) -> usize {
        let key = (shape.clone(), placement.clone(), priority);
        if let Some(c) = self.class_ids.get(&key) {
            return *c;
        }
        let id = self.classes.len();
        self.classes.push(Class { shape: shape.clone(), placement: placement.clone(), priority, ..Default::default() });
        self.class_ids.insert(key, id);
        id
    }

    /// Records a task and returns its first return object's id (each of its `returns`
    /// objects, which follow it by index, with one local handle).
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        function: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        (shape, placement, priority): (&Shape, &Placement, Priority),
        (max_retries, retry_exceptions, max_preemptions): (u32, bool, u32),
        (returns, job): (Rets, Job),
        exported: Exports,
        fx: &mut Effects,
    ) -> ObjectId {
        let class = self.class_of(shape, placement, priority);
        self.classes[class].job = job.id;
        let target = Target { class, actor: None, create: None, returns, job };
        let (task, ret, failed) = self.register_task(function, name, args, target, exported, max_retries, 1, fx);
        if let Some(t) = self.tasks.get_mut(&task) {
            t.retry_exceptions = retry_exceptions;
            t.preemptions_left = max_preemptions;
        }
        if let Some(err) = failed {
            self.fail_downstream(task, err, fx);
        } else if self.tasks.get(&task).is_some_and(|t| t.state == TaskState::Queued) {
            self.classes[class].queue.push_back(task);
            self.pump(class, fx);
        }
        ret
    }

    /// Records a task (normal, actor call or actor creation) with its argument counts.
    /// Its return object starts with `local` handles.
    /// Returns its id, and the error of a failed argument if there is one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register_task(
        &mut self,
        function: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        target: Target,
        exported: Exports,
        max_retries: u32,
        local: u32,
        fx: &mut Effects,
    ) -> (TaskId, ObjectId, Option<Error>) {
        let task = self.next_id();
        let ret = ObjectId { task, index: 0 };
        // `num_returns(0)`: a task run for its effects, with no object to wait for.
        let (returns, split, stream) = match target.returns {
            Rets::One => (1, false, None),
            Rets::Split(n) => (n, true, None),
            // Its objects are made as its values arrive.
            Rets::Stream(window) => {
                self.streams.insert(task, stream::StreamState::new());
                (0, false, Some(window.max(1)))
            }
        };
        for index in 0..returns {
            self.objects.insert(ObjectId { task, index }, ObjEntry::new(ObjState::Pending, local));
        }
        let mut waiting = 0;
        let mut failed = None;
        for a in &args {
            if let ArgDraft::Ref(id) = a {
                match self.objects.get_mut(id) {
                    Some(e) => {
                        e.submitted += 1;
                        match &e.state {
                            ObjState::Pending => {
                                waiting += 1;
                                e.rare().dependents.push(task);
                                // A borrowed object: its value comes from its owner.
                                if id.owner() != self.me && !e.fetching {
                                    e.fetching = true;
                                    fx.to_peers.push((id.owner(), ToWorker::GetObject { object: *id }));
                                }
                            }
                            ObjState::Failed(err) => {
                                // Passed on: the new task's error is the one to read.
                                failed = Some(err.clone());
                                self.unread.remove(&id.task);
                            }
                            // Only lineages hold a released object, never a handle.
                            ObjState::Released => {
                                failed =
                                    Some(Error::ObjectLost { object: *id, reason: "its value was released".into() })
                            }
                            ObjState::Ready(_) => {}
                        }
                    }
                    None => {
                        failed = Some(Error::ObjectLost {
                            object: *id,
                            reason: "it was freed: no handle to it was left in this process".into(),
                        })
                    }
                }
            }
        }
        let state = if waiting > 0 { TaskState::WaitingDeps(waiting) } else { TaskState::Queued };
        let depth = self.depth;
        self.tasks.insert(
            task,
            Box::new(TaskEntry {
                function,
                name,
                args,
                class: target.class,
                actor: target.actor,
                create: target.create,
                exported,
                depth,
                retries_left: max_retries,
                retry_exceptions: false,
                preemptions_left: 0,
                preempted: 0,
                attempts: 0,
                state,
                ret,
                returns,
                split,
                cancelled: false,
                job: target.job.clone(),
                stream,
                parent: self.running,
                noted: events::NOT_NOTED,
            }),
        );
        let seen = if waiting > 0 { Seen::WaitingForArgs } else { Seen::WaitingForWorker };
        self.note(task, seen, true, fx);
        (task, ret, failed.or_else(|| self.stopped.clone()))
    }

    /// Pushes queued tasks of `class` to its leases, and asks for more leases if the queue
    /// is still not empty.
    pub(super) fn pump(&mut self, class: usize, fx: &mut Effects) {
        let max = self.limits.max_in_flight;
        loop {
            if self.classes[class].queue.is_empty() {
                break;
            }
            // The least loaded usable lease of the class.
            let best = self.classes[class]
                .leases
                .iter()
                .filter_map(|l| self.leases.get(l).map(|s| (*l, s)))
                .filter(|(_, s)| !s.blocked && s.in_flight < max && !(s.one_shot && s.used))
                .min_by_key(|(_, s)| s.in_flight)
                .map(|(l, _)| l);
            let Some(lease_id) = best else { break };
            let mut batch = Vec::new();
            loop {
                let lease = &self.leases[&lease_id];
                if lease.in_flight >= max || (lease.one_shot && lease.used) {
                    break;
                }
                let Some(task) = self.classes[class].queue.pop_front() else {
                    break;
                };
                if !self.tasks.contains_key(&task) {
                    continue; // Finished meanwhile (see `finish_push`).
                }
                match self.build_spec(task) {
                    Ok(spec) => {
                        let lease = self.leases.get_mut(&lease_id).expect("lease");
                        lease.in_flight += 1;
                        lease.idle_since = None;
                        lease.used = true;
                        let worker = lease.worker;
                        if let Some(t) = self.tasks.get_mut(&task) {
                            t.state = TaskState::Pushed { lease: lease_id, worker };
                        }
                        batch.push(spec);
                    }
                    Err(e) => {
                        if !self.wait_for_remade_args(task) {
                            self.fail_task(task, e, fx);
                        }
                    }
                }
            }
            if !batch.is_empty() {
                fx.to_workers.push((self.leases[&lease_id].worker, ToWorker::Push(batch)));
            }
        }
        // Tasks waiting behind another on a worker count as waiting too: more workers are
        // asked for while there are any, and a new lease steals them (see `steal`).
        // Otherwise a burst of long tasks would run one after another on the first lease.
        let pipelined: usize = self.classes[class]
            .leases
            .iter()
            .filter_map(|l| self.leases.get(l))
            .map(|l| l.in_flight.saturating_sub(1))
            .sum();
        // An idle lease goes back when the node is short, unless it can take over some of
        // those waiting tasks.
        if self.node_short && self.classes[class].queue.is_empty() && pipelined == 0 {
            self.return_idle_leases(None, fx);
        }
        let want = (self.classes[class].queue.len() + pipelined).min(self.limits.max_pending_requests);
        if self.classes[class].pending_requests >= want {
            return;
        }
        let prefer = self.classes[class].queue.front().and_then(|t| self.args_node(*t));
        while self.classes[class].pending_requests < want {
            self.request_lease(class, prefer, fx);
        }
    }

    /// The node holding most of `task`'s stored argument bytes, if that is at least
    /// [`LOCALITY_MIN_BYTES`]: its lease is best asked of that node (Ray's locality-aware
    /// lease policy), so the bytes need not move.
    pub(super) fn args_node(&self, task: TaskId) -> Option<NodeId> {
        let t = self.tasks.get(&task)?;
        let mut best: Vec<(NodeId, u64)> = Vec::new();
        for a in &t.args {
            if let ArgDraft::Ref(id) = a {
                if let Some(ObjState::Ready(Ready::Stored { size, node, .. })) = self.objects.get(id).map(|e| &e.state)
                {
                    match best.iter_mut().find(|(n, _)| n == node) {
                        Some((_, b)) => *b += size,
                        None => best.push((*node, *size)),
                    }
                }
            }
        }
        best.into_iter().filter(|(_, b)| *b >= LOCALITY_MIN_BYTES).max_by_key(|(_, b)| *b).map(|(n, _)| n)
    }

    pub(super) fn resolve_args(&self, drafts: &[ArgDraft]) -> Result<Vec<Arg>, Error> {
        let mut args = Vec::with_capacity(drafts.len());
        for a in drafts {
            args.push(match a {
                ArgDraft::Value(v) => Arg::Inline(v.clone()),
                ArgDraft::Ref(id) => match self.objects.get(id).map(|e| &e.state) {
                    Some(ObjState::Ready(Ready::Inline(b))) => Arg::Inline(b.to_vec()),
                    Some(ObjState::Ready(Ready::Stored { size, node, .. })) => {
                        Arg::Stored { object: *id, size: *size, node: *node }
                    }
                    Some(ObjState::Failed(e)) => return Err(e.clone()),
                    Some(ObjState::Pending | ObjState::Released) | None => {
                        return Err(Error::ObjectLost {
                            object: *id,
                            reason: "argument vanished before its task ran".into(),
                        })
                    }
                },
            });
        }
        Ok(args)
    }

    /// A queued task found an argument pending again (it is being made again after a loss):
    /// the task waits for it, as it would have before its first run. False if none is.
    pub(super) fn wait_for_remade_args(&mut self, task: TaskId) -> bool {
        let Some(t) = self.tasks.get(&task) else { return false };
        let pending: Vec<ObjectId> = t
            .args
            .iter()
            .filter_map(|a| match a {
                ArgDraft::Ref(id) if matches!(self.objects.get(id).map(|e| &e.state), Some(ObjState::Pending)) => {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        if pending.is_empty() {
            return false;
        }
        for id in &pending {
            if let Some(e) = self.objects.get_mut(id) {
                e.rare().dependents.push(task);
            }
        }
        if let Some(t) = self.tasks.get_mut(&task) {
            t.state = TaskState::WaitingDeps(pending.len() as u32);
        }
        true
    }

    pub(super) fn build_spec(&self, task: TaskId) -> Result<TaskSpec, Error> {
        let t = &self.tasks[&task];
        let args = self.resolve_args(&t.args)?;
        // One CPU, the default shape, goes as one byte.
        let resources = match t.actor {
            None => Some(&self.classes[t.class].shape).filter(|s| **s != Shape::cpus(1.0)).cloned(),
            Some(_) => None,
        };
        Ok(TaskSpec {
            task,
            function: t.function.to_string(),
            args,
            depth: t.depth,
            num_returns: t.split.then_some(t.returns),
            job: t.job.id,
            namespace: t.job.namespace.as_deref().map(String::from),
            attempt: t.attempts,
            resources,
            stream: t.stream.map(|w| self.stream_spec(task, w)),
            timed: self.task_events,
        })
    }

    /// A task is over: release its arguments and the actor handles it carried.
    pub(super) fn task_over(&mut self, t: &TaskEntry, fx: &mut Effects) {
        self.release_args(&t.args, fx);
        self.task_over_keeping_args(t, fx);
    }

    /// [`Self::task_over`] but for its arguments (kept by a lineage).
    pub(super) fn task_over_keeping_args(&mut self, t: &TaskEntry, fx: &mut Effects) {
        for a in &t.exported.actors {
            self.actor_handle_dropped(*a, fx);
        }
        self.release_submitted(&t.exported.refs, fx);
    }

    /// Releases a task's arguments.
    pub(super) fn release_args(&mut self, args: &[ArgDraft], fx: &mut Effects) {
        let refs = args.iter().filter_map(|a| match a {
            ArgDraft::Ref(id) => Some(id),
            ArgDraft::Value(_) => None,
        });
        self.release_submitted(refs, fx);
    }

    /// Fails a task that is not pushed, or whose push is over.
    /// Fails `task` with the error of an object it needed: its own refs' error is unread
    /// until someone reads it.
    pub(super) fn fail_downstream(&mut self, task: TaskId, err: Error, fx: &mut Effects) {
        if let Some(t) = self.tasks.remove(&task) {
            self.note_unread(&t, &err, (None, None));
            self.tasks.insert(task, t);
        }
        self.fail_task(task, err, fx);
    }

    pub(super) fn fail_task(&mut self, task: TaskId, err: Error, fx: &mut Effects) {
        let Some(t) = self.tasks.remove(&task) else {
            return;
        };
        match t.actor {
            Some(a) => {
                if let Some(c) = self.actors.get_mut(&a) {
                    c.queue.retain(|x| *x != task);
                    c.in_flight.retain(|x| *x != task);
                    c.doomed.retain(|x| *x != task);
                }
            }
            None if t.state == TaskState::Queued => self.classes[t.class].queue.retain(|x| *x != task),
            None => {}
        }
        self.task_over(&t, fx);
        let seen = if matches!(err, Error::Cancelled { .. }) { Seen::Cancelled } else { Seen::Failed };
        self.note_end(&t, seen, Some(&err));
        if t.stream.is_some() {
            self.end_stream(task, Some(err.clone()));
        }
        for r in t.rets() {
            self.resolve(r, ObjState::Failed(err.clone()), fx);
        }
        if let Some(a) = t.actor {
            self.maybe_release_actor(a, fx);
        }
    }

    pub(super) fn finish_push(&mut self, task: TaskId, now: Instant, fx: &mut Effects) -> Option<Box<TaskEntry>> {
        let t = self.tasks.remove(&task)?;
        if t.actor.is_none() && t.state == TaskState::Queued {
            // A late reply from a worker already given up for lost (its node was declared dead
            // while the reply was on its way): the task was queued again; its result stands.
            self.classes[t.class].queue.retain(|x| *x != task);
        }
        if let Some(a) = t.actor {
            if let Some(c) = self.actors.get_mut(&a) {
                c.in_flight.retain(|x| *x != task);
            }
            return Some(t);
        }
        if let TaskState::Pushed { lease, .. } = t.state {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.in_flight = l.in_flight.saturating_sub(1);
                l.blocked = false;
                if l.in_flight == 0 {
                    l.idle_since = Some(now);
                    if l.one_shot && l.used {
                        self.return_lease(lease, false, fx);
                    }
                }
            }
        }
        Some(t)
    }

    /// A task's reply: its value, and what the value holds; `now` is when it arrived.
    pub fn on_done(&mut self, task: TaskId, returns: Vec<Return>, inside: Inside, now: Instant, fx: &mut Effects) {
        // Refs inside the value: held on its behalf from now on (see `resolve_with`).
        let contained = self.pin_contained(inside.refs);
        let Some(t) = self.finish_push(task, now, fx) else {
            // A task we gave up on (cancelled, failed over): drop what it stored.
            for (index, r) in returns.iter().enumerate() {
                if let Return::Stored { node, .. } = r {
                    fx.frees.push((*node, ObjectId { task, index: index as u32 }));
                }
            }
            self.unpin_all(contained, fx);
            self.returned_actors(ObjectId::default(), inside.actors, fx);
            return;
        };
        self.note_finished(&t, inside.ran);
        if t.stream.is_some() {
            // Its values came before (`on_streamed`); the reply only ends it.
            self.unpin_all(contained, fx);
            self.returned_actors(ObjectId::default(), inside.actors, fx);
            if self.stream_done(&t, fx) && self.keep_lineage(&t, fx) {
                self.task_over_keeping_args(&t, fx);
            } else {
                self.task_over(&t, fx);
            }
            self.after_reply(&t, fx);
            return;
        }
        if returns.len() != t.returns as usize {
            let detail = format!("task {} returned {} objects, not {}", t.name, returns.len(), t.returns);
            for (index, r) in returns.iter().enumerate() {
                if let Return::Stored { node, .. } = r {
                    fx.frees.push((*node, ObjectId { task, index: index as u32 }));
                }
            }
            self.unpin_all(contained, fx);
            self.returned_actors(ObjectId::default(), inside.actors, fx);
            self.task_over(&t, fx);
            for r in t.rets() {
                self.resolve(r, ObjState::Failed(Error::Serialization { detail: detail.clone() }), fx);
            }
            self.after_reply(&t, fx);
            return;
        }
        // A value holding refs is not made again (its refs would be pinned twice).
        let holds_refs = !contained.is_empty() || !inside.actors.is_empty();
        let no_refs = contained.is_empty();
        let mut contained = Some(contained);
        let mut any_stored = false;
        for (index, r) in returns.into_iter().enumerate() {
            let state = match r {
                Return::Inline(v) => ObjState::Ready(Ready::Inline(Arc::new(v))),
                Return::Stored { size, node } => {
                    any_stored = true;
                    ObjState::Ready(Ready::Stored { size, node, view: None })
                }
            };
            let id = ObjectId { task, index: index as u32 };
            // The refs and handles inside the values are held by the first; the others, if
            // the values hold any, hold the first (a value's refs live while it does).
            let inner = match (index, holds_refs) {
                (0, _) => contained.take().unwrap_or_default(),
                (_, false) => Vec::new(),
                (_, true) => self.pin_contained(vec![t.ret]),
            };
            self.resolve_with(id, state, inner, fx);
        }
        if let Some(unheld) = contained.take() {
            // No return object to hold them (`num_returns(0)`).
            self.unpin_all(unheld, fx);
        }
        let stored = no_refs && any_stored;
        self.returned_actors(t.ret, inside.actors, fx);
        if stored && self.keep_lineage(&t, fx) {
            // Its arguments stay held by the lineage; the rest of the task ends.
            self.task_over_keeping_args(&t, fx);
        } else {
            self.task_over(&t, fx);
        }
        self.after_reply(&t, fx);
    }

    pub(super) fn after_reply(&mut self, t: &TaskEntry, fx: &mut Effects) {
        match t.actor {
            Some(a) => self.maybe_release_actor(a, fx),
            None => {
                self.pump(t.class, fx);
                self.steal(t.class, fx);
            }
        }
    }

    /// A task's worker says it failed; `now` is when the reply arrived.
    pub fn on_failed(&mut self, task: TaskId, err: ferry_proto::msg::TaskError, now: Instant, fx: &mut Effects) {
        let Some(t) = self.finish_push(task, now, fx) else {
            return;
        };
        let t = match err {
            ferry_proto::msg::TaskError::ArgumentUnavailable { .. } => {
                let class = t.class;
                match self.retry_after_lost_args(t, fx) {
                    Ok(()) => {
                        self.pump(class, fx);
                        return;
                    }
                    Err(t) => t,
                }
            }
            ferry_proto::msg::TaskError::Panicked { .. }
                if t.retry_exceptions && t.retries_left > 0 && t.actor.is_none() =>
            {
                // Opted in: an application error is retried like a lost worker.
                let mut t = t;
                t.retries_left -= 1;
                t.attempts += 1;
                self.retries += 1;
                t.state = TaskState::Queued;
                let class = t.class;
                let task = t.ret.task;
                self.classes[class].queue.push_back(task);
                self.tasks.insert(task, t);
                self.note(task, Seen::WaitingForWorker, true, fx);
                self.pump(class, fx);
                return;
            }
            _ => t,
        };
        let err = match (err, t.attempts) {
            (ferry_proto::msg::TaskError::Panicked { function, message }, n) if n > 0 => {
                let message = format!("{message} (the last of {} attempts)", n + 1);
                ferry_proto::msg::TaskError::Panicked { function, message }
            }
            (e, _) => e,
        };
        self.task_over(&t, fx);
        let err = Error::from_task(&t.name, err);
        let seen = if matches!(err, Error::Cancelled { .. }) { Seen::Cancelled } else { Seen::Failed };
        self.note_end(&t, seen, Some(&err));
        let ran_on = match t.state {
            TaskState::Pushed { lease, worker } => (Some(worker), self.leases.get(&lease).map(|l| l.node)),
            _ => (None, None),
        };
        if t.stream.is_some() {
            // An error mid-stream ends it after the values made so far.
            self.end_stream(task, Some(err.clone()));
        } else if !t.cancelled {
            // (A cancelled task's result was final, and Cancelled, already.)
            self.note_unread(&t, &err, ran_on);
        }
        for r in t.rets() {
            self.resolve(r, ObjState::Failed(err.clone()), fx);
        }
        self.after_reply(&t, fx);
    }

    /// Cancels the task that creates `id` if it has not finished (`force`: its worker is
    /// ended if it runs it; `recursive`: the tasks it submitted are cancelled too). A
    /// borrowed object's cancel goes to its owner.
    pub fn cancel(&mut self, id: ObjectId, force: bool, recursive: bool, fx: &mut Effects) {
        let task = id.task;
        if id.owner() != self.me {
            if self.objects.contains_key(&id) {
                fx.to_peers.push((id.owner(), ToWorker::CancelObject { object: id, force, recursive }));
            }
            return;
        }
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        let name = t.name.to_string();
        match t.state {
            TaskState::Pushed { worker, .. } => {
                // The worker drops it if not started, or tells it; the result is final now
                // either way, a late reply is ignored (and its stored value freed), and the
                // task is not run again if its worker goes.
                t.cancelled = true;
                fx.to_workers.push((worker, ToWorker::Cancel { task, force, recursive }));
                let rets: Vec<ObjectId> = t.rets().collect();
                let stream = t.stream.is_some();
                self.note(task, Seen::Cancelled, false, fx);
                if stream {
                    self.end_stream(task, Some(Error::Cancelled { task: name.clone() }));
                }
                for r in rets {
                    self.resolve(r, ObjState::Failed(Error::Cancelled { task: name.clone() }), fx);
                }
            }
            TaskState::Queued | TaskState::WaitingDeps(_) => {
                // Dependents' lists may still name it; they skip tasks they cannot find.
                self.fail_task(task, Error::Cancelled { task: name }, fx);
            }
        }
    }

    /// `parent`, a task this worker runs, was cancelled recursively: so are the tasks it
    /// submitted (and, by their workers, theirs).
    pub fn cancel_children(&mut self, parent: TaskId, force: bool, fx: &mut Effects) {
        let children: Vec<TaskId> =
            self.tasks.iter().filter(|(_, t)| t.parent == Some(parent)).map(|(id, _)| *id).collect();
        for c in children {
            self.cancel(ObjectId { task: c, index: 0 }, force, true, fx);
        }
    }

    /// Fails every pending object (shutdown).
    pub fn fail_all(&mut self, err: Error, fx: &mut Effects) {
        self.stopped = Some(err.clone());
        // Queues emptied first: taking each task out of its queue one by one is quadratic
        // with a million queued.
        for c in &mut self.classes {
            c.queue.clear();
        }
        let tasks: Vec<TaskId> = self.tasks.keys().copied().collect();
        for t in tasks {
            self.fail_task(t, err.clone(), fx);
        }
    }
}

/// Arguments smaller than this in all are not worth choosing a node for.
pub(crate) const LOCALITY_MIN_BYTES: u64 = 1 << 20;
