//! The actor directory and lifecycle: creation on a dedicated worker, names, holders,
//! restarts, and stopping. (With one node the daemon plays the control store's part for
//! actors; DESIGN §9 moves the directory there when there are many.)
//!
//! An actor's phases: `Reserved` (a name is taken, the spec not yet sent) → `Placing` (a
//! worker is being leased for it) → `Starting` (the worker runs the constructor) → `Alive`;
//! from `Placing`/`Starting`/`Alive`, a worker death leads back to `Placing` while restarts
//! remain and the actor was not killed, else to `Dead`, which is final.
//!
//! Holders are connections (processes) with at least one handle. A non-detached actor stops
//! when it has no holders left, or when its owner (the creator's connection) goes.
//! Callers fetch an actor's address once (`ResolveActor`) and then call its worker directly.

use crate::{Node, State};
use ferry_proto::msg::{ActorId, ActorLocation, ActorSpec, FromNode};
use ferry_proto::WorkerId;
use ferry_sched::ConnId;
use std::collections::HashMap;

/// The scheduler connection id under which the daemon leases actors' workers.
pub(crate) const ACTOR_CONN: ConnId = 0;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Phase {
    Reserved,
    Placing,
    Starting { worker: WorkerId },
    Alive { worker: WorkerId },
    Dead { reason: String },
}

#[derive(Debug)]
pub(crate) struct ActorRec {
    class: String,
    spec: Option<ActorSpec>,
    owner: ConnId,
    phase: Phase,
    incarnation: u32,
    restarts_left: u32,
    /// How many holds each process has (a process holds once per `HoldActor` or
    /// `HoldActorFor`, and releases them together; a release may come before a hold made for
    /// it by another process, so a count may be negative for a while).
    holders: HashMap<ConnId, i64>,
    created: Option<(ConnId, u64)>,
    waiters: Vec<(ConnId, u64)>,
    killed: bool,
}

impl ActorRec {
    fn new(class: String, owner: ConnId) -> ActorRec {
        ActorRec {
            class,
            spec: None,
            owner,
            phase: Phase::Reserved,
            incarnation: 0,
            restarts_left: 0,
            holders: HashMap::from([(owner, 1)]),
            created: None,
            waiters: Vec::new(),
            killed: false,
        }
    }
}

impl Node {
    fn location(&self, st: &State, rec: &ActorRec) -> Option<ActorLocation> {
        match &rec.phase {
            Phase::Alive { worker } => st.workers.get(worker).map(|(_, addr, _)| ActorLocation::Alive {
                worker: *worker,
                addr: addr.clone(),
                incarnation: rec.incarnation,
            }),
            Phase::Dead { reason } => Some(ActorLocation::Dead { reason: reason.clone() }),
            _ => None,
        }
    }

    /// `location` as the peer on `conn` reaches it (over TCP when it came over TCP).
    fn location_for(&self, st: &State, conn: ConnId, location: &ActorLocation) -> ActorLocation {
        match location {
            ActorLocation::Alive { worker, addr, incarnation } => {
                let tcp = st.workers.get(worker).and_then(|(_, _, t)| t.clone());
                ActorLocation::Alive {
                    worker: *worker,
                    addr: self.addr_for(st, conn, addr, &tcp),
                    incarnation: *incarnation,
                }
            }
            dead => dead.clone(),
        }
    }

    fn answer_waiters(&self, st: &mut State, actor: ActorId) {
        let Some(rec) = st.actors.get(&actor) else { return };
        let Some(location) = self.location(st, rec) else { return };
        let rec = st.actors.get_mut(&actor).expect("present");
        let waiters = std::mem::take(&mut rec.waiters);
        let created = if matches!(location, ActorLocation::Alive { .. } | ActorLocation::Dead { .. }) {
            rec.created.take()
        } else {
            None
        };
        for (conn, req) in waiters {
            let location = self.location_for(st, conn, &location);
            self.send(st, conn, &FromNode::ActorState { req, actor, location });
        }
        if let Some((conn, req)) = created {
            let error = match &location {
                ActorLocation::Dead { reason } => Some(reason.clone()),
                ActorLocation::Alive { .. } => None,
            };
            self.send(st, conn, &FromNode::ActorCreated { req, actor, error });
        }
    }

