//! Borrowing (ARCHITECTURE.md, "Borrowing"): refs this process received from others, the
//! processes that borrow what it owns, and the requests between owners and borrowers.

use super::*;

impl OwnerState {
    /// Holds the refs and actor handles an encode met (see `refs`): for a task's arguments
    /// (`for_task`: until the task is over) or for a value being built (`put`: while it
    /// lives). Refs unknown here are not held. Returns what is held.
    pub fn hold_exports(&mut self, refs: Vec<ObjectId>, actors: Vec<(ActorId, String)>, for_task: bool) -> Exports {
        let refs =
            refs.into_iter().filter(|id| if for_task { self.pin_for_task(*id) } else { self.pin(*id) }).collect();
        let actors = actors
            .into_iter()
            .map(|(a, label)| {
                self.actor_attach(a, &label);
                a
            })
            .collect();
        Exports { actors, refs }
    }

    /// A ref was decoded in this process: one more local handle. Returns true if this made
    /// a new unregistered borrowed entry.
    pub fn decode_ref(&mut self, id: ObjectId) -> bool {
        if let Some(e) = self.objects.get_mut(&id) {
            e.local += 1;
            return false;
        }
        if id.owner() == self.me {
            // Ours and already freed: the handle names nothing, and `get` says so.
            return false;
        }
        self.objects.insert(id, ObjEntry::new(ObjState::Pending, 1));
        self.unregistered.insert(id);
        true
    }

    /// A ref is being encoded into a task's arguments: the task holds it until it is over.
    pub fn pin_for_task(&mut self, id: ObjectId) -> bool {
        match self.objects.get_mut(&id) {
            Some(e) => {
                e.submitted += 1;
                true
            }
            None => false,
        }
    }

    /// Pins `id` once for a value being built (`put`); false if it is unknown here.
    pub fn pin(&mut self, id: ObjectId) -> bool {
        match self.objects.get_mut(&id) {
            Some(e) => {
                e.pins += 1;
                true
            }
            None => false,
        }
    }

    /// `put` made `outer`, whose value contains `refs` (each pinned once already).
    pub fn set_contains(&mut self, outer: ObjectId, refs: Vec<ObjectId>, fx: &mut Effects) {
        match self.objects.get_mut(&outer) {
            Some(e) => e.rare().contains.extend(refs),
            None => self.unpin_all(refs, fx),
        }
    }

    /// Pins the refs a reply says its value contains; returns those pinned. Borrowed ones
    /// were registered with their owners for us before the reply was sent.
    pub(crate) fn pin_contained(&mut self, contained: Vec<ObjectId>) -> Vec<ObjectId> {
        let mut kept = Vec::with_capacity(contained.len());
        for c in contained {
            if c.owner() == self.me {
                // Ours: the worker's hold on it kept it alive until now (see `Retained`).
                if let Some(e) = self.objects.get_mut(&c) {
                    e.pins += 1;
                    kept.push(c);
                }
            } else {
                let e = self.objects.entry(c).or_insert_with(|| ObjEntry::new(ObjState::Pending, 0));
                e.pins += 1;
                e.registered += 1;
                kept.push(c);
            }
        }
        kept
    }

    /// Counts `borrower` once more for each object we own (an `AddBorrower` or a
    /// `Retained`).
    pub fn add_borrowers(&mut self, borrower: WorkerId, objects: &[ObjectId], fx: &mut Effects) {
        if self.dead_peers.contains(&borrower) {
            return;
        }
        for id in objects {
            if let Some(e) = self.objects.get_mut(id) {
                e.borrowers.bump(borrower, 1);
                self.maybe_free(*id, fx);
            }
        }
    }

    /// `borrower` released registrations of objects we own.
    pub fn release_borrows(&mut self, borrower: WorkerId, objects: &[(ObjectId, u32)], fx: &mut Effects) {
        for (id, n) in objects {
            if let Some(e) = self.objects.get_mut(id) {
                // A count from the network: clamped, never an overflow.
                e.borrowers.bump(borrower, -((*n).min(i32::MAX as u32) as i32));
                self.maybe_free(*id, fx);
            }
        }
    }

    /// A borrower asks for an object's value: answered now if final, else when it is.
    pub fn on_get_request(&mut self, from: WorkerId, id: ObjectId, fx: &mut Effects) {
        match self.objects.get_mut(&id) {
            Some(e) if id.owner() == self.me => {
                if matches!(e.state, ObjState::Pending) {
                    e.rare().remote_waiters.push(from);
                } else {
                    fx.replies.push((from, FromWorker::Object { object: id, answer: answer_of(&e.state) }));
                }
            }
            _ => fx.replies.push((from, FromWorker::Object { object: id, answer: ObjectAnswer::Unknown })),
        }
    }

