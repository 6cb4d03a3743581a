//! The table of objects: their states and the counts that keep them alive (see the
//! `owner` module docs for the counts), freeing, and resolving an object to its final state.

use super::*;

impl OwnerState {
    /// Records a new owned object with one local handle, already in `state`.
    pub fn new_object(&mut self, state: ObjState) -> ObjectId {
        let id = ObjectId { task: self.next_id(), index: 0 };
        self.objects.insert(id, ObjEntry::new(state, 1));
        id
    }

    /// Keeps this process's mapping of a stored object for later gets.
    pub fn cache_view(&mut self, id: ObjectId, v: ferry_store::ObjectView) {
        if let Some(ObjEntry { state: ObjState::Ready(Ready::Stored { view, .. }), .. }) =
            self.objects.get_mut(&id).map(|e| &mut **e)
        {
            view.get_or_insert(v);
        }
    }

    /// The node holding `id`'s value, if it is stored and not mapped here yet.
    pub fn stored_unmapped(&self, id: ObjectId) -> Option<NodeId> {
        match self.objects.get(&id).map(|e| &e.state) {
            Some(ObjState::Ready(Ready::Stored { node, view: None, .. })) => Some(*node),
            _ => None,
        }
    }

    /// Forgets this process's mapping of a stored object (it was spilled: the mapping
    /// would keep its memory in use).
    pub fn drop_view(&mut self, id: ObjectId) {
        if let Some(ObjEntry { state: ObjState::Ready(Ready::Stored { view, .. }), .. }) =
            self.objects.get_mut(&id).map(|e| &mut **e)
        {
            *view = None;
        }
    }

    pub fn add_local_ref(&mut self, id: ObjectId) {
        if let Some(e) = self.objects.get_mut(&id) {
            e.local += 1;
        }
    }

    pub fn remove_local_ref(&mut self, id: ObjectId, fx: &mut Effects) {
        if let Some(e) = self.objects.get_mut(&id) {
            e.local = e.local.saturating_sub(1);
            self.maybe_free(id, fx);
        }
    }

    pub(super) fn maybe_free(&mut self, id: ObjectId, fx: &mut Effects) {
        // Most frees contain nothing: no work list then.
        let Some(mut work) = self.free_one(id, fx) else { return };
        while let Some(c) = work.pop() {
            if let Some(ce) = self.objects.get_mut(&c) {
                ce.pins = ce.pins.saturating_sub(1);
                if let Some(more) = self.free_one(c, fx) {
                    work.extend(more);
                }
            }
        }
    }

    /// Removes `id` if nothing holds it; returns what its value contained (then no longer
    /// held by it), if anything.
    pub(super) fn free_one(&mut self, id: ObjectId, fx: &mut Effects) -> Option<Vec<ObjectId>> {
        let e = self.objects.get(&id)?;
        let owned = id.owner() == self.me;
        if e.local > 0
            || e.submitted > 0
            || e.pins > 0
            || !e.borrowers.is_empty()
            || (owned && matches!(e.state, ObjState::Pending))
        {
            return None;
        }
        if owned && e.rare.as_ref().is_some_and(|r| r.lineage_pins > 0) {
            // Only lineages name it: its value goes, its entry (and its own lineage) stays.
            let e = self.objects.get_mut(&id).expect("checked");
            if let ObjState::Ready(Ready::Stored { node, .. }) = e.state {
                fx.frees.push((node, id));
            }
            e.state = ObjState::Released;
            return None;
        }
        let mut e = self.objects.remove(&id).expect("checked");
        if let Some(r) = &mut e.rare {
            for a in std::mem::take(&mut r.actors) {
                self.actor_handle_dropped(a, fx);
            }
        }
        if owned {
            if let ObjState::Ready(Ready::Stored { node, .. }) = e.state {
                fx.frees.push((node, id));
            }
            // The last ref of a failed task whose error nobody read: report it.
            if let Some(u) = self.unread.get_mut(&id.task) {
                u.left = u.left.saturating_sub(1);
                if u.left == 0 {
                    let u = self.unread.remove(&id.task).expect("checked");
                    fx.unhandled.push(u.report);
                }
            }
            // The lineage goes with the last of its task's returns.
            let last = match self.lineage.get_mut(&id.task) {
                Some(l) => {
                    l.live = l.live.saturating_sub(1);
                    l.live == 0
                }
                None => false,
            };
            if last {
                let l = self.lineage.remove(&id.task).expect("checked");
                self.drop_lineage_of(l, fx);
            }
        } else {
            self.unregistered.remove(&id);
            if e.registered > 0 {
                fx.releases.push((id, e.registered));
            }
        }
        e.rare.map(|r| r.contains).filter(|c| !c.is_empty())
    }