    pub(crate) fn reserve_name(
        &self,
        st: &mut State,
        conn: ConnId,
        name: String,
        actor: ActorId,
        class: String,
    ) -> Option<String> {
        if let Some(other) = st.names.get(&name) {
            let live = st.actors.get(other).is_some_and(|r| !matches!(r.phase, Phase::Dead { .. }));
            if live {
                return Some(format!(
                    "an actor named {name:?} already exists; pick another name or get it with ferry::get_actor"
                ));
            }
        }
        st.names.insert(name, actor);
        st.actors.entry(actor).or_insert_with(|| ActorRec::new(class, conn));
        None
    }

    pub(crate) fn create_actor(&self, st: &mut State, conn: ConnId, req: u64, actor: ActorId, spec: ActorSpec) {
        let rec = st.actors.entry(actor).or_insert_with(|| ActorRec::new(spec.class.clone(), conn));
        rec.restarts_left = spec.max_restarts;
        rec.created = Some((conn, req));
        rec.spec = Some(spec);
        if rec.phase == Phase::Reserved {
            rec.phase = Phase::Placing;
            self.place(st, actor);
        } else {
            // Killed (or its owner left) between reserving the name and creating it.
            self.answer_waiters(st, actor);
        }
    }

    /// Leases a worker for the actor; `on_actor_grant` continues.
    fn place(&self, st: &mut State, actor: ActorId) {
        let Some(spec) = st.actors.get(&actor).and_then(|r| r.spec.as_ref()) else { return };
        let (shape, depth) = (spec.shape.clone(), spec.depth);
        let req = st.next_actor_req;
        st.next_actor_req += 1;
        st.actor_reqs.insert(req, actor);
        let actions = st.sched.request(ACTOR_CONN, req, shape, depth);
        self.apply(st, actions);
    }

    pub(crate) fn on_actor_grant(&self, st: &mut State, req: u64, worker: WorkerId) {
        let actor = st.actor_reqs.remove(&req);
        let rec = actor.and_then(|a| st.actors.get_mut(&a).map(|r| (a, r)));
        let Some((actor, rec)) = rec.filter(|(_, r)| r.phase == Phase::Placing) else {
            // The actor died or was killed while waiting: the worker is not needed.
            self.spawn_kill(worker);
            return;
        };
        rec.phase = Phase::Starting { worker };
        let spec = rec.spec.clone().expect("placed actors have a spec");
        st.worker_actor.insert(worker, actor);
        if let Some((wconn, _, _)) = st.workers.get(&worker) {
            let wconn = *wconn;
            self.send(st, wconn, &FromNode::BecomeActor { actor, spec });
        }
    }

    /// No node can ever host the actor: it is dead, and its callers are told why.
    pub(crate) fn actor_infeasible(&self, st: &mut State, req: u64, reason: String) {
        if let Some(actor) = st.actor_reqs.remove(&req) {
            if let Some(rec) = st.actors.get_mut(&actor) {
                rec.killed = true;
            }
            self.stop(st, actor, format!("it can never be scheduled: {reason}"));
        }
    }

    pub(crate) fn actor_ready(&self, st: &mut State, worker: Option<WorkerId>, actor: ActorId, error: Option<String>) {
        let Some(rec) = st.actors.get_mut(&actor) else { return };
        let Phase::Starting { worker: w } = rec.phase else { return };
        if Some(w) != worker {
            return;
        }
        match error {
            None => {
                rec.phase = Phase::Alive { worker: w };
                rec.incarnation += 1;
            }
            Some(e) => {
                // A constructor that fails will fail again: no restart.
                rec.killed = true;
                self.stop(st, actor, format!("its constructor failed: {e}"));
                return;
            }
        }
        self.answer_waiters(st, actor);
    }

    pub(crate) fn resolve_actor(
        &self,
        st: &mut State,
        conn: ConnId,
        req: u64,
        actor: ActorId,
        stale: Option<WorkerId>,
    ) {
        match st.actors.get_mut(&actor) {
            None => self.send(
                st,
                conn,
                &FromNode::ActorState { req, actor, location: ActorLocation::Dead { reason: "no such actor".into() } },
            ),
            Some(rec) => {
                rec.waiters.push((conn, req));
                // The caller saw this worker go before we did: answer when we know more.
                let on_stale = matches!(rec.phase, Phase::Alive { worker } if Some(worker) == stale);
                if !on_stale {
                    self.answer_waiters(st, actor);
                }
            }
        }
    }

    pub(crate) fn hold_actor(&self, st: &mut State, conn: ConnId, actor: ActorId) -> Option<String> {
        match st.actors.get_mut(&actor) {
            None => Some("no such actor".into()),
            Some(rec) => match &rec.phase {
                Phase::Dead { reason } => Some(reason.clone()),
                _ => {
                    *rec.holders.entry(conn).or_default() += 1;
                    None
                }
            },
        }
    }

