//! The caller's side of actors: handles held here, the creation and the calls of each actor
//! in submission order, where its process is, and what happens to calls when it dies.

use super::*;

impl OwnerState {
    /// The daemon homing the actors of `tag` is gone (its link closed): the requests for their
    /// addresses sent there will never be answered. Forgets them; returns those actors, to be
    /// resolved again ([`Self::resolve_again`]) once their home is back or known gone.
    pub fn forget_resolves_at(&mut self, tag: u64) -> Vec<ActorId> {
        let lost: Vec<(u64, ActorId)> =
            self.actor_resolves.iter().filter(|(_, a)| a.home_tag() == tag).map(|(r, a)| (*r, *a)).collect();
        let mut actors = Vec::with_capacity(lost.len());
        for (req, actor) in lost {
            self.actor_resolves.remove(&req);
            if let Some(c) = self.actors.get_mut(&actor) {
                c.resolving = false;
                actors.push(actor);
            }
        }
        actors.sort_unstable();
        actors.dedup();
        actors
    }

    /// These actors' home cannot be reached again: their calls fail with `why`.
    pub fn home_gone(&mut self, actors: &[ActorId], why: &str, fx: &mut Effects) {
        for a in actors {
            if let Some(c) = self.actors.get_mut(a) {
                c.dead = Some(Error::ActorDied { actor: c.label.to_string(), reason: why.to_string() });
            }
            self.pump_actor(*a, fx);
        }
    }

    /// Asks again where these actors are (their last request was lost with their home).
    pub fn resolve_again(&mut self, actors: &[ActorId], fx: &mut Effects) {
        for a in actors {
            self.pump_actor(*a, fx);
        }
    }

    /// A new handle of `actor` in this process. Returns true if the daemon must be told
    /// that this process now holds the actor (its first handle here).
    pub fn actor_attach(&mut self, actor: ActorId, label: &str) -> bool {
        let c = self.actors.entry(actor).or_insert_with(|| ActorClient::new(label, 0, 0));
        c.handles += 1;
        c.held == 0
    }

    /// The actors homed at the node of `tag` that this process holds, and how many times.
    pub fn held_actors_at(&self, tag: u64) -> Vec<(ActorId, u32)> {
        self.actors.iter().filter(|(a, c)| a.home_tag() == tag && c.held > 0).map(|(a, c)| (*a, c.held)).collect()
    }

    pub fn actor_set_held(&mut self, actor: ActorId) {
        if let Some(c) = self.actors.get_mut(&actor) {
            c.held += 1;
        }
    }

    pub fn actor_handle_dropped(&mut self, actor: ActorId, fx: &mut Effects) {
        if let Some(c) = self.actors.get_mut(&actor) {
            c.handles = c.handles.saturating_sub(1);
        }
        self.maybe_release_actor(actor, fx);
    }

    /// `outer`'s value holds a handle of each of `actors` (each attached once for it already):
    /// they are released when it is freed.
    pub fn hold_actors_for(&mut self, outer: ObjectId, actors: Vec<ActorId>, fx: &mut Effects) {
        if actors.is_empty() {
            return;
        }
        match self.objects.get_mut(&outer) {
            Some(e) => e.rare().actors.extend(actors),
            None => {
                for a in actors {
                    self.actor_handle_dropped(a, fx);
                }
            }
        }
    }

    /// A reply's value holds handles of these actors, which its worker had the daemon count
    /// as held by this process: one more handle each, held by the value.
    pub fn returned_actors(&mut self, outer: ObjectId, actors: Vec<(ActorId, String)>, fx: &mut Effects) {
        let mut ids = Vec::with_capacity(actors.len());
        for (a, label) in actors {
            let c = self.actors.entry(a).or_insert_with(|| ActorClient::new(&label, 0, 0));
            c.held += 1;
            c.handles += 1;
            ids.push(a);
        }
        self.hold_actors_for(outer, ids, fx);
    }

