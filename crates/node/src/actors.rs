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
//! A caller that lost its worker, or could not connect to it, asks again naming it (`stale`):
//! the home answers once it knows more (a restart, a death), or after `parked_for` with what
//! it knows; a caller that still cannot connect then fails its waiting calls with
//! `ActorUnavailable` (after at most two such waits when it had lost an open connection). No
//! call waiting to be sent waits for ever on a live actor it cannot connect to. (A call sent
//! on a connection that stays open to a stopped process still waits for its answer.)
//!
//! Across nodes: an actor's entry lives at its *home* daemon, whose tag its id carries (the
//! creator's node; the head for named and detached actors, so names are one directory). The
//! home places it: on its own node while that has room, else on another with room (the same
//! choice as tasks' spillback), by asking that node's daemon to host it (`HostActor`). The
//! host runs the constructor on a worker of its own and reports to the home (`ActorHosted`,
//! `ActorLost`); everything else (holders, restarts, names, resolving) stays at the home, and
//! callers then call the actor's worker directly, wherever it is. A host whose home's link
//! closes stops the actors it hosts for it (fate-sharing, as with a creator).

use crate::members::{room, rooms};
use crate::{Node, State};
use ferry_proto::conn::Addr;
use ferry_proto::msg::{ActorId, ActorLocation, ActorSpec, FromNode, Placement, ToNode};
use ferry_proto::{NodeId, WorkerId};
use ferry_sched::ConnId;
use ferry_types::sync::MutexExt;
use std::collections::HashMap;
use std::time::Instant;

/// How long an actor just hosted elsewhere still counts against its host in this node's view.
const PENDING_AFTER_HOSTED: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a resolve naming a worker this node still calls alive waits for news of it:
/// long enough to learn of its node's death (twice the node timeout), at least 10 s.
fn parked_for() -> std::time::Duration {
    (crate::launch::node_timeout() * 2).max(std::time::Duration::from_secs(10))
}

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

/// Dead actors' records each node keeps by default (`FERRY_DEAD_ACTORS_KEPT` to change).
pub(crate) const DEAD_ACTORS_KEPT: usize = 100_000;

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
    /// It is ending on purpose, for this reason: when its process goes, that is why it died.
    exit_reason: Option<String>,
    /// At a host: the home daemon it reports to.
    home: Option<NodeId>,
    /// At the home: the node hosting it (`None`: this one), and its worker there once it runs.
    host: Option<NodeId>,
    remote: Option<(WorkerId, Addr)>,
    /// Restored by a control store started again: until then its holders re-hold it (they
    /// saw their link to the control store close), and it is not stopped for having none.
    hold_grace: Option<Instant>,
}

impl ActorRec {
    /// Run here for another node, its home (which keeps its entry).
    pub(crate) fn hosted_for(&self) -> Option<NodeId> {
        self.home
    }

    /// Hosted on another node (seen from its home).
    pub(crate) fn is_remote(&self) -> bool {
        self.host.is_some()
    }
    /// Waiting for a worker (or a node) to run on.
    pub(crate) fn is_placing(&self) -> bool {
        self.phase == Phase::Placing
    }
}