    pub(crate) fn release_actor(&self, st: &mut State, conn: ConnId, actor: ActorId, count: u32) {
        if let Some(rec) = st.actors.get_mut(&actor) {
            let n = rec.holders.entry(conn).or_default();
            *n -= count as i64;
            if *n == 0 {
                rec.holders.remove(&conn);
            }
            if rec.holders.is_empty() && !rec.spec.as_ref().is_some_and(|s| s.detached) {
                self.stop(st, actor, "every handle to it was dropped".into());
            }
        }
    }

    pub(crate) fn named_actor(&self, st: &State, name: &str) -> Option<(ActorId, String)> {
        let actor = *st.names.get(name)?;
        let rec = st.actors.get(&actor)?;
        (!matches!(rec.phase, Phase::Dead { .. })).then(|| (actor, rec.class.clone()))
    }

    pub(crate) fn kill_actor(&self, st: &mut State, actor: ActorId) {
        if let Some(rec) = st.actors.get_mut(&actor) {
            rec.killed = true;
            self.stop(st, actor, "it was killed with ferry::kill".into());
        }
    }

    /// Ends the actor for good.
    fn stop(&self, st: &mut State, actor: ActorId, reason: String) {
        let Some(rec) = st.actors.get_mut(&actor) else { return };
        if matches!(rec.phase, Phase::Dead { .. }) {
            return;
        }
        let worker = match rec.phase {
            Phase::Starting { worker } | Phase::Alive { worker } => Some(worker),
            _ => None,
        };
        rec.phase = Phase::Dead { reason: reason.clone() };
        // Keep a small tombstone: later resolves get the reason.
        if let Some(spec) = rec.spec.as_mut() {
            spec.args.clear();
            if let Some(name) = spec.name.take() {
                if st.names.get(&name) == Some(&actor) {
                    st.names.remove(&name);
                }
            }
        }
        st.names.retain(|_, a| *a != actor);
        if let Some(w) = worker {
            st.worker_actor.remove(&w);
            self.spawn_kill(w);
        }
        self.tell_holders(st, actor, &FromNode::ActorDied { actor, reason, restarting: false });
        self.answer_waiters(st, actor);
    }

    /// The worker hosting an actor died: restart it if allowed, else it is dead.
    pub(crate) fn actor_worker_gone(&self, st: &mut State, worker: WorkerId, reason: &str) {
        let Some(actor) = st.worker_actor.remove(&worker) else { return };
        let Some(rec) = st.actors.get_mut(&actor) else { return };
        if matches!(rec.phase, Phase::Dead { .. }) {
            return;
        }
        if rec.restarts_left > 0 && !rec.killed {
            rec.restarts_left -= 1;
            rec.phase = Phase::Placing;
            let msg = FromNode::ActorDied { actor, reason: reason.to_string(), restarting: true };
            self.tell_holders(st, actor, &msg);
            self.place(st, actor);
        } else {
            self.stop(st, actor, format!("its process died ({reason})"));
        }
    }

    /// An owner's connection closed: it holds nothing now, and the actors it created (not
    /// detached) share its fate.
    pub(crate) fn actors_conn_closed(&self, st: &mut State, conn: ConnId) {
        let ids: Vec<ActorId> = st.actors.keys().copied().collect();
        for actor in ids {
            let Some(rec) = st.actors.get_mut(&actor) else { continue };
            rec.waiters.retain(|(c, _)| *c != conn);
            let was_holder = rec.holders.remove(&conn).is_some();
            let detached = rec.spec.as_ref().is_some_and(|s| s.detached);
            if rec.owner == conn && !detached {
                self.stop(st, actor, "the process that created it exited".into());
            } else if was_holder && rec.holders.is_empty() && !detached {
                self.stop(st, actor, "every handle to it was dropped".into());
            }
        }
    }

    /// Tells the processes that hold the actor (they are the ones that may call it).
    fn tell_holders(&self, st: &State, actor: ActorId, msg: &FromNode) {
        let Some(rec) = st.actors.get(&actor) else { return };
        for conn in rec.holders.keys() {
            self.send(st, *conn, msg);
        }
    }

    pub(crate) fn num_live_actors(&self, st: &State) -> usize {
        st.actors.values().filter(|r| !matches!(r.phase, Phase::Dead { .. })).count()
    }
}