    /// `ferry::free` in process `by`: the values of `ids` go now, from every store; their
    /// refs stay, and a `get` of one says it was freed and by whom. Borrowed ones are freed
    /// by their owners, who are asked to.
    pub fn free_values(&mut self, ids: &[ObjectId], by: WorkerId, fx: &mut Effects) {
        let mut owners: HashMap<WorkerId, Vec<ObjectId>> = HashMap::default();
        for id in ids {
            if id.owner() != self.me && by == self.me {
                owners.entry(id.owner()).or_default().push(*id);
            }
            self.free_value(*id, by, fx);
        }
        for (owner, objects) in owners {
            fx.to_peers.push((owner, ToWorker::FreeObjects { objects, by }));
        }
    }

    fn free_value(&mut self, id: ObjectId, by: WorkerId, fx: &mut Effects) {
        let owned = id.owner() == self.me;
        let Some(e) = self.objects.get_mut(&id) else { return };
        let err = Error::ObjectFreed { object: id, by };
        match &e.state {
            ObjState::Pending => {
                // Its task's value, when it comes, is dropped (see `resolve_with`).
                self.resolve(id, ObjState::Failed(err), fx);
                return;
            }
            ObjState::Failed(_) => return,
            ObjState::Ready(Ready::Stored { node, .. }) if owned => fx.frees.push((*node, id)),
            _ => {}
        }
        // The value (and a mapped view of it) goes; so do the holds it kept on refs inside it.
        e.state = ObjState::Failed(err);
        let inner = e.rare.as_mut().map(|r| std::mem::take(&mut r.contains)).unwrap_or_default();
        self.unpin_all(inner, fx);
    }

    /// `t` failed with `err`: until one of its refs is read, its error is unread, and is
    /// reported when the last of them goes (Ray's unhandled errors).
    pub(super) fn note_unread(
        &mut self,
        t: &TaskEntry,
        err: &Error,
        (worker, node): (Option<WorkerId>, Option<NodeId>),
    ) {
        let left = t.rets().filter(|r| self.objects.contains_key(r)).count() as u32;
        // A stream's error is read where it ends the stream.
        if left == 0 || t.create.is_some() || t.stream.is_some() {
            return;
        }
        let report = UnhandledError { task: t.name.to_string(), error: err.clone(), worker, node };
        self.unread.insert(t.ret.task, Unread { report, left });
    }

    /// Pins refs inside a value that is gone (or never was kept).
    pub(super) fn unpin_all(&mut self, refs: Vec<ObjectId>, fx: &mut Effects) {
        for c in refs {
            if let Some(ce) = self.objects.get_mut(&c) {
                ce.pins = ce.pins.saturating_sub(1);
                self.maybe_free(c, fx);
            }
        }
    }