    /// Forgets an actor once no handle and no call of it is left here.
    pub(super) fn maybe_release_actor(&mut self, actor: ActorId, fx: &mut Effects) {
        let Some(c) = self.actors.get(&actor) else { return };
        if c.handles > 0 || !c.queue.is_empty() || !c.in_flight.is_empty() || !c.doomed.is_empty() {
            return;
        }
        let c = self.actors.remove(&actor).expect("checked");
        if c.held > 0 {
            fx.to_daemons.push((Daemon::HomeOf(actor), ToNode::ReleaseActor { actor, count: c.held }));
        }
        self.release_submitted(&c.ctor_args, fx);
        for a in c.ctor_exports {
            self.actor_handle_dropped(a, fx);
        }
    }

    /// Creates an actor: its constructor's arguments resolve first, then the daemon is
    /// asked to place it. Calls made meanwhile wait behind the creation, in order.
    #[allow(clippy::too_many_arguments)]
    pub fn create_actor(
        &mut self,
        actor: ActorId,
        class: &'static str,
        label: &str,
        args: Vec<ArgDraft>,
        exported: Exports,
        spec: ActorSpec,
        max_task_retries: u32,
        fx: &mut Effects,
    ) {
        self.actors.insert(actor, ActorClient::new(label, 1, max_task_retries));
        self.actors.get_mut(&actor).expect("inserted").handles = 1;
        let (task, _ret, failed) =
            self.register_task(class, Arc::from(label), args, Target::creation(actor, spec), exported, 0, 0, fx);
        self.actors.get_mut(&actor).expect("inserted").queue.push_back(task);
        match failed {
            Some(err) => {
                self.actors.get_mut(&actor).expect("inserted").dead = Some(err.clone());
                self.fail_task(task, err, fx);
            }
            None => self.pump_actor(actor, fx),
        }
    }

    /// Records a call of `actor`'s method and returns its (first) result's id.
    #[allow(clippy::too_many_arguments)]
    pub fn submit_call(
        &mut self,
        actor: ActorId,
        method: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        (returns, job): (Rets, Job),
        exported: Exports,
        fx: &mut Effects,
    ) -> ObjectId {
        let retries = self.actors.get(&actor).map(|c| c.max_task_retries).unwrap_or(0);
        let target = Target::call(actor, returns, job);
        let (task, ret, failed) = self.register_task(method, name, args, target, exported, retries, 1, fx);
        let c = self.actors.entry(actor).or_insert_with(|| ActorClient::new("actor", 0, 0));
        c.queue.push_back(task);
        match failed {
            Some(err) => self.fail_downstream(task, err, fx),
            None => self.pump_actor(actor, fx),
        }
        ret
    }

    /// Sends what can go to `actor` now: its creation, then calls in order, each once its
    /// arguments are ready (a call waits for the calls before it).
    pub(super) fn pump_actor(&mut self, actor: ActorId, fx: &mut Effects) {
        loop {
            let Some(c) = self.actors.get_mut(&actor) else { return };
            if let Some(err) = c.dead.clone() {
                let doomed: Vec<TaskId> =
                    c.queue.drain(..).chain(c.in_flight.drain(..)).chain(c.doomed.drain(..)).collect();
                // Dead for good: nothing will restart it, so what its constructor took goes now
                // (not with the last handle).
                let ctor_args = std::mem::take(&mut c.ctor_args);
                let ctor_exports = std::mem::take(&mut c.ctor_exports);
                for t in doomed {
                    self.fail_task(t, err.clone(), fx);
                }
                self.release_submitted(&ctor_args, fx);
                for a in ctor_exports {
                    self.actor_handle_dropped(a, fx);
                }
                self.maybe_release_actor(actor, fx);
                return;
            }
            if c.queue.is_empty() && !c.doomed.is_empty() && c.worker.is_none() {
                // Calls lost with its process fail once the daemon says what became of it (a
                // restart, or its death), even if no other call is waiting to ask.
                self.ask_where(actor, fx);
                return;
            }
            let Some(&front) = c.queue.front() else { return };
            let Some(t) = self.tasks.get(&front) else {
                c.queue.pop_front();
                continue;
            };
            if t.state != TaskState::Queued {
                return;
            }
            if t.create.is_some() {
                c.queue.pop_front();
                self.send_create(actor, front, fx);
                continue;
            }
            let Some(worker) = c.worker else {
                self.ask_where(actor, fx);
                return;
            };
            let mut batch = Vec::new();
            while let Some(&f) = self.actors.get(&actor).and_then(|c| c.queue.front()) {
                match self.tasks.get(&f) {
                    Some(t) if t.state == TaskState::Queued && t.create.is_none() => {}
                    _ => break,
                }
                self.actors.get_mut(&actor).expect("present").queue.pop_front();
                match self.build_spec(f) {
                    Ok(spec) => {
                        self.tasks.get_mut(&f).expect("present").state = TaskState::Pushed { lease: 0, worker };
                        self.actors.get_mut(&actor).expect("present").in_flight.push_back(f);
                        batch.push(spec);
                    }
                    Err(e) => self.fail_task(f, e, fx),
                }
            }
            if !batch.is_empty() {
                fx.to_workers.push((worker, ToWorker::Push(batch)));
            }
            return;
        }
    }