impl ActorRec {
    /// How `ferry list actors` shows it.
    pub(crate) fn view(
        &self,
        actor: ferry_proto::msg::ActorId,
        home: ferry_proto::NodeId,
    ) -> ferry_proto::msg::ActorView {
        let (state, worker, death) = match self.phase.clone() {
            Phase::Reserved | Phase::Placing => {
                (if self.incarnation > 0 { "restarting" } else { "pending" }, None, None)
            }
            Phase::Starting { worker } => {
                (if self.incarnation > 0 { "restarting" } else { "starting" }, Some(worker), None)
            }
            Phase::Alive { worker } => ("alive", Some(worker), None),
            Phase::Dead { reason } => ("dead", None, Some(reason)),
        };
        let spec = self.spec.as_ref();
        let alive = death.is_none();
        ferry_proto::msg::ActorView {
            actor,
            class: self.class.clone(),
            state: state.into(),
            // Names are kept as `namespace\u{1f}name` (one table for every namespace).
            name: spec.and_then(|s| s.name.as_deref()).map(|n| n.rsplit('\u{1f}').next().unwrap_or(n).to_string()),
            namespace: spec
                .and_then(|s| s.name.as_deref().and_then(|n| n.split_once('\u{1f}')).map(|(ns, _)| ns.to_string()))
                .or_else(|| spec.and_then(|s| s.namespace.clone())),
            job: spec.map(|s| s.job).unwrap_or(WorkerId(0)),
            detached: spec.is_some_and(|s| s.detached),
            home,
            node: alive.then(|| self.host.unwrap_or(home)),
            worker: self.remote.as_ref().map(|(w, _)| *w).or(worker).filter(|_| alive),
            // The first start is incarnation 1.
            restarts: self.incarnation.saturating_sub(1),
            restarts_left: self.restarts_left,
            death,
        }
    }
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
            exit_reason: None,
            home: None,
            host: None,
            remote: None,
            hold_grace: None,
        }
    }
}

impl Node {
    fn location(&self, st: &State, rec: &ActorRec) -> Option<ActorLocation> {
        match &rec.phase {
            Phase::Alive { worker } => match &rec.remote {
                Some((w, addr)) if w == worker => {
                    Some(ActorLocation::Alive { worker: *worker, addr: addr.clone(), incarnation: rec.incarnation })
                }
                _ => st.pool.workers.get(worker).map(|(_, addr, _)| ActorLocation::Alive {
                    worker: *worker,
                    addr: addr.clone(),
                    incarnation: rec.incarnation,
                }),
            },
            Phase::Dead { reason } => Some(ActorLocation::Dead { reason: reason.clone() }),
            _ => None,
        }
    }