    /// Ends one `submitted` count of each ref.
    pub fn release_submitted<'a>(&mut self, refs: impl IntoIterator<Item = &'a ObjectId>, fx: &mut Effects) {
        for id in refs {
            if let Some(e) = self.objects.get_mut(id) {
                e.submitted = e.submitted.saturating_sub(1);
                self.maybe_free(*id, fx);
            }
        }
    }

    /// Gives an object made pending by [`Self::new_object`] (no task makes it) its value
    /// (encoded) or its error.
    pub fn settle(&mut self, id: ObjectId, value: Result<Vec<u8>, Error>, fx: &mut Effects) {
        let state = match value {
            Ok(v) => ObjState::Ready(Ready::Inline(Arc::new(v))),
            Err(e) => ObjState::Failed(e),
        };
        self.resolve(id, state, fx);
    }

    /// Gives `id` its final state, wakes its waiters and moves its dependents on.
    pub(super) fn resolve(&mut self, id: ObjectId, state: ObjState, fx: &mut Effects) {
        self.resolve_with(id, state, Vec::new(), fx)
    }

    /// [`Self::resolve`] for a value that contains the refs `contains` (already pinned once
    /// each on its behalf).
    pub(super) fn resolve_with(&mut self, id: ObjectId, state: ObjState, contains: Vec<ObjectId>, fx: &mut Effects) {
        let owned = id.owner() == self.me;
        let final_already = self.objects.get(&id).is_none_or(|e| !matches!(e.state, ObjState::Pending));
        if final_already {
            // Nobody holds the object any more, or it is already final (cancelled, failed at
            // shutdown): the late value is dropped.
            // (Unless it is the very copy the object has: a task run again to remake a sibling
            // return finds its old value in the store and leaves it, see `store_return`.)
            let same_copy = match (self.objects.get(&id).map(|e| &e.state), &state) {
                (
                    Some(ObjState::Ready(Ready::Stored { node: a, .. })),
                    ObjState::Ready(Ready::Stored { node: b, .. }),
                ) => a == b,
                _ => false,
            };
            if let (true, false, ObjState::Ready(Ready::Stored { node, .. })) = (owned, same_copy, &state) {
                fx.frees.push((*node, id));
            }
            self.unpin_all(contains, fx);
            return;
        }
        let failed = if let ObjState::Failed(err) = &state { Some(err.clone()) } else { None };
        if failed.is_some() {
            // Whoever waits on many objects at once learns of a failure at once (`get_all`).
            self.failures += 1;
            // Woken, not forgotten: their registrations end when their `get_all` does.
            for (_, w) in &self.failure_waiters {
                w.wake_by_ref();
            }
        }
        let e = self.objects.get_mut(&id).expect("checked");
        e.state = state;
        if !contains.is_empty() {
            e.rare().contains = contains;
        }
        e.fetching = false;
        e.wake();
        let (remote, deps) = match &mut e.rare {
            Some(r) => (std::mem::take(&mut r.remote_waiters), std::mem::take(&mut r.dependents)),
            None => Default::default(),
        };
        if failed.is_some() && (!remote.is_empty() || !deps.is_empty()) {
            // Read by a borrower, or passed on to the tasks that needed it (which report
            // their own error if nobody reads that).
            self.unread.remove(&id.task);
        }
        let e = self.objects.get_mut(&id).expect("checked");
        if !remote.is_empty() {
            let answer = answer_of(&e.state);
            for from in remote {
                fx.replies.push((from, FromWorker::Object { object: id, answer: answer.clone() }));
            }
        }
        for d in deps {
            match &failed {
                // An error upstream is the error of everything downstream.
                Some(err) => self.fail_downstream(d, err.clone(), fx),
                None => {
                    let Some(t) = self.tasks.get_mut(&d) else {
                        continue;
                    };
                    if let TaskState::WaitingDeps(n) = &mut t.state {
                        *n -= 1;
                        if *n == 0 {
                            t.state = TaskState::Queued;
                            self.note_waiting(d, fx);
                            let Some(t) = self.tasks.get(&d) else { continue };
                            match t.actor {
                                // Actor calls keep their place in the actor's queue.
                                Some(a) => self.pump_actor(a, fx),
                                None => {
                                    let class = t.class;
                                    self.classes[class].queue.push_back(d);
                                    self.pump(class, fx);
                                }
                            }
                        }
                    }
                }
            }
        }
        self.maybe_free(id, fx);
    }

    /// `put` wrote its value (`Ok`: where it is now) or could not (`Err`: the caller gets
    /// no handle, so the one [`Self::new_object`] gave goes).
    pub fn finish_put(&mut self, id: ObjectId, stored: Result<Ready, Error>, fx: &mut Effects) {
        let failed = stored.is_err();
        if let Some(e) = self.objects.get_mut(&id) {
            e.state = match stored {
                Ok(r) => ObjState::Ready(r),
                Err(err) => ObjState::Failed(err),
            };
        }
        if failed {
            self.remove_local_ref(id, fx);
        }
    }

    /// Polls `id` (`get`): ready, failed, or pending (then `waker` is woken when it is final,
    /// and a borrowed object is asked of its owner).
    pub fn poll_object(&mut self, id: ObjectId, waker: &Waker, fx: &mut Effects) -> Poll<Result<Ready, Error>> {
        let Some(e) = self.objects.get_mut(&id) else {
            return Poll::Ready(Err(Error::ObjectLost {
                object: id,
                reason: "this process holds no reference to it (it was freed)".into(),
            }));
        };
        match &e.state {
            ObjState::Ready(r) => Poll::Ready(Ok(r.clone())),
            ObjState::Failed(err) => {
                // Read: not an unhandled error any more.
                let err = err.clone();
                self.unread.remove(&id.task);
                Poll::Ready(Err(err))
            }
            ObjState::Released => Poll::Ready(Err(Error::ObjectLost {
                object: id,
                reason: "its value was released (no handle to it was left)".into(),
            })),
            ObjState::Pending => {
                e.add_waiter(waker);
                self.ensure_fetch(id, fx);
                Poll::Pending
            }
        }
    }

    /// One round of waiting for every one of `ids` (`get_all`): the first of them known to
    /// have failed, or none once all are final (ready, or unknown here: `get` says which), or
    /// pending. A cursor in `w8` moves past final objects, so only the first pending one is
    /// watched, plus any failure among the objects of this table (the list is scanned again
    /// only when one failed); borrowed ones are asked of their owners, all at once. End with
    /// [`Self::end_all_wait`].
    pub fn poll_all(
        &mut self,
        ids: &[ObjectId],
        w8: &mut AllWait,
        w: &Waker,
        fx: &mut Effects,
    ) -> Poll<Option<ObjectId>> {
        let failed =
            |st: &OwnerState, id: &ObjectId| st.objects.get(id).is_some_and(|e| matches!(e.state, ObjState::Failed(_)));
        if self.failures != w8.seen_failures {
            w8.seen_failures = self.failures;
            if let Some(id) = ids[w8.next..].iter().find(|id| failed(self, id)) {
                return Poll::Ready(Some(*id));
            }
        }
        while let Some(id) = ids.get(w8.next) {
            match self.objects.get_mut(id) {
                Some(e) if matches!(e.state, ObjState::Pending) => {
                    e.add_waiter(w);
                    w8.reg = self.wake_on_failure(w8.reg, w);
                    // Once: a fetch stays asked until its object resolves, and walking the
                    // rest on every wake made a million-ref `get_all` quadratic.
                    if !w8.fetched {
                        w8.fetched = true;
                        for id in &ids[w8.next..] {
                            self.ensure_fetch(*id, fx);
                        }
                    }
                    return Poll::Pending;
                }
                Some(e) if matches!(e.state, ObjState::Failed(_)) => return Poll::Ready(Some(*id)),
                _ => w8.next += 1,
            }
        }
        Poll::Ready(None)
    }

    /// Ends the wait of [`Self::poll_all`].
    pub fn end_all_wait(&mut self, w8: AllWait) {
        if w8.reg != 0 {
            self.failure_waiters.retain(|(r, _)| *r != w8.reg);
        }
    }

    /// Wakes `w` when any object becomes `Failed`, under registration `reg` (0: a new one);
    /// returns the registration. One registration holds one waker, however often renewed.
    fn wake_on_failure(&mut self, reg: u64, w: &Waker) -> u64 {
        if let Some((_, x)) = self.failure_waiters.iter_mut().find(|(r, _)| *r == reg) {
            if !x.will_wake(w) {
                *x = w.clone();
            }
            return reg;
        }
        let reg = self.next_failure_waiter;
        self.next_failure_waiter += 1;
        self.failure_waiters.push((reg, w.clone()));
        reg
    }

    /// The indices of the first `n` of `ids` that are final: ready, failed, or unknown here
    /// (`wait`).
    pub fn first_final(&self, ids: &[ObjectId], n: usize) -> Vec<usize> {
        let mut found = Vec::with_capacity(n);
        for (i, id) in ids.iter().enumerate() {
            if found.len() == n {
                break;
            }
            if self.objects.get(id).is_none_or(|e| !matches!(e.state, ObjState::Pending)) {
                found.push(i);
            }
        }
        found
    }

    /// Wakes `w` when any pending one of `ids` is final; borrowed ones are asked of their
    /// owners (`wait`).
    pub fn watch(&mut self, ids: &[ObjectId], w: &Waker, fx: &mut Effects) {
        for id in ids {
            if let Some(e) = self.objects.get_mut(id) {
                if matches!(e.state, ObjState::Pending) {
                    e.add_waiter(w);
                }
            }
            self.ensure_fetch(*id, fx);
        }
    }

    /// This process's table, for `memory_summary`.
    pub fn summary(&self) -> Vec<ferry_proto::msg::RefInfo> {
        self.objects
            .iter()
            .map(|(id, e)| {
                let (state, size) = match &e.state {
                    ObjState::Pending => ("pending", 0),
                    ObjState::Ready(Ready::Inline(b)) => ("inline", b.len() as u64),
                    ObjState::Ready(Ready::Stored { size, .. }) => ("stored", *size),
                    ObjState::Failed(_) => ("failed", 0),
                    ObjState::Released => ("released", 0),
                };
                ferry_proto::msg::RefInfo {
                    object: *id,
                    holder: self.me,
                    owned: id.owner() == self.me,
                    state: state.to_string(),
                    size,
                    local: e.local,
                    submitted: e.submitted,
                    contained_in: e.pins,
                    borrowers: e.borrowers.len() as u32,
                }
            })
            .collect()
    }

    /// Counts of the table's contents (for tests: nothing may be left behind).
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        (self.objects.len(), self.tasks.len(), self.actors.len())
    }
}