    /// Asks `actor`'s home where it is now, unless that is asked already.
    pub(super) fn ask_where(&mut self, actor: ActorId, fx: &mut Effects) {
        let Some(c) = self.actors.get_mut(&actor) else { return };
        if c.resolving {
            return;
        }
        c.resolving = true;
        let req = self.next_req;
        self.next_req += 1;
        self.actor_resolves.insert(req, actor);
        tracing::debug!(?actor, req, stale = ?c.stale, "asking where the actor is");
        fx.to_daemons.push((Daemon::HomeOf(actor), ToNode::ResolveActor { req, actor, stale: c.stale }));
    }

    pub(super) fn send_create(&mut self, actor: ActorId, task: TaskId, fx: &mut Effects) {
        let Some(mut t) = self.tasks.remove(&task) else { return };
        let mut spec = *t.create.take().expect("a creation task");
        match self.resolve_args(&t.args) {
            Ok(args) => {
                spec.args = args;
                fx.to_daemons.push((Daemon::HomeOf(actor), ToNode::CreateActor { req: 0, actor, spec }));
                // Arguments by reference stay alive while this process holds the actor, so a
                // restart can read them again.
                let refs = t.args.iter().filter_map(|a| match a {
                    ArgDraft::Ref(id) => Some(*id),
                    ArgDraft::Value(_) => None,
                });
                if let Some(c) = self.actors.get_mut(&actor) {
                    c.ctor_args.extend(refs);
                    c.ctor_args.append(&mut t.exported.refs);
                    c.ctor_exports.append(&mut t.exported.actors);
                } else {
                    self.task_over(&t, fx);
                }
                self.resolve(t.ret, ObjState::Ready(Ready::Inline(Arc::new(Vec::new()))), fx);
            }
            Err(e) => {
                self.task_over(&t, fx);
                if let Some(c) = self.actors.get_mut(&actor) {
                    c.dead = Some(e.clone());
                }
                self.resolve(t.ret, ObjState::Failed(e), fx);
            }
        }
    }