    /// A borrower could not read our object `id` from `node`: if this table still has it
    /// there, that copy is gone, and the object is made again from its lineage (a copy
    /// elsewhere, or a remake already under way, is simply given). Answered as `GetObject`
    /// is, or with the reason it cannot be made again.
    pub fn on_remake_request(&mut self, from: WorkerId, id: ObjectId, node: NodeId, fx: &mut Effects) {
        let there = |s: &ObjState| matches!(s, ObjState::Ready(Ready::Stored { node: n, .. }) if *n == node);
        if id.owner() == self.me && self.objects.get(&id).is_some_and(|e| there(&e.state)) {
            if let Err(e) = self.reconstruct(id, fx) {
                let answer = answer_of(&ObjState::Failed(e));
                fx.replies.push((from, FromWorker::Object { object: id, answer }));
                return;
            }
        }
        self.on_get_request(from, id, fx)
    }

    /// A borrowed object's stored copy could not be read: ask its owner to make it again
    /// (`Remake`); the object is pending until the owner answers. False if it was not a
    /// stored copy that failed (nothing to ask).
    pub fn ask_remake(&mut self, id: ObjectId, fx: &mut Effects) -> bool {
        if id.owner() == self.me || self.dead_peers.contains(&id.owner()) {
            return false;
        }
        let Some(e) = self.objects.get_mut(&id) else { return false };
        let ObjState::Ready(Ready::Stored { node, .. }) = e.state else { return false };
        e.state = ObjState::Pending;
        e.fetching = true;
        fx.to_peers.push((id.owner(), ToWorker::Remake { object: id, node }));
        true
    }

    /// The owner answered our `GetObject`.
    pub fn on_object_answer(&mut self, id: ObjectId, answer: ObjectAnswer, fx: &mut Effects) {
        let state = match answer {
            ObjectAnswer::Inline(v) => ObjState::Ready(Ready::Inline(Arc::new(v))),
            ObjectAnswer::Stored { size, node } => ObjState::Ready(Ready::Stored { size, node, view: None }),
            ObjectAnswer::Failed(e) => ObjState::Failed(e),
            ObjectAnswer::Unknown => ObjState::Failed(Error::ObjectLost {
                object: id,
                reason: "its owner no longer has it (it was freed there)".into(),
            }),
        };
        self.resolve(id, state, fx);
    }

    /// Asks the owner of a borrowed pending object for it, once.
    pub fn ensure_fetch(&mut self, id: ObjectId, fx: &mut Effects) {
        if id.owner() == self.me {
            return;
        }
        if let Some(e) = self.objects.get_mut(&id) {
            if matches!(e.state, ObjState::Pending) && !e.fetching {
                e.fetching = true;
                fx.to_peers.push((id.owner(), ToWorker::GetObject { object: id }));
            }
        }
    }

    /// Another process is gone: its borrows end, and what it owned can no longer be
    /// resolved.
    pub fn peer_lost(&mut self, peer: WorkerId, detail: &str, fx: &mut Effects) {
        self.dead_peers.insert(peer);
        let mut touched = Vec::new();
        let mut orphaned = Vec::new();
        for (id, e) in self.objects.iter_mut() {
            if id.owner() == self.me {
                let removed = e.borrowers.remove(peer);
                if let Some(r) = &mut e.rare {
                    r.remote_waiters.retain(|w| *w != peer);
                }
                if removed {
                    touched.push(*id);
                }
            } else if id.owner() == peer {
                // Nobody is left to release to.
                e.registered = 0;
                if matches!(e.state, ObjState::Pending) {
                    orphaned.push(*id);
                }
            }
        }
        for id in orphaned {
            let err = Error::OwnerDied { object: id, detail: detail.to_string() };
            self.resolve(id, ObjState::Failed(err), fx);
        }
        for id in touched {
            self.maybe_free(id, fx);
        }
    }

    /// Borrowed entries that must be registered before the pin that covers them ends:
    /// marks them registered and returns them. `only` limits it to those ids.
    pub fn take_unregistered(&mut self, only: Option<&[ObjectId]>) -> Vec<ObjectId> {
        let ids: Vec<ObjectId> = match only {
            Some(ids) => ids.iter().filter(|id| self.unregistered.remove(id)).copied().collect(),
            None => self.unregistered.drain().collect(),
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.objects.get_mut(&id) {
                e.registered += 1;
                out.push(id);
            }
        }
        out
    }

    /// Refs inside a task's return value, before the reply goes to `caller`: ours are now
    /// borrowed by the caller; the caller's own are held by us once more (told to it by
    /// `Retained`, returned); the others must be registered for the caller by their owners
    /// (returned too).
    pub fn returning(&mut self, caller: WorkerId, refs: &[ObjectId]) -> (Vec<ObjectId>, Vec<ObjectId>) {
        let mut callers = Vec::new();
        let mut others = Vec::new();
        for id in refs {
            let Some(e) = self.objects.get_mut(id) else { continue };
            if id.owner() == self.me {
                if !self.dead_peers.contains(&caller) {
                    e.borrowers.bump(caller, 1);
                }
            } else if id.owner() == caller {
                e.registered += 1;
                self.unregistered.remove(id);
                callers.push(*id);
            } else {
                others.push(*id);
            }
        }
        (callers, others)
    }
}