    /// `location` as the peer on `conn` reaches it (over TCP when it came over TCP).
    fn location_for(&self, st: &State, conn: ConnId, location: &ActorLocation) -> ActorLocation {
        match location {
            ActorLocation::Alive { worker, addr, incarnation } => {
                let tcp = st.pool.workers.get(worker).and_then(|(_, _, t)| t.clone());
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
        // Answered now: a resolve parked later waits its own full time.
        st.book.parked.remove(&actor);
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
        if let Some(other) = st.book.names.get(&name) {
            let live = st.actors.get(other).is_some_and(|r| !matches!(r.phase, Phase::Dead { .. }));
            if live {
                return Some(format!(
                    "an actor named {name:?} already exists; pick another name or get it with ferry::get_actor"
                ));
            }
        }
        if let Some(c) = &self.tables {
            if let Err(e) = c.put_name(&name, actor, &class) {
                tracing::error!("control store: cannot record actor name {name:?}: {e}");
            }
        }
        st.book.names.insert(name, actor);
        st.actors.entry(actor).or_insert_with(|| ActorRec::new(class, conn));
        None
    }

    pub(crate) fn create_actor(&self, st: &mut State, conn: ConnId, req: u64, actor: ActorId, spec: ActorSpec) {
        if self.opts.control_only {
            // Kept across a restart of the control store (see `restore_actor`).
            if let Some(c) = &self.tables {
                if let Err(e) = c.put_actor(actor, &spec) {
                    tracing::error!("control store: cannot record actor {actor:?}: {e}");
                }
            }
        }
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

    pub(crate) fn place_actor(&self, st: &mut State, actor: ActorId) {
        self.place(st, actor)
    }

    /// Leases a worker for the actor here (`on_actor_grant` continues), or asks another node
    /// to host it when this one has no room and that one has.
    fn place(&self, st: &mut State, actor: ActorId) {
        let Some(rec) = st.actors.get(&actor) else { return };
        let Some(spec) = rec.spec.as_ref() else { return };
        let (shape, depth, placement, priority) =
            (spec.shape.clone(), spec.depth, spec.placement.clone(), spec.priority);
        let default = placement == Placement::Default;
        if rec.home.is_none() && (self.in_cluster() || !default) {
            use ferry_sched::place::{fits, place, two_choices, Decision};
            let (me, others) = (room(&self.my_view(st)), rooms(&self.others_free(st)));
            st.placing.rand ^= st.placing.rand << 13;
            st.placing.rand ^= st.placing.rand >> 7;
            st.placing.rand ^= st.placing.rand << 17;
            if placement == Placement::Spread {
                st.placing.rr += 1;
            }
            // A strategy decides as it does for tasks. By default: here if it fits here now
            // (never on the control store, which runs nothing); else where there is room now;
            // else queued where it can ever fit (moved by rebalancing once some node has room).
            let decision = if !default {
                match place(&shape, &placement, None, &me, &others, st.placing.rr, st.placing.rand) {
                    Decision::Wait(_) if !self.in_cluster() => Decision::Local,
                    d => d,
                }
            } else if !me.head && fits(&shape, &me.available) {
                Decision::Local
            } else {
                match two_choices(&shape, &others, st.placing.rand) {
                    Some(v) => Decision::Spill { node: v.node, addr: v.addr.clone() },
                    None => place(&shape, &Placement::Default, None, &me, &others, 0, st.placing.rand),
                }
            };
            if let Decision::Fail(reason) = decision {
                if let Some(rec) = st.actors.get_mut(&actor) {
                    rec.killed = true;
                }
                self.stop(st, actor, format!("it cannot be placed: {reason}"));
                return;
            }
            if let Decision::Wait(why) = &decision {
                // No node alive can ever host it: it waits for one that can (retried when the
                // cluster's view changes), and its creator is told.
                let warning = format!("ferry: warning: actor {actor:?} needing {shape} waits: {why}");
                tracing::warn!("{warning}");
                if let Some((conn, _)) = st.actors.get(&actor).and_then(|r| r.created) {
                    self.send(st, conn, &FromNode::Log { node: self.id, stderr: true, lines: vec![warning] });
                }
                if !st.book.waiting.contains(&actor) {
                    st.book.waiting.push(actor);
                }
                return;
            }
            if let Decision::Spill { node, addr } = decision {
                st.book.pending_hosts.insert(actor, (node, shape, None));
                let rec = st.actors.get_mut(&actor).expect("present");
                rec.host = Some(node);
                rec.remote = None;
                let spec = rec.spec.clone().expect("checked");
                let msg = ToNode::HostActor { actor, spec, home: self.id, exe: self.program_spec() };
                let _ = self.links_tx.locked().send((node, addr, msg));
                return;
            }
        }
        if let Some(rec) = st.actors.get_mut(&actor) {
            rec.host = None;
        }
        let req = st.book.next_req;
        st.book.next_req += 1;
        st.book.reqs.insert(req, actor);
        // Movable (unless a strategy chose this node), also when hosted for another home: that
        // home chose this node from a view that may be a heartbeat old, and the actor must not
        // wait here while others have room.
        if default {
            st.placing.movable.insert((ACTOR_CONN, req), Instant::now());
        }
        let actions = st.pool.sched.request(ACTOR_CONN, req, shape, depth, priority);
        self.apply(st, actions);
    }

    pub(crate) fn on_actor_grant(&self, st: &mut State, req: u64, worker: WorkerId) {
        let actor = st.book.reqs.remove(&req);
        let rec = actor.and_then(|a| st.actors.get_mut(&a).map(|r| (a, r)));
        let Some((actor, rec)) = rec.filter(|(_, r)| r.phase == Phase::Placing) else {
            // The actor died or was killed while waiting: the worker is not needed.
            self.spawn_kill(worker);
            return;
        };
        rec.phase = Phase::Starting { worker };
        if rec.restarts_left == 0 {
            // Reset would kill it for good: a best-effort actor is reset only with restarts
            // left (it may still be suspended, which loses nothing).
            st.pool.sched.protect(worker);
        }
        let incarnation = rec.incarnation + 1;
        let spec = rec.spec.clone().expect("placed actors have a spec");
        st.book.worker_actor.insert(worker, actor);
        if let Some((wconn, _, _)) = st.pool.workers.get(&worker) {
            let wconn = *wconn;
            self.send(st, wconn, &FromNode::BecomeActor { actor, spec, incarnation });
        }
    }

    /// No node can ever host the actor: it is dead, and its callers are told why.
    pub(crate) fn actor_infeasible(&self, st: &mut State, req: u64, reason: String) {
        if let Some(actor) = st.book.reqs.remove(&req) {
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
        if let Some(home) = rec.home {
            // Hosted for another node: it keeps the entry.
            let tcp = st.pool.workers.get(&w).and_then(|(_, _, t)| t.clone());
            let addr = tcp.map(Addr::Tcp).unwrap_or_else(|| Addr::Tcp(String::new()));
            let msg = ToNode::ActorHosted { actor, worker: w, addr, error: error.clone(), host: self.id };
            if let Some(a) = self.node_addr(st, home) {
                let _ = self.links_tx.locked().send((home, a, msg));
            }
        }
        let Some(rec) = st.actors.get_mut(&actor) else { return };
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

    /// The request for the actor's worker left this node's queue for `node`: it hosts it.
    pub(crate) fn actor_moved(&self, st: &mut State, req: u64, node: NodeId, addr: String) {
        let Some(actor) = st.book.reqs.remove(&req) else { return };
        let Some(rec) = st.actors.get_mut(&actor) else { return };
        let Some(spec) = rec.spec.clone().filter(|_| rec.phase == Phase::Placing) else { return };
        if let Some(home) = rec.home {
            // Hosted here for another node's home: passed on; the new host reports to the home
            // (naming itself), as this one would have.
            st.actors.remove(&actor);
            let msg = ToNode::HostActor { actor, spec, home, exe: self.program_spec() };
            let _ = self.links_tx.locked().send((node, addr, msg));
            return;
        }
        rec.host = Some(node);
        rec.remote = None;
        st.book.pending_hosts.insert(actor, (node, spec.shape.clone(), None));
        let msg = ToNode::HostActor { actor, spec, home: self.id, exe: self.program_spec() };
        let _ = self.links_tx.locked().send((node, addr, msg));
    }

    /// `HostActor`, from the actor's home daemon on `conn`: run it here.
    pub(crate) fn host_actor(&self, st: &mut State, conn: ConnId, actor: ActorId, spec: ActorSpec, home: NodeId) {
        let mut rec = ActorRec::new(spec.class.clone(), conn);
        rec.home = Some(home);
        rec.phase = Phase::Placing;
        rec.spec = Some(spec);
        st.actors.insert(actor, rec);
        self.place(st, actor);
    }

    /// `ActorHosted`, at the home: the host ran the constructor.
    pub(crate) fn actor_hosted(
        &self,
        st: &mut State,
        actor: ActorId,
        worker: WorkerId,
        addr: Addr,
        error: Option<String>,
        host: NodeId,
    ) {
        // Still counted until the host's heartbeats show it (they lag by one).
        if let Some(p) = st.book.pending_hosts.get_mut(&actor) {
            p.0 = host;
            p.2 = Some(Instant::now() + PENDING_AFTER_HOSTED);
        }
        let Some(rec) = st.actors.get_mut(&actor) else { return };
        if matches!(rec.phase, Phase::Dead { .. }) && error.is_none() {
            // Killed while it was being passed on from a busy host: stop the copy that ran.
            if let Some(a) = self.node_addr(st, host) {
                let msg = ToNode::KillActor { actor };
                let _ = self.links_tx.locked().send((host, a, msg));
            }
            return;
        }
        if rec.host.is_none() || !matches!(rec.phase, Phase::Placing) {
            return;
        }
        rec.host = Some(host);
        match error {
            None => {
                rec.phase = Phase::Alive { worker };
                rec.remote = Some((worker, addr));
                rec.incarnation += 1;
                self.answer_waiters(st, actor);
            }
            Some(e) => {
                rec.killed = true;
                self.stop(st, actor, format!("its constructor failed: {e}"));
            }
        }
    }

    /// Attaches holds made for `w` before it connected (see `hold_actor_pending`).
    pub(crate) fn attach_pending_holds(&self, st: &mut State, conn: ConnId, w: WorkerId) {
        for actor in st.book.pending_holds.remove(&w).unwrap_or_default() {
            let _ = self.hold_actor(st, conn, actor);
        }
    }

    /// `HoldActorFor` a process not connected here: held as soon as it connects (it will, to
    /// call the actor or to let its handle go). If it never does, the hold lasts until the
    /// actor's creator exits.
    pub(crate) fn hold_actor_pending(&self, st: &mut State, holder: WorkerId, actor: ActorId) -> Option<String> {
        match st.actors.get(&actor).map(|r| &r.phase) {
            None => Some("no such actor".into()),
            Some(Phase::Dead { reason }) => Some(reason.clone()),
            Some(_) => {
                st.book.pending_holds.entry(holder).or_default().push(actor);
                None
            }
        }
    }

    /// Node `n` died: actors it hosted for this home are lost (restarted elsewhere if they may).
    pub(crate) fn actors_node_died(&self, st: &mut State, n: NodeId) {
        let lost: Vec<ActorId> = st
            .actors
            .iter()
            .filter(|(_, r)| r.host == Some(n) && !matches!(r.phase, Phase::Dead { .. }))
            .map(|(a, _)| *a)
            .collect();
        for a in lost {
            self.actor_lost(st, a, &format!("its node {n} died"));
        }
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
                } else {
                    // Not for ever: see `answer_parked`.
                    let until = Instant::now() + parked_for();
                    st.book.parked.entry(actor).or_insert(until);
                }
            }
        }
    }

    /// Answers resolves parked past their time with what this node knows (to it the actor
    /// is alive where the caller could not reach it): the caller tries once more, and fails
    /// its calls with `ActorUnavailable` if it still cannot connect. Otherwise a caller that
    /// lost its connection to a live actor (a network fault, a stopped or swamped process)
    /// would wait for ever. Called on the pool's tick.
    pub(crate) fn answer_parked(&self, st: &mut State) {
        if st.book.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<ActorId> = st.book.parked.iter().filter(|(_, t)| **t <= now).map(|(a, _)| *a).collect();
        for actor in due {
            st.book.parked.remove(&actor);
            self.answer_waiters(st, actor);
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

    /// `HoldActorAgain`: `conn`'s process holds the actor `count` times (set, not added).
    pub(crate) fn hold_actor_again(&self, st: &mut State, conn: ConnId, actor: ActorId, count: u32) -> Option<String> {
        match st.actors.get_mut(&actor) {
            None => Some("no such actor".into()),
            Some(rec) => match &rec.phase {
                Phase::Dead { reason } => Some(reason.clone()),
                _ => {
                    rec.holders.insert(conn, count as i64);
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
            let detached = rec.spec.as_ref().is_some_and(|s| s.detached);
            if rec.holders.is_empty() && !detached && rec.hold_grace.is_none() {
                self.stop(st, actor, "every handle to it was dropped".into());
            }
        }
    }

    pub(crate) fn named_actor(&self, st: &State, name: &str) -> Option<(ActorId, String)> {
        let actor = *st.book.names.get(name)?;
        let rec = st.actors.get(&actor)?;
        (!matches!(rec.phase, Phase::Dead { .. })).then(|| (actor, rec.class.clone()))
    }

    /// The actor is ending on purpose: when its process goes (it exits by itself, after its
    /// last replies, which must reach their callers before they learn it died), it is dead
    /// for good, for `reason`: no restart. A host tells the actor's home, which keeps its
    /// entry.
    pub(crate) fn actor_exited(&self, st: &mut State, actor: ActorId, reason: String) {
        let Some(rec) = st.actors.get_mut(&actor) else { return };
        rec.killed = true;
        rec.exit_reason = Some(reason.clone());
        if let Some(home) = rec.home {
            if let Some(a) = self.node_addr(st, home) {
                let msg = ToNode::ActorExited { actor, reason };
                let _ = self.links_tx.locked().send((home, a, msg));
            }
        }
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
        let rec_name = rec.spec.as_ref().and_then(|s| s.name.clone());
        // Keep a small tombstone: later resolves get the reason.
        if let Some(spec) = rec.spec.as_mut() {
            spec.args.clear();
            if let Some(name) = spec.name.take() {
                if st.book.names.get(&name) == Some(&actor) {
                    st.book.names.remove(&name);
                }
            }
        }
        let names: Vec<String> = st.book.names.iter().filter(|(_, a)| **a == actor).map(|(n, _)| n.clone()).collect();
        for n in &names {
            st.book.names.remove(n);
        }
        if let Some(c) = &self.tables {
            for n in names.iter().chain(rec_name.iter()) {
                let _ = c.remove_name(n);
            }
            if self.opts.control_only {
                let _ = c.remove_actor(actor);
            }
        }
        st.book.recovering.remove(&actor);
        let host = rec.host.take();
        st.book.pending_hosts.remove(&actor);
        if let Some(h) = host {
            // Hosted elsewhere: that node stops it.
            if let Some(a) = self.node_addr(st, h) {
                let _ = self.links_tx.locked().send((h, a, ToNode::KillActor { actor }));
            }
        } else if let Some(w) = worker {
            st.book.worker_actor.remove(&w);
            self.spawn_kill(w);
        }
        self.tell_holders(st, actor, &FromNode::ActorDied { actor, reason, restarting: false });
        self.answer_waiters(st, actor);
        st.book.dead.push_back(actor);
        while st.book.dead.len() > st.book.dead_kept {
            let Some(old) = st.book.dead.pop_front() else { break };
            if st.actors.get(&old).is_some_and(|r| matches!(r.phase, Phase::Dead { .. })) {
                st.actors.remove(&old);
            }
        }
    }

    /// The worker hosting an actor died: restart it if allowed, else it is dead.
    pub(crate) fn actor_worker_gone(&self, st: &mut State, worker: WorkerId, reason: &str) {
        let Some(actor) = st.book.worker_actor.remove(&worker) else { return };
        let Some(rec) = st.actors.get_mut(&actor) else { return };
        if let Some(home) = rec.home {
            // Hosted for another node: it decides about restarts; this copy ends.
            rec.killed = true;
            let why = rec.exit_reason.take().unwrap_or_else(|| format!("its process died ({reason})"));
            let msg = ToNode::ActorLost { actor, reason: reason.to_string() };
            if let Some(a) = self.node_addr(st, home) {
                let _ = self.links_tx.locked().send((home, a, msg));
            }
            self.stop(st, actor, why);
            return;
        }
        self.actor_lost(st, actor, reason);
    }

    /// The actor's process (here or on its host) is gone: restart it if allowed, else it is
    /// dead.
    pub(crate) fn actor_lost(&self, st: &mut State, actor: ActorId, reason: &str) {
        st.book.pending_hosts.remove(&actor);
        let Some(rec) = st.actors.get_mut(&actor) else { return };
        if matches!(rec.phase, Phase::Dead { .. }) {
            return;
        }
        rec.remote = None;
        if rec.host.is_some() && matches!(rec.phase, Phase::Alive { .. } | Phase::Placing) {
            // Its host already stopped it; `stop` must not tell the host again.
            if rec.restarts_left == 0 || rec.killed {
                rec.host = None;
            }
        }
        if rec.phase == Phase::Placing && !rec.killed {
            // It never came up there (sent to a node that was dying): placed again, which
            // costs no restart.
            self.place(st, actor);
        } else if rec.restarts_left > 0 && !rec.killed {
            rec.restarts_left -= 1;
            rec.phase = Phase::Placing;
            let msg = FromNode::ActorDied { actor, reason: reason.to_string(), restarting: true };
            self.tell_holders(st, actor, &msg);
            self.place(st, actor);
        } else {
            let why = rec.exit_reason.take().unwrap_or_else(|| format!("its process died ({reason})"));
            self.stop(st, actor, why);
        }
    }

    /// An owner's connection closed: it holds nothing now, and the actors it created (not
    /// detached) share its fate.
    pub(crate) fn actors_conn_closed(&self, st: &mut State, conn: ConnId) {
        let ids: Vec<ActorId> = st.actors.keys().copied().collect();
        let controls: Vec<NodeId> = st.cluster.view.iter().filter(|v| v.head).map(|v| v.node).collect();
        for actor in ids {
            let Some(rec) = st.actors.get_mut(&actor) else { continue };
            rec.waiters.retain(|(c, _)| *c != conn);
            if rec.home.is_some_and(|h| controls.contains(&h)) {
                // Hosted for the control store, which is started again when it dies: the
                // actor goes on, and is re-reported when this node joins it again.
                rec.holders.remove(&conn);
                continue;
            }
            let was_holder = rec.holders.remove(&conn).is_some();
            let detached = rec.spec.as_ref().is_some_and(|s| s.detached);
            if rec.owner == conn && !detached {
                self.stop(st, actor, "the process that created it exited".into());
            } else if was_holder && rec.holders.is_empty() && !detached && rec.hold_grace.is_none() {
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

    /// An actor from the control store's tables, after it was started again: it waits for
    /// its host to re-report it (`actors_reported`) until `due`, then is started anew. Its
    /// holders hold it again meanwhile (`HoldActor`); one that none holds by then (and is not
    /// detached) stops, as when its last handle goes.
    pub(crate) fn restore_actor(&self, st: &mut State, actor: ActorId, spec: ActorSpec, due: Instant) {
        let mut rec = ActorRec::new(spec.class.clone(), ACTOR_CONN);
        rec.holders.clear();
        rec.restarts_left = spec.max_restarts;
        rec.phase = Phase::Placing;
        rec.hold_grace = Some(due);
        rec.spec = Some(spec);
        st.actors.insert(actor, rec);
        st.book.recovering.insert(actor, due);
    }

    /// Restored actors no host re-reported in time: started anew; restored actors nobody
    /// holds again: stopped (the control store's monitor calls this).
    pub(crate) fn recover_due(&self, st: &mut State) {
        let now = Instant::now();
        let unheld: Vec<ActorId> = st
            .actors
            .iter_mut()
            .filter(|(_, r)| r.hold_grace.is_some_and(|t| t <= now))
            .filter_map(|(a, r)| {
                r.hold_grace = None;
                let detached = r.spec.as_ref().is_some_and(|s| s.detached);
                (r.holders.is_empty() && !detached).then_some(*a)
            })
            .collect();
        for actor in unheld {
            self.stop(st, actor, "every handle to it was dropped (while the control store restarted)".into());
        }
        let due: Vec<ActorId> = st.book.recovering.iter().filter(|(_, t)| **t <= now).map(|(a, _)| *a).collect();
        for actor in due {
            st.book.recovering.remove(&actor);
            if st.actors.get(&actor).is_some_and(|r| r.is_placing() && r.host.is_none()) {
                tracing::info!("actor {actor:?} was not re-reported by any node: starting it anew");
                self.place(st, actor);
            }
        }
    }

    /// `ActorsHosted` from `node`, which (re)joined: the actors it runs for this home. A
    /// restored actor is re-attached where it runs; a copy this home no longer counts on (it
    /// was started elsewhere meanwhile, or killed) is stopped.
    pub(crate) fn actors_reported(&self, st: &mut State, node: NodeId, actors: Vec<(ActorId, WorkerId, Addr)>) {
        for (actor, worker, addr) in actors {
            if actor.home_tag() != ActorId::tag_of(self.id) {
                continue;
            }
            let recovering = st.book.recovering.contains_key(&actor);
            let keep = match st.actors.get_mut(&actor) {
                Some(rec) if rec.is_placing() && (recovering || rec.host == Some(node)) => {
                    st.book.recovering.remove(&actor);
                    rec.host = Some(node);
                    rec.remote = Some((worker, addr));
                    rec.phase = Phase::Alive { worker };
                    rec.incarnation += 1;
                    tracing::info!("actor {actor:?} re-attached on node {node}");
                    self.answer_waiters(st, actor);
                    true
                }
                Some(rec) => matches!(rec.phase, Phase::Alive { worker: w } if w == worker),
                None => false,
            };
            if !keep {
                if let Some(a) = self.node_addr(st, node) {
                    let msg = ToNode::KillActor { actor };
                    let _ = self.links_tx.locked().send((node, a, msg));
                }
            }
        }
    }

    /// The actors this node runs for `home`, as `ActorsHosted` reports them.
    pub(crate) fn hosted_for(&self, st: &State, home: NodeId) -> Vec<(ActorId, WorkerId, Addr)> {
        st.actors
            .iter()
            .filter(|(_, r)| r.home == Some(home))
            .filter_map(|(a, r)| match r.phase {
                Phase::Alive { worker } => {
                    let tcp = st.pool.workers.get(&worker).and_then(|(_, _, t)| t.clone())?;
                    Some((*a, worker, Addr::Tcp(tcp)))
                }
                _ => None,
            })
            .collect()
    }

    pub(crate) fn num_live_actors(&self, st: &State) -> usize {
        st.actors.values().filter(|r| !matches!(r.phase, Phase::Dead { .. })).count()
    }
}

impl Node {
    /// Actors: creation, names, holders, where each is, and their hosts' reports. Routed here by `handle`.
    pub(crate) fn on_actor(&self, st: &mut State, conn: ConnId, msg: ToNode) {
        match msg {
            ToNode::CreateActor { req, actor, spec } => self.create_actor(st, conn, req, actor, spec),
            ToNode::ReserveName { req, name, actor, class } => {
                let error = self.reserve_name(st, conn, name, actor, class);
                self.send(st, conn, &FromNode::Ack { req, error });
            }
            ToNode::ResolveActor { req, actor, stale } => self.resolve_actor(st, conn, req, actor, stale),
            ToNode::GetNamedActor { req, name } => {
                let found = self.named_actor(st, &name);
                self.send(st, conn, &FromNode::NamedActor { req, found });
            }
            ToNode::HoldActor { req, actor } => {
                let error = self.hold_actor(st, conn, actor);
                self.send(st, conn, &FromNode::Ack { req, error });
            }
            ToNode::ReleaseActor { actor, count } => self.release_actor(st, conn, actor, count),
            ToNode::HoldActorAgain { req, actor, count } => {
                let error = self.hold_actor_again(st, conn, actor, count);
                self.send(st, conn, &FromNode::Ack { req, error });
            }
            ToNode::HoldActorFor { req, actor, holder } => {
                let target = st.conns.iter().find(|(_, c)| c.registered && c.from == holder).map(|(k, _)| *k);
                let error = match target {
                    Some(t) => self.hold_actor(st, t, actor),
                    // On another node and not connected here yet: held once it connects.
                    None => self.hold_actor_pending(st, holder, actor),
                };
                self.send(st, conn, &FromNode::Ack { req, error });
            }
            ToNode::KillActor { actor } => self.kill_actor(st, actor),
            ToNode::ActorReady { actor, error } => {
                let worker = st.conns.get(&conn).and_then(|c| c.worker);
                self.actor_ready(st, worker, actor, error)
            }
            ToNode::ActorExited { actor, reason } => {
                // Only from the actor's own worker, or from the node hosting it for this home.
                let worker = st.conns.get(&conn).and_then(|c| c.worker);
                let from_node = st.conns.get(&conn).is_some_and(|c| c.kind == Some(ferry_proto::msg::ProcKind::Node));
                let hosts_it = worker.is_some_and(|w| st.book.worker_actor.get(&w) == Some(&actor));
                if hosts_it || from_node {
                    self.actor_exited(st, actor, reason)
                }
            }
            ToNode::HostActor { actor, spec, home, exe } => {
                if let Some(exe) = exe {
                    self.set_program(st, exe);
                }
                self.host_actor(st, conn, actor, spec, home)
            }
            ToNode::ActorHosted { actor, worker, addr, error, host } => {
                self.actor_hosted(st, actor, worker, addr, error, host)
            }
            ToNode::ActorsHosted { node, actors } => self.actors_reported(st, node, actors),
            ToNode::ActorLost { actor, reason } if st.actors.get(&actor).is_some_and(|r| r.is_remote()) => {
                self.actor_lost(st, actor, &reason);
            }
            // Routed elsewhere by `handle` (or, a lost actor, not one of this node's).
            _ => {}
        }
    }
}