/// The processes borrowing an owned object, with their unreleased registrations (a count
/// may be negative for a while, see the module docs). Nearly always one or none, so the
/// first is kept inline: no allocation for it.
#[derive(Debug, Default)]
pub(crate) struct Borrowers {
    first: Option<(WorkerId, i32)>,
    more: Vec<(WorkerId, i32)>,
}

impl Borrowers {
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn len(&self) -> usize {
        self.first.iter().count() + self.more.len()
    }

    /// Adds `by` to `who`'s count; a count that reaches zero is removed.
    pub fn bump(&mut self, who: WorkerId, by: i32) {
        if by == 0 {
            return;
        }
        match &mut self.first {
            Some((w, n)) if *w == who => {
                *n = n.saturating_add(by);
                if *n == 0 {
                    self.first = self.more.pop();
                }
            }
            None => self.first = Some((who, by)),
            Some(_) => match self.more.iter().position(|(w, _)| *w == who) {
                Some(i) => {
                    self.more[i].1 = self.more[i].1.saturating_add(by);
                    if self.more[i].1 == 0 {
                        self.more.swap_remove(i);
                    }
                }
                None => self.more.push((who, by)),
            },
        }
    }

    /// Forgets `who` (a dead process); true if it was there.
    pub fn remove(&mut self, who: WorkerId) -> bool {
        if self.first.is_some_and(|(w, _)| w == who) {
            self.first = self.more.pop();
            return true;
        }
        let before = self.more.len();
        self.more.retain(|(w, _)| *w != who);
        before != self.more.len()
    }
}

/// What to tell a borrower about a final object.
pub(super) fn answer_of(state: &ObjState) -> ObjectAnswer {
    match state {
        ObjState::Ready(Ready::Inline(b)) => ObjectAnswer::Inline(b.to_vec()),
        ObjState::Ready(Ready::Stored { size, node, .. }) => ObjectAnswer::Stored { size: *size, node: *node },
        ObjState::Failed(e) => ObjectAnswer::Failed(e.clone()),
        ObjState::Pending | ObjState::Released => ObjectAnswer::Unknown,
    }
}

/// Where a [`OwnerState::poll_all`] wait is: the first object not known to be final, the
/// failure count it last looked at, its failure-wake registration.
#[derive(Debug)]
pub(crate) struct AllWait {
    next: usize,
    seen_failures: u64,
    reg: u64,
    /// The borrowed ones were asked of their owners.
    fetched: bool,
}

impl AllWait {
    /// How many of the refs, from the first, are known ready.
    pub fn done(&self) -> usize {
        self.next
    }
}

impl Default for AllWait {
    fn default() -> AllWait {
        AllWait { next: 0, seen_failures: u64::MAX, reg: 0, fetched: false }
    }
}