    /// The daemon said where `actor` is, and we could connect (or not), or that it is dead.
    pub fn actor_resolved(&mut self, actor: ActorId, at: Located, fx: &mut Effects) {
        let Some(c) = self.actors.get_mut(&actor) else { return };
        tracing::debug!(?actor, ?at, "actor located");
        c.resolving = false;
        match at {
            Located::At(worker) => {
                // The same process as before: only the connection was lost (its home waited
                // and still calls it alive). Else a new incarnation.
                let same = c.stale == Some(worker);
                c.worker = Some(worker);
                c.stale = None;
                c.unreachable = 0;
                // The calls lost with the old connection had no retries left.
                let doomed = std::mem::take(&mut c.doomed);
                let err = if same {
                    Error::ActorUnavailable {
                        actor: c.label.to_string(),
                        detail: format!(
                            "the connection to its process was lost while the call was sent or running ({}); the \
                             call may have run, and had no retries left (raise max_task_retries if its methods \
                             may run again)",
                            c.lost_detail
                        ),
                    }
                } else {
                    Error::ActorDied {
                        actor: c.label.to_string(),
                        reason: format!(
                            "its process died while the call was sent or running ({}); the actor was restarted but \
                             the call had no retries left (raise max_task_retries if its methods may run again)",
                            c.lost_detail
                        ),
                    }
                };
                for t in doomed {
                    self.fail_task(t, err.clone(), fx);
                }
            }
            Located::Unreachable(worker, detail) => {
                if c.stale != Some(worker) {
                    // Strikes count against one process (a restart starts again).
                    c.unreachable = 0;
                }
                c.unreachable += 1;
                if c.unreachable < 2 {
                    // Perhaps gone since its home last heard of it: ask again, naming it (the
                    // home answers once it knows more, or after a while with what it knows).
                    c.stale = Some(worker);
                } else {
                    // Its home still calls it alive there: the calls waiting fail, typed, and
                    // later calls try again from the start.
                    c.unreachable = 0;
                    c.stale = None;
                    let why = format!("connecting to its process {worker:?} failed twice: {detail}");
                    let unsent = Error::ActorUnavailable {
                        actor: c.label.to_string(),
                        detail: format!("{why}; the call was not sent, so calling again is safe"),
                    };
                    let sent = Error::ActorUnavailable {
                        actor: c.label.to_string(),
                        detail: format!(
                            "{why}; the call was sent before its connection was lost ({}) and may have run",
                            c.lost_detail
                        ),
                    };
                    let (queued, doomed): (Vec<TaskId>, Vec<TaskId>) =
                        (c.queue.drain(..).collect(), c.doomed.drain(..).collect());
                    for t in queued {
                        self.fail_task(t, unsent.clone(), fx);
                    }
                    for t in doomed {
                        self.fail_task(t, sent.clone(), fx);
                    }
                }
            }
            Located::Dead(reason) => c.dead = Some(Error::ActorDied { actor: c.label.to_string(), reason }),
        }
        self.pump_actor(actor, fx);
    }

    /// The daemon says `actor` died; without a restart coming, every call fails now.
    pub fn on_actor_died(&mut self, actor: ActorId, reason: &str, restarting: bool, fx: &mut Effects) {
        let Some(c) = self.actors.get_mut(&actor) else { return };
        if restarting {
            // The lost connection sends calls back for the next incarnation.
            return;
        }
        c.dead = Some(Error::ActorDied { actor: c.label.to_string(), reason: reason.to_string() });
        self.pump_actor(actor, fx);
    }

    /// The connection to `actor`'s worker is gone: calls in flight go back to the front of
    /// the queue, in order, while they have retries; the others fail.
    pub(super) fn actor_conn_lost(&mut self, actor: ActorId, detail: &str, fx: &mut Effects) {
        let Some(c) = self.actors.get_mut(&actor) else { return };
        tracing::debug!(?actor, detail, "connection to the actor lost");
        c.stale = c.worker.take();
        c.lost_detail = detail.to_string();
        let in_flight: Vec<TaskId> = c.in_flight.drain(..).collect();
        let mut retry = Vec::new();
        let mut doomed = Vec::new();
        for task in in_flight {
            let Some(t) = self.tasks.get_mut(&task) else { continue };
            if t.retries_left > 0 {
                t.retries_left -= 1;
                t.state = TaskState::Queued;
                retry.push(task);
            } else {
                doomed.push(task);
            }
        }
        if let Some(c) = self.actors.get_mut(&actor) {
            for task in retry.into_iter().rev() {
                c.queue.push_front(task);
            }
            // These fail, but with the daemon's account of why (killed, crashed, restarted),
            // which arrives with the answer to the resolve that `pump_actor` sends now.
            c.doomed.extend(doomed);
        }
        self.pump_actor(actor, fx);
    }
}
