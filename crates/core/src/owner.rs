//! The owner's table and the submitter: what a process knows about the objects it owns and
//! the tasks it submitted, and the leases it pushes them through.
//!
//! All of it lives in one [`OwnerState`] behind the runtime's mutex. Who changes what:
//! - the caller's thread: `submit`, `put`, reference drops, `cancel`;
//! - a leased worker's reader thread: replies (`on_done`, `on_failed`, `on_requeued`) and
//!   the loss of that worker;
//! - the node connection's reader thread: lease grants, refusals, recalls, worker deaths;
//! - the housekeeping thread: returning leases idle too long.
//!
//! Object life: `Pending` → `Inline` | `Stored` | `Failed`, never back. The table holds the
//! objects this process owns and those it borrows (refs it received from elsewhere). An
//! entry is removed when all its counts are zero: `local` (live `ObjectRef` handles here),
//! `submitted` (unfinished tasks that take it as an argument, or carry it inside one),
//! `pins` (live objects whose values contain it) and, for owned objects, `borrowers` (other
//! processes' registrations not yet released). An owned pending entry stays until its task
//! finishes. Removing a stored owned object tells the node to delete it; removing a
//! borrowed one tells its owner that this process no longer holds it.
//!
//! Borrowing (see ARCHITECTURE.md, "Borrowing"): a process that receives a ref it does not
//! own holds it unregistered while whatever carried it pins it upstream (the task's
//! arguments, the value it was read from). Before that pin can end it registers with the
//! owner: at the end of the task for refs it still holds, or in `get` for refs it read out of
//! a value. A borrower's registrations may be counted by the owner after the borrower's
//! release of them arrives (they travel on different connections), so a borrower's count
//! may be negative for a while; only zero frees.
//!
//! Task life: `WaitingDeps(n)` → `Queued` → `Pushed` → removed on reply. A worker that blocks
//! sends back the tasks it has not started (`Queued` again); a worker that dies sends its
//! `Pushed` tasks back to `Queued` while retries last, and fails them after.

use crate::error::Error;
use ferry_proto::msg::{
    ActorId, ActorSpec, Arg, FromWorker, ObjectAnswer, Placement, Return, Shape, TaskSpec, ToNode, ToWorker,
};
use ferry_proto::{Conn, NodeId, ObjectId, TaskId, WorkerId};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

/// A task argument as the owner keeps it until the task is pushed.
#[derive(Clone, Debug)]
pub(crate) enum ArgDraft {
    /// An encoded value, passed inline.
    Value(Vec<u8>),
    /// An object this process owns; resolved to its value or location before the push.
    Ref(ObjectId),
}

/// Where a ready object's value is.
#[derive(Clone, Debug)]
pub(crate) enum Ready {
    Inline(Arc<Vec<u8>>),
    /// In the store of `node`. `view` is this process's mapping of it, once made: the
    /// process that wrote an object keeps it mapped (as a plasma client does), and a later
    /// `get` is then a pointer copy, not an `open` + `mmap`. Dropped with the entry.
    Stored {
        size: u64,
        node: NodeId,
        view: Option<ferry_store::ObjectView>,
    },
}

#[derive(Debug)]
pub(crate) enum ObjState {
    Pending,
    Ready(Ready),
    Failed(Error),
    /// Nothing holds it but lineages of objects made from it: its value is gone (freed), its
    /// entry stays so that it can be made again if one of them must be.
    Released,
}

#[derive(Debug)]
pub(crate) struct ObjEntry {
    pub state: ObjState,
    pub local: u32,
    pub submitted: u32,
    /// Live objects whose values contain this ref (each holds it once).
    pub pins: u32,
    /// Borrowed objects: this process's registrations at the owner not yet released.
    pub registered: u32,
    /// Borrowed objects: a `GetObject` to the owner is outstanding.
    pub fetching: bool,
    /// Owned objects: the processes that borrow it, with their unreleased registrations.
    pub borrowers: Borrowers,
    /// What most entries never need, out of line: a table of ten thousand small objects is
    /// then half the size, and twice as likely to be in cache.
    rare: Option<Box<Rare>>,
}

#[derive(Debug, Default)]
struct Rare {
    waiters: Vec<Waker>,
    /// Tasks waiting for this object before they can be pushed.
    dependents: Vec<TaskId>,
    /// Owned objects: the refs inside its value, each pinned once while it lives.
    contains: Vec<ObjectId>,
    /// Owned objects: borrowers waiting for the value (answered when it is final).
    remote_waiters: Vec<(WorkerId, Arc<Conn>)>,
    /// Owned objects: actors whose handles are inside its value, each held once for it.
    actors: Vec<ActorId>,
    /// Owned objects: lineages naming it as an argument (see `Lineage`).
    lineage_pins: u32,
}

impl ObjEntry {
    fn new(state: ObjState, local: u32) -> ObjEntry {
        ObjEntry {
            state,
            local,
            submitted: 0,
            pins: 0,
            registered: 0,
            fetching: false,
            borrowers: Borrowers::default(),
            rare: None,
        }
    }
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }
    fn wake(&mut self) {
        if let Some(r) = &mut self.rare {
            for w in r.waiters.drain(..) {
                w.wake();
            }
        }
    }
    /// Wakes `w` when the object is final.
    pub fn add_waiter(&mut self, w: &Waker) {
        let r = self.rare();
        if !r.waiters.iter().any(|x| x.will_wake(w)) {
            r.waiters.push(w.clone());
        }
    }
    /// The refs inside its value (owned objects).
    #[cfg(test)]
    pub fn contains(&self) -> &[ObjectId] {
        self.rare.as_ref().map(|r| r.contains.as_slice()).unwrap_or(&[])
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TaskState {
    WaitingDeps(u32),
    Queued,
    Pushed { lease: u64, worker: WorkerId },
}

#[derive(Debug)]
struct TaskEntry {
    function: &'static str,
    name: Arc<str>,
    args: Vec<ArgDraft>,
    /// Normal tasks: their scheduling class. Actor calls and creations: unused.
    class: usize,
    /// A call of (or, with `create`, the creation of) this actor.
    actor: Option<ActorId>,
    create: Option<Box<ActorSpec>>,
    /// Actor handles and refs inside the argument values: held here until the task is over.
    exported: Exports,
    depth: u32,
    retries_left: u32,
    /// Panics are retried too (`retry_exceptions`), not only lost workers.
    retry_exceptions: bool,
    /// Times it ran and failed or was lost before this run.
    attempts: u32,
    state: TaskState,
    ret: ObjectId,
}

#[derive(Debug)]
struct Lease {
    worker: WorkerId,
    conn: Arc<Conn>,
    class: usize,
    in_flight: usize,
    /// The worker told us its running task waits in `get`: push nothing more until it
    /// finishes that task.
    blocked: bool,
    idle_since: Option<Instant>,
    /// A `Steal` is outstanding on this lease.
    stealing: bool,
    /// Runs one task, then goes back (`Spread`: every task is placed on its own).
    one_shot: bool,
    used: bool,
}

#[derive(Debug, Default)]
struct Class {
    shape: Shape,
    placement: Placement,
    queue: VecDeque<TaskId>,
    leases: Vec<u64>,
    pending_requests: usize,
}

/// Effects the state machine asks the runtime to carry out after the lock is released.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub to_node: Vec<ToNode>,
    /// Stored objects to delete, with the node whose store holds them.
    pub frees: Vec<(NodeId, ObjectId)>,
    pub pushes: Vec<(Arc<Conn>, ToWorker)>,
    /// Messages to other processes by id (connected to on first use).
    pub to_peers: Vec<(WorkerId, ToWorker)>,
    /// Answers on connections other processes opened to us.
    pub replies: Vec<(Arc<Conn>, FromWorker)>,
    /// Borrowed objects this process no longer holds, with the registrations to release.
    pub releases: Vec<(ObjectId, u32)>,
}

/// What a reply says its value holds: refs, and handles of actors (with their labels).
#[derive(Debug, Default)]
pub(crate) struct Inside {
    pub refs: Vec<ObjectId>,
    pub actors: Vec<(ActorId, String)>,
}

/// What travels inside a value and must stay alive with it: actor handles (held at the
/// daemon) and refs. For a task's arguments they are held until the task is over.
#[derive(Debug, Default)]
pub(crate) struct Exports {
    pub actors: Vec<ActorId>,
    pub refs: Vec<ObjectId>,
    /// In a task's return value: the actors and their labels (the caller will hold them).
    pub returned_actors: Vec<(ActorId, String)>,
}

/// Arguments smaller than this in all are not worth choosing a node for.
pub(crate) const LOCALITY_MIN_BYTES: u64 = 1 << 20;

/// How an owned stored object was made, kept while the object lives so that it can be made
/// again if every copy is lost (lineage reconstruction, DESIGN §8). Its arguments stay held
/// (`submitted`) meanwhile, so that they can be remade too.
#[derive(Debug, Clone)]
struct Lineage {
    function: &'static str,
    name: Arc<str>,
    args: Vec<ArgDraft>,
    /// Per argument: held by name (its own lineage can make it again, so only its entry is
    /// kept) or by value (a `put` object, or one without lineage: its value is kept).
    by_name: Vec<bool>,
    class: usize,
    /// Re-executions left (the task's `max_retries`, shared with its retries).
    retries_left: u32,
    /// Bytes of argument values it keeps (inline, and stored objects it holds).
    bytes: usize,
}

/// Tunables the table needs.
#[derive(Debug, Clone)]
pub(crate) struct OwnerLimits {
    pub max_in_flight: usize,
    pub max_pending_requests: usize,
    /// Bytes of task arguments kept for lineage; past it, new objects are not reconstructable.
    pub max_lineage_bytes: usize,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct OwnerState {
    pub me: WorkerId,
    /// Nesting depth of the tasks this process submits.
    pub depth: u32,
    pub objects: HashMap<ObjectId, ObjEntry>,
    tasks: HashMap<TaskId, TaskEntry>,
    /// Actors this process holds handles of (or has calls to).
    actors: HashMap<ActorId, ActorClient>,
    /// `ResolveActor` requests in flight.
    pub actor_resolves: HashMap<u64, ActorId>,
    classes: Vec<Class>,
    class_ids: HashMap<(Shape, Placement), usize>,
    leases: HashMap<u64, Lease>,
    lease_requests: HashMap<u64, usize>,
    next_seq: u64,
    next_req: u64,
    limits: OwnerLimits,
    /// Set at shutdown: everything pending fails with this.
    pub stopped: Option<Error>,
    /// The node is short of resources: give leases back as soon as they are idle.
    pub node_short: bool,
    /// Borrowed entries not yet registered with their owners (see the module docs).
    pub unregistered: HashSet<ObjectId>,
    /// Processes known to be dead: they are never counted as borrowers again (a task still
    /// running for a dead caller must not pin its return's refs for nobody).
    dead_peers: HashSet<WorkerId>,
    /// How each owned stored object was made (see [`Lineage`]), and the bytes this keeps.
    lineage: HashMap<ObjectId, Lineage>,
    lineage_bytes: usize,
    /// Nodes declared dead: objects stored there are lost.
    dead_nodes: HashSet<NodeId>,
    /// Objects made again so far, and task runs repeated (a lost worker or node, a panic with
    /// `retry_exceptions`, a lost argument): see `ferry::recovery_stats`.
    pub reconstructions: u64,
    pub retries: u64,
    /// Objects that became `Failed` so far, and who to wake when one does (see `get_all`),
    /// by registration.
    pub failures: u64,
    failure_waiters: Vec<(u64, Waker)>,
    next_failure_waiter: u64,
}

impl OwnerState {
    pub fn new(me: WorkerId, limits: OwnerLimits) -> OwnerState {
        OwnerState {
            me,
            depth: 1,
            objects: HashMap::default(),
            tasks: HashMap::default(),
            actors: HashMap::default(),
            actor_resolves: HashMap::default(),
            classes: Vec::new(),
            class_ids: HashMap::default(),
            leases: HashMap::default(),
            lease_requests: HashMap::default(),
            next_seq: 1,
            next_req: 1,
            limits,
            stopped: None,
            node_short: false,
            unregistered: HashSet::default(),
            dead_peers: HashSet::default(),
            lineage: HashMap::default(),
            lineage_bytes: 0,
            dead_nodes: HashSet::default(),
            reconstructions: 0,
            retries: 0,
            failures: 0,
            failure_waiters: Vec::new(),
            next_failure_waiter: 1,
        }
    }

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

    /// Whether this process owns anything others may still need: objects (held here or by
    /// borrowers), tasks it submitted, actors it holds or created.
    pub fn owns_anything(&self) -> bool {
        !self.tasks.is_empty()
            || !self.actors.is_empty()
            || !self.lineage.is_empty()
            || self.objects.keys().any(|id| id.owner() == self.me)
    }

    /// Wakes `w` when any object becomes `Failed`, under registration `reg` (0: a new one);
    /// returns the registration, which its owner ends with [`Self::end_failure_wake`]. One
    /// registration holds one waker, however often it is renewed.
    pub fn wake_on_failure(&mut self, reg: u64, w: &Waker) -> u64 {
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

    /// Ends a registration of [`Self::wake_on_failure`].
    pub fn end_failure_wake(&mut self, reg: u64) {
        self.failure_waiters.retain(|(r, _)| *r != reg);
    }

    fn next_id(&mut self) -> TaskId {
        let seq = self.next_seq;
        self.next_seq += 1;
        TaskId { owner: self.me, seq }
    }

    fn class_of(&mut self, shape: &Shape, placement: &Placement) -> usize {
        let key = (shape.clone(), placement.clone());
        if let Some(c) = self.class_ids.get(&key) {
            return *c;
        }
        let id = self.classes.len();
        self.classes.push(Class { shape: shape.clone(), placement: placement.clone(), ..Default::default() });
        self.class_ids.insert(key, id);
        id
    }

    /// Records a new owned object with one local handle, already in `state`.
    pub fn new_object(&mut self, state: ObjState) -> ObjectId {
        let id = ObjectId { task: self.next_id(), index: 0 };
        self.objects.insert(id, ObjEntry::new(state, 1));
        id
    }

    /// Keeps this process's mapping of a stored object for later gets.
    pub fn cache_view(&mut self, id: ObjectId, v: ferry_store::ObjectView) {
        if let Some(ObjEntry { state: ObjState::Ready(Ready::Stored { view, .. }), .. }) = self.objects.get_mut(&id) {
            view.get_or_insert(v);
        }
    }

    /// Forgets this process's mapping of a stored object (it was spilled: the mapping
    /// would keep its memory in use).
    pub fn drop_view(&mut self, id: ObjectId) {
        if let Some(ObjEntry { state: ObjState::Ready(Ready::Stored { view, .. }), .. }) = self.objects.get_mut(&id) {
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

    fn maybe_free(&mut self, id: ObjectId, fx: &mut Effects) {
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
    fn free_one(&mut self, id: ObjectId, fx: &mut Effects) -> Option<Vec<ObjectId>> {
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
            if let Some(l) = self.lineage.remove(&id) {
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

    /// Pins refs inside a value that is gone (or never was kept).
    fn unpin_all(&mut self, refs: Vec<ObjectId>, fx: &mut Effects) {
        for c in refs {
            if let Some(ce) = self.objects.get_mut(&c) {
                ce.pins = ce.pins.saturating_sub(1);
                self.maybe_free(c, fx);
            }
        }
    }

    /// Records a task and returns its return object's id (with one local handle).
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        function: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        (shape, placement): (&Shape, &Placement),
        (max_retries, retry_exceptions): (u32, bool),
        exported: Exports,
        fx: &mut Effects,
    ) -> ObjectId {
        let class = self.class_of(shape, placement);
        let target = Target { class, actor: None, create: None };
        let (task, ret, failed) = self.register_task(function, name, args, target, exported, max_retries, 1, fx);
        if let Some(t) = self.tasks.get_mut(&task) {
            t.retry_exceptions = retry_exceptions;
        }
        if let Some(err) = failed {
            self.fail_task(task, err, fx);
        } else if self.tasks.get(&task).is_some_and(|t| t.state == TaskState::Queued) {
            self.classes[class].queue.push_back(task);
            self.pump(class, fx);
        }
        ret
    }

    /// Pushes queued tasks of `class` to its leases, and asks for more leases if the queue
    /// is still not empty.
    fn pump(&mut self, class: usize, fx: &mut Effects) {
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
                fx.pushes.push((self.leases[&lease_id].conn.clone(), ToWorker::Push(batch)));
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
        let c = &mut self.classes[class];
        while c.pending_requests < want {
            let req = self.next_req;
            self.next_req += 1;
            c.pending_requests += 1;
            self.lease_requests.insert(req, class);
            let (shape, placement) = (c.shape.clone(), c.placement.clone());
            fx.to_node.push(ToNode::RequestLease { req, shape, depth: self.depth, placement, prefer });
        }
    }

    /// The node holding most of `task`'s stored argument bytes, if that is at least
    /// [`LOCALITY_MIN_BYTES`]: its lease is best asked of that node (Ray's locality-aware
    /// lease policy), so the bytes need not move.
    fn args_node(&self, task: TaskId) -> Option<NodeId> {
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

    fn resolve_args(&self, drafts: &[ArgDraft]) -> Result<Vec<Arg>, Error> {
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
    fn wait_for_remade_args(&mut self, task: TaskId) -> bool {
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

    fn build_spec(&self, task: TaskId) -> Result<TaskSpec, Error> {
        let t = &self.tasks[&task];
        let args = self.resolve_args(&t.args)?;
        Ok(TaskSpec { task, function: t.function.to_string(), args, depth: t.depth })
    }

    /// A task is over: release its arguments and the actor handles it carried.
    fn task_over(&mut self, t: &TaskEntry, fx: &mut Effects) {
        self.release_args(&t.args, fx);
        self.task_over_keeping_args(t, fx);
    }

    /// [`Self::task_over`] but for its arguments (kept by a lineage).
    fn task_over_keeping_args(&mut self, t: &TaskEntry, fx: &mut Effects) {
        for a in &t.exported.actors {
            self.actor_handle_dropped(*a, fx);
        }
        self.release_submitted(&t.exported.refs, fx);
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

    /// Releases a task's arguments.
    fn release_args(&mut self, args: &[ArgDraft], fx: &mut Effects) {
        let refs = args.iter().filter_map(|a| match a {
            ArgDraft::Ref(id) => Some(id),
            ArgDraft::Value(_) => None,
        });
        self.release_submitted(refs, fx);
    }

    /// Gives `id` its final state, wakes its waiters and moves its dependents on.
    fn resolve(&mut self, id: ObjectId, state: ObjState, fx: &mut Effects) {
        self.resolve_with(id, state, Vec::new(), fx)
    }

    /// [`Self::resolve`] for a value that contains the refs `contains` (already pinned once
    /// each on its behalf).
    fn resolve_with(&mut self, id: ObjectId, state: ObjState, contains: Vec<ObjectId>, fx: &mut Effects) {
        let owned = id.owner() == self.me;
        let final_already = self.objects.get(&id).is_none_or(|e| !matches!(e.state, ObjState::Pending));
        if final_already {
            // Nobody holds the object any more, or it is already final (cancelled, failed at
            // shutdown): the late value is dropped.
            if let (true, ObjState::Ready(Ready::Stored { node, .. })) = (owned, &state) {
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
        if !remote.is_empty() {
            let answer = answer_of(&e.state);
            for (_, conn) in remote {
                fx.replies.push((conn, FromWorker::Object { object: id, answer: answer.clone() }));
            }
        }
        for d in deps {
            match &failed {
                // An error upstream is the error of everything downstream.
                Some(err) => self.fail_task(d, err.clone(), fx),
                None => {
                    let Some(t) = self.tasks.get_mut(&d) else {
                        continue;
                    };
                    if let TaskState::WaitingDeps(n) = &mut t.state {
                        *n -= 1;
                        if *n == 0 {
                            t.state = TaskState::Queued;
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

    /// Fails a task that is not pushed, or whose push is over.
    fn fail_task(&mut self, task: TaskId, err: Error, fx: &mut Effects) {
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
        self.resolve(t.ret, ObjState::Failed(err), fx);
        if let Some(a) = t.actor {
            self.maybe_release_actor(a, fx);
        }
    }

    fn finish_push(&mut self, task: TaskId, fx: &mut Effects) -> Option<TaskEntry> {
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
                    l.idle_since = Some(Instant::now());
                    if l.one_shot && l.used {
                        let class = l.class;
                        self.leases.remove(&lease);
                        self.classes[class].leases.retain(|x| *x != lease);
                        fx.to_node.push(ToNode::ReturnLease { lease, kill: false });
                    }
                }
            }
        }
        Some(t)
    }

    pub fn on_done(&mut self, task: TaskId, mut returns: Vec<Return>, inside: Inside, fx: &mut Effects) {
        // Refs inside the value: held on its behalf from now on (see `resolve_with`).
        let contained = self.pin_contained(inside.refs);
        let Some(t) = self.finish_push(task, fx) else {
            // A task we gave up on (cancelled, failed over): drop what it stored.
            if let Some(Return::Stored { node, .. }) = returns.first() {
                fx.frees.push((*node, ObjectId { task, index: 0 }));
            }
            self.unpin_all(contained, fx);
            self.returned_actors(ObjectId::default(), inside.actors, fx);
            return;
        };
        let state = match returns.pop() {
            Some(Return::Inline(v)) => ObjState::Ready(Ready::Inline(Arc::new(v))),
            Some(Return::Stored { size, node }) => ObjState::Ready(Ready::Stored { size, node, view: None }),
            None => ObjState::Failed(Error::Serialization { detail: format!("task {} returned nothing", t.name) }),
        };
        // A value holding refs is not made again (its refs would be pinned twice).
        let stored = matches!(state, ObjState::Ready(Ready::Stored { .. })) && contained.is_empty();
        self.resolve_with(t.ret, state, contained, fx);
        self.returned_actors(t.ret, inside.actors, fx);
        if stored && self.keep_lineage(&t, fx) {
            // Its arguments stay held by the lineage; the rest of the task ends.
            self.task_over_keeping_args(&t, fx);
        } else {
            self.task_over(&t, fx);
        }
        self.after_reply(&t, fx);
    }

    /// Keeps how `t`'s stored return was made, if it can be made again (a normal task whose
    /// arguments hold no refs or handles inside values) and the lineage budget allows.
    fn keep_lineage(&mut self, t: &TaskEntry, fx: &mut Effects) -> bool {
        if t.actor.is_some() || !t.exported.refs.is_empty() || !t.exported.actors.is_empty() {
            return false;
        }
        if !self.objects.contains_key(&t.ret) {
            return false;
        }
        // Arguments that can themselves be made again are held by name only; others (put
        // objects, borrowed ones, ones without lineage) by value, which the budget counts.
        let by_name: Vec<bool> = t
            .args
            .iter()
            .map(|a| matches!(a, ArgDraft::Ref(id) if id.owner() == self.me && self.lineage.contains_key(id)))
            .collect();
        let bytes: usize = t
            .args
            .iter()
            .zip(&by_name)
            .map(|(a, named)| match a {
                ArgDraft::Value(v) => v.len(),
                ArgDraft::Ref(_) if *named => 0,
                ArgDraft::Ref(id) => match self.objects.get(id).map(|e| &e.state) {
                    Some(ObjState::Ready(Ready::Stored { size, .. })) => *size as usize,
                    _ => 0,
                },
            })
            .sum();
        if self.lineage_bytes + bytes > self.limits.max_lineage_bytes {
            return false;
        }
        // The task's own holds on its arguments end here: by-value ones pass to the lineage,
        // by-name ones become lineage pins (their values may go).
        for (a, named) in t.args.iter().zip(&by_name) {
            if let (ArgDraft::Ref(id), true) = (a, named) {
                if let Some(e) = self.objects.get_mut(id) {
                    e.rare().lineage_pins += 1;
                }
            }
        }
        let named_refs: Vec<ObjectId> = t
            .args
            .iter()
            .zip(&by_name)
            .filter_map(|(a, n)| match a {
                ArgDraft::Ref(id) if *n => Some(*id),
                _ => None,
            })
            .collect();
        let lin = Lineage {
            function: t.function,
            name: t.name.clone(),
            args: t.args.clone(),
            by_name,
            class: t.class,
            retries_left: t.retries_left,
            bytes,
        };
        self.lineage_bytes += bytes;
        if let Some(old) = self.lineage.insert(t.ret, lin) {
            self.drop_lineage_of(old, fx);
        }
        self.release_submitted(&named_refs, fx);
        true
    }

    fn drop_lineage_of(&mut self, old: Lineage, fx: &mut Effects) {
        self.lineage_bytes = self.lineage_bytes.saturating_sub(old.bytes);
        for (a, named) in old.args.iter().zip(&old.by_name) {
            let ArgDraft::Ref(id) = a else { continue };
            if let Some(e) = self.objects.get_mut(id) {
                if *named {
                    if let Some(r) = e.rare.as_mut() {
                        r.lineage_pins = r.lineage_pins.saturating_sub(1);
                    }
                } else {
                    e.submitted = e.submitted.saturating_sub(1);
                }
                self.maybe_free(*id, fx);
            }
        }
    }

    /// The node `n` is dead: what it stored is lost (made again on demand, from lineage).
    pub fn node_dead(&mut self, n: NodeId) {
        self.dead_nodes.insert(n);
    }

    /// Makes the owned object `id` again: its task runs once more (and, first, the tasks of
    /// its lost arguments), the object is pending until then. An error says why it cannot be.
    pub fn reconstruct(&mut self, id: ObjectId, fx: &mut Effects) -> Result<(), Error> {
        if self.tasks.contains_key(&id.task) {
            return Ok(()); // Already being made again.
        }
        let lost = |why: String| Error::ObjectLost { object: id, reason: why };
        let Some(lin) = self.lineage.get_mut(&id) else {
            return Err(lost(
                "every copy was lost, and it cannot be made again: it was `put`, or made by an actor, or its \
                 lineage was not kept (Config::max_lineage_bytes)"
                    .into(),
            ));
        };
        if lin.retries_left == 0 {
            return Err(lost(format!(
                "every copy was lost and task {} has no retries left to make it again",
                lin.name
            )));
        }
        lin.retries_left -= 1;
        let lin = lin.clone();
        // Lost arguments first.
        let mut waiting = 0;
        for a in &lin.args {
            if let ArgDraft::Ref(arg) = a {
                let on_dead = match self.objects.get(arg).map(|e| &e.state) {
                    Some(ObjState::Released) => true,
                    Some(ObjState::Ready(Ready::Stored { node, .. })) => self.dead_nodes.contains(node),
                    _ => false,
                };
                if on_dead && arg.owner() == self.me {
                    self.reconstruct(*arg, fx)?;
                }
            }
        }
        for a in &lin.args {
            if let ArgDraft::Ref(arg) = a {
                if let Some(e) = self.objects.get_mut(arg) {
                    e.submitted += 1;
                    if matches!(e.state, ObjState::Pending) {
                        waiting += 1;
                        e.rare().dependents.push(id.task);
                    }
                }
            }
        }
        if let Some(e) = self.objects.get_mut(&id) {
            e.state = ObjState::Pending;
        }
        self.reconstructions += 1;
        let state = if waiting > 0 { TaskState::WaitingDeps(waiting) } else { TaskState::Queued };
        let depth = self.depth;
        self.tasks.insert(
            id.task,
            TaskEntry {
                function: lin.function,
                name: lin.name.clone(),
                args: lin.args.clone(),
                class: lin.class,
                actor: None,
                create: None,
                exported: Exports::default(),
                depth,
                retries_left: lin.retries_left,
                retry_exceptions: false,
                attempts: 0,
                state,
                ret: id,
            },
        );
        if state == TaskState::Queued {
            self.classes[lin.class].queue.push_back(id.task);
            self.pump(lin.class, fx);
        }
        Ok(())
    }

    /// A task failed because an argument could not be read (its node died): its lost
    /// arguments are made again and it runs again, if it may. Gives the task back if not.
    fn retry_after_lost_args(&mut self, mut t: Box<TaskEntry>, fx: &mut Effects) -> Result<(), Box<TaskEntry>> {
        if t.retries_left == 0 || t.actor.is_some() {
            return Err(t);
        }
        let mut remade = Vec::new();
        for a in &t.args {
            if let ArgDraft::Ref(arg) = a {
                let stored =
                    matches!(self.objects.get(arg).map(|e| &e.state), Some(ObjState::Ready(Ready::Stored { .. })));
                if stored && arg.owner() == self.me && self.reconstruct(*arg, fx).is_ok() {
                    remade.push(*arg);
                }
            }
        }
        if remade.is_empty() {
            return Err(t);
        }
        // The task again, waiting for them (its arguments are still held: it never ended).
        t.retries_left -= 1;
        t.attempts += 1;
        self.retries += 1;
        t.state = TaskState::WaitingDeps(remade.len() as u32);
        for arg in &remade {
            if let Some(e) = self.objects.get_mut(arg) {
                e.rare().dependents.push(t.ret.task);
            }
        }
        self.tasks.insert(t.ret.task, *t);
        Ok(())
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

    fn after_reply(&mut self, t: &TaskEntry, fx: &mut Effects) {
        match t.actor {
            Some(a) => self.maybe_release_actor(a, fx),
            None => {
                self.pump(t.class, fx);
                self.steal(t.class, fx);
            }
        }
    }

    /// When a lease of `class` has nothing to do and nothing is queued, asks the busiest
    /// other lease of the class to hand back half of its unstarted tasks: without this, a
    /// task pipelined behind a long one waits while a worker idles.
    fn steal(&mut self, class: usize, fx: &mut Effects) {
        let c = &self.classes[class];
        if !c.queue.is_empty() {
            return;
        }
        let leases = || c.leases.iter().filter_map(|l| self.leases.get(l).map(|s| (*l, s)));
        if !leases().any(|(_, l)| l.in_flight == 0 && !l.blocked) {
            return;
        }
        let victim = leases().filter(|(_, l)| l.in_flight >= 2 && !l.stealing).max_by_key(|(_, l)| l.in_flight);
        if let Some((id, l)) = victim {
            let max = (l.in_flight / 2) as u32;
            fx.pushes.push((l.conn.clone(), ToWorker::Steal { max }));
            self.leases.get_mut(&id).expect("listed").stealing = true;
        }
    }

    /// The answer to a `Steal`: the tasks come back to the queue and go to idle leases.
    pub fn on_stolen(&mut self, worker: WorkerId, tasks: Vec<TaskId>, fx: &mut Effects) {
        for l in self.leases.values_mut().filter(|l| l.worker == worker) {
            l.stealing = false;
        }
        self.take_back(tasks, false, fx);
    }

    /// Pushed tasks that a worker hands back unstarted go to the front of their queues, in
    /// order; with `blocked`, their lease gets no more until its running task finishes.
    fn take_back(&mut self, tasks: Vec<TaskId>, blocked: bool, fx: &mut Effects) {
        let mut classes = Vec::new();
        for task in tasks.into_iter().rev() {
            let Some(t) = self.tasks.get_mut(&task) else {
                continue;
            };
            if let TaskState::Pushed { lease, .. } = t.state {
                if let Some(l) = self.leases.get_mut(&lease) {
                    l.in_flight = l.in_flight.saturating_sub(1);
                    l.blocked |= blocked;
                }
                t.state = TaskState::Queued;
                self.classes[t.class].queue.push_front(task);
                classes.push(t.class);
            }
        }
        classes.dedup();
        for c in classes {
            self.pump(c, fx);
        }
    }

    pub fn on_failed(&mut self, task: TaskId, err: ferry_proto::msg::TaskError, fx: &mut Effects) {
        let Some(t) = self.finish_push(task, fx) else {
            return;
        };
        let t = match err {
            ferry_proto::msg::TaskError::ArgumentUnavailable { .. } => {
                let class = t.class;
                match self.retry_after_lost_args(Box::new(t), fx) {
                    Ok(()) => {
                        self.pump(class, fx);
                        return;
                    }
                    Err(t) => *t,
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
                self.classes[class].queue.push_back(t.ret.task);
                self.tasks.insert(t.ret.task, t);
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
        self.resolve(t.ret, ObjState::Failed(Error::from_task(&t.name, err)), fx);
        self.after_reply(&t, fx);
    }

    /// The worker of a lease blocked in `get` and handed back the tasks it had not started.
    pub fn on_requeued(&mut self, tasks: Vec<TaskId>, fx: &mut Effects) {
        self.take_back(tasks, true, fx);
    }

    /// A lease request was granted.
    pub fn on_lease_granted(&mut self, req: u64, lease: u64, worker: WorkerId, conn: Arc<Conn>, fx: &mut Effects) {
        let Some(class) = self.lease_requests.remove(&req) else {
            fx.to_node.push(ToNode::ReturnLease { lease, kill: false });
            return;
        };
        let c = &mut self.classes[class];
        c.pending_requests -= 1;
        c.leases.push(lease);
        let one_shot = c.placement == Placement::Spread;
        self.leases.insert(
            lease,
            Lease {
                worker,
                conn,
                class,
                in_flight: 0,
                blocked: false,
                idle_since: Some(Instant::now()),
                stealing: false,
                one_shot,
                used: false,
            },
        );
        self.steal(class, fx);
        self.pump(class, fx);
    }

    /// The worker behind a granted lease could not be reached.
    pub fn on_lease_unreachable(&mut self, req: u64, lease: u64, fx: &mut Effects) {
        fx.to_node.push(ToNode::ReturnLease { lease, kill: true });
        if let Some(class) = self.lease_requests.remove(&req) {
            self.classes[class].pending_requests -= 1;
            self.pump(class, fx);
        }
    }

    pub fn on_lease_infeasible(&mut self, req: u64, reason: String, fx: &mut Effects) {
        let Some(class) = self.lease_requests.remove(&req) else {
            return;
        };
        self.classes[class].pending_requests -= 1;
        let queued: Vec<TaskId> = self.classes[class].queue.drain(..).collect();
        for t in queued {
            let name = self.tasks.get(&t).map(|t| t.name.to_string()).unwrap_or_default();
            self.fail_task(t, Error::Infeasible { task: name, detail: reason.clone() }, fx);
        }
    }

    /// A worker is gone: its leases end, and what it was running is retried or failed.
    pub fn on_worker_lost(&mut self, worker: WorkerId, detail: &str, fx: &mut Effects) {
        let dead: Vec<u64> = self.leases.iter().filter(|(_, l)| l.worker == worker).map(|(id, _)| *id).collect();
        let mut classes = Vec::new();
        for id in dead {
            if let Some(l) = self.leases.remove(&id) {
                self.classes[l.class].leases.retain(|x| *x != id);
                classes.push(l.class);
            }
        }
        // Actor calls in flight there go back, in order, to the front of their actor's queue
        // (for the next incarnation) or fail; the actor's address must be fetched again.
        let actor_ids: Vec<ActorId> =
            self.actors.iter().filter(|(_, c)| c.worker == Some(worker)).map(|(a, _)| *a).collect();
        for a in actor_ids {
            self.actor_conn_lost(a, detail, fx);
        }
        let lost: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.actor.is_none() && matches!(t.state, TaskState::Pushed { worker: w, .. } if w == worker))
            .map(|(id, _)| *id)
            .collect();
        for task in lost {
            let t = self.tasks.get_mut(&task).expect("listed");
            if t.retries_left > 0 {
                t.retries_left -= 1;
                t.attempts += 1;
                self.retries += 1;
                t.state = TaskState::Queued;
                self.classes[t.class].queue.push_front(task);
                classes.push(t.class);
            } else {
                let name = t.name.to_string();
                t.state = TaskState::Queued;
                let class = t.class;
                self.classes[class].queue.push_front(task);
                self.fail_task(task, Error::WorkerDied { task: name, detail: detail.to_string() }, fx);
            }
        }
        classes.sort_unstable();
        classes.dedup();
        for c in classes {
            self.pump(c, fx);
        }
    }

    /// Returns leases with nothing to do: all of them if `older_than` is `None` (the daemon
    /// asked), else those idle since before it.
    pub fn return_idle_leases(&mut self, older_than: Option<Instant>, fx: &mut Effects) {
        let idle: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| {
                l.in_flight == 0
                    && self.classes[l.class].queue.is_empty()
                    && match (older_than, l.idle_since) {
                        (None, _) => true,
                        (Some(t), Some(since)) => since <= t,
                        (Some(_), None) => false,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            let l = self.leases.remove(&id).expect("listed");
            self.classes[l.class].leases.retain(|x| *x != id);
            fx.to_node.push(ToNode::ReturnLease { lease: id, kill: false });
        }
    }

    /// Cancels the task that creates `id` if it has not finished.
    pub fn cancel(&mut self, id: ObjectId, fx: &mut Effects) {
        let task = id.task;
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        let name = t.name.to_string();
        match t.state {
            TaskState::Pushed { lease, .. } => {
                // The worker drops it if not started; the result is final now either way and
                // a late reply is ignored (and its stored value freed).
                let conn = match t.actor {
                    Some(a) => self.actors.get(&a).and_then(|c| c.conn.clone()),
                    None => self.leases.get(&lease).map(|l| l.conn.clone()),
                };
                if let Some(conn) = conn {
                    fx.pushes.push((conn, ToWorker::Cancel { task }));
                }
                let ret = t.ret;
                self.resolve(ret, ObjState::Failed(Error::Cancelled { task: name }), fx);
            }
            TaskState::Queued | TaskState::WaitingDeps(_) => {
                // Dependents' lists may still name it; they skip tasks they cannot find.
                self.fail_task(task, Error::Cancelled { task: name }, fx);
            }
        }
    }

    /// Fails every pending object (shutdown).
    pub fn fail_all(&mut self, err: Error, fx: &mut Effects) {
        self.stopped = Some(err.clone());
        let tasks: Vec<TaskId> = self.tasks.keys().copied().collect();
        for t in tasks {
            self.fail_task(t, err.clone(), fx);
        }
    }

    pub fn num_leases(&self) -> usize {
        self.leases.len()
    }

    // ---- borrowing ----

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

    /// `put` made `outer`, whose value contains `refs` (each pinned once already).
    pub fn set_contains(&mut self, outer: ObjectId, refs: Vec<ObjectId>, fx: &mut Effects) {
        match self.objects.get_mut(&outer) {
            Some(e) => e.rare().contains.extend(refs),
            None => self.unpin_all(refs, fx),
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
    pub fn on_get_request(&mut self, from: WorkerId, conn: Arc<Conn>, id: ObjectId, fx: &mut Effects) {
        match self.objects.get_mut(&id) {
            Some(e) if id.owner() == self.me => {
                if matches!(e.state, ObjState::Pending) {
                    e.rare().remote_waiters.push((from, conn));
                } else {
                    fx.replies.push((conn, FromWorker::Object { object: id, answer: answer_of(&e.state) }));
                }
            }
            _ => fx.replies.push((conn, FromWorker::Object { object: id, answer: ObjectAnswer::Unknown })),
        }
    }

    /// A borrower could not read our object `id` from `node`: if this table still has it
    /// there, that copy is gone, and the object is made again from its lineage (a copy
    /// elsewhere, or a remake already under way, is simply given). Answered as `GetObject`
    /// is, or with the reason it cannot be made again.
    pub fn on_remake_request(&mut self, from: WorkerId, conn: Arc<Conn>, id: ObjectId, node: NodeId, fx: &mut Effects) {
        let there = |s: &ObjState| matches!(s, ObjState::Ready(Ready::Stored { node: n, .. }) if *n == node);
        if id.owner() == self.me && self.objects.get(&id).is_some_and(|e| there(&e.state)) {
            if let Err(e) = self.reconstruct(id, fx) {
                let answer = answer_of(&ObjState::Failed(e));
                fx.replies.push((conn, FromWorker::Object { object: id, answer }));
                return;
            }
        }
        self.on_get_request(from, conn, id, fx)
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
                    r.remote_waiters.retain(|(w, _)| *w != peer);
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

    // ---- actors ----

    /// Records a task (normal, actor call or actor creation) with its argument counts.
    /// Its return object starts with `local` handles.
    /// Returns its id, and the error of a failed argument if there is one.
    #[allow(clippy::too_many_arguments)]
    fn register_task(
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
        self.objects.insert(ret, ObjEntry::new(ObjState::Pending, local));
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
                            ObjState::Failed(err) => failed = Some(err.clone()),
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
            TaskEntry {
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
                attempts: 0,
                state,
                ret,
            },
        );
        (task, ret, failed.or_else(|| self.stopped.clone()))
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

    /// Forgets an actor once no handle and no call of it is left here.
    fn maybe_release_actor(&mut self, actor: ActorId, fx: &mut Effects) {
        let Some(c) = self.actors.get(&actor) else { return };
        if c.handles > 0 || !c.queue.is_empty() || !c.in_flight.is_empty() || !c.doomed.is_empty() {
            return;
        }
        let c = self.actors.remove(&actor).expect("checked");
        if c.held > 0 {
            fx.to_node.push(ToNode::ReleaseActor { actor, count: c.held });
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

    /// Records a call of `actor`'s method and returns its result's id.
    pub fn submit_call(
        &mut self,
        actor: ActorId,
        method: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        exported: Exports,
        fx: &mut Effects,
    ) -> ObjectId {
        let retries = self.actors.get(&actor).map(|c| c.max_task_retries).unwrap_or(0);
        let (task, ret, failed) = self.register_task(method, name, args, Target::call(actor), exported, retries, 1, fx);
        let c = self.actors.entry(actor).or_insert_with(|| ActorClient::new("actor", 0, 0));
        c.queue.push_back(task);
        match failed {
            Some(err) => self.fail_task(task, err, fx),
            None => self.pump_actor(actor, fx),
        }
        ret
    }

    /// Sends what can go to `actor` now: its creation, then calls in order, each once its
    /// arguments are ready (a call waits for the calls before it).
    fn pump_actor(&mut self, actor: ActorId, fx: &mut Effects) {
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
            if c.queue.is_empty() && !c.doomed.is_empty() && c.conn.is_none() {
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
            let (Some(conn), Some(worker)) = (c.conn.clone(), c.worker) else {
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
                fx.pushes.push((conn, ToWorker::Push(batch)));
            }
            return;
        }
    }

    /// Asks `actor`'s home where it is now, unless that is asked already.
    fn ask_where(&mut self, actor: ActorId, fx: &mut Effects) {
        let Some(c) = self.actors.get_mut(&actor) else { return };
        if c.resolving {
            return;
        }
        c.resolving = true;
        let req = self.next_req;
        self.next_req += 1;
        self.actor_resolves.insert(req, actor);
        fx.to_node.push(ToNode::ResolveActor { req, actor, stale: c.stale });
    }

    fn send_create(&mut self, actor: ActorId, task: TaskId, fx: &mut Effects) {
        let Some(mut t) = self.tasks.remove(&task) else { return };
        let mut spec = *t.create.take().expect("a creation task");
        match self.resolve_args(&t.args) {
            Ok(args) => {
                spec.args = args;
                fx.to_node.push(ToNode::CreateActor { req: 0, actor, spec });
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
        c.resolving = false;
        match at {
            Located::At(worker, conn) => {
                c.worker = Some(worker);
                c.conn = Some(conn);
                c.stale = None;
                // A new incarnation: the calls lost with the old one had no retries left.
                let doomed = std::mem::take(&mut c.doomed);
                let err = Error::ActorDied {
                    actor: c.label.to_string(),
                    reason: format!(
                        "its process died while the call was sent or running ({}); the actor was restarted but the \
                         call had no retries left (raise max_task_retries if its methods may run again)",
                        c.lost_detail
                    ),
                };
                for t in doomed {
                    self.fail_task(t, err.clone(), fx);
                }
            }
            // Gone since the daemon last heard of it: ask again, naming it.
            Located::Unreachable(worker) => c.stale = Some(worker),
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
    fn actor_conn_lost(&mut self, actor: ActorId, detail: &str, fx: &mut Effects) {
        let Some(c) = self.actors.get_mut(&actor) else { return };
        c.conn = None;
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

/// What a task is for: a scheduling class, or an actor (a call, or with `create` its creation).
#[derive(Debug)]
struct Target {
    class: usize,
    actor: Option<ActorId>,
    create: Option<Box<ActorSpec>>,
}

impl Target {
    fn call(actor: ActorId) -> Target {
        Target { class: 0, actor: Some(actor), create: None }
    }
    fn creation(actor: ActorId, spec: ActorSpec) -> Target {
        Target { class: 0, actor: Some(actor), create: Some(Box::new(spec)) }
    }
}

/// Where a resolved actor turned out to be.
#[derive(Debug)]
pub(crate) enum Located {
    At(WorkerId, Arc<Conn>),
    Unreachable(WorkerId),
    Dead(String),
}

/// What a process knows of an actor it calls. See the module docs for the task side.
#[derive(Debug)]
struct ActorClient {
    /// Live handles in this process.
    handles: u32,
    /// Holds the daemon counts for this process (its own `HoldActor`s, and those a worker
    /// made for it when returning a value with a handle in it); all end with the client.
    held: u32,
    worker: Option<WorkerId>,
    conn: Option<Arc<Conn>>,
    resolving: bool,
    /// The worker it was on when we last lost it (so the daemon does not send us back).
    stale: Option<WorkerId>,
    /// Set once the actor is dead for good: every call fails with it.
    dead: Option<Error>,
    /// Not yet sent, in submission order (the creation first, while pending).
    queue: VecDeque<TaskId>,
    /// Sent and not answered, in order.
    in_flight: VecDeque<TaskId>,
    /// Lost with the actor's process and out of retries: they fail once the daemon says why.
    doomed: Vec<TaskId>,
    /// How the connection to the last incarnation ended.
    lost_detail: String,
    max_task_retries: u32,
    /// How errors name the actor.
    label: Arc<str>,
    /// Objects its constructor took by reference (kept for restarts).
    ctor_args: Vec<ObjectId>,
    /// Actors whose handles its constructor took (held likewise).
    ctor_exports: Vec<ActorId>,
}

impl ActorClient {
    fn new(label: &str, held: u32, max_task_retries: u32) -> ActorClient {
        ActorClient {
            handles: 0,
            held,
            worker: None,
            conn: None,
            resolving: false,
            stale: None,
            dead: None,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            doomed: Vec::new(),
            lost_detail: String::new(),
            max_task_retries,
            label: Arc::from(label),
            ctor_args: Vec::new(),
            ctor_exports: Vec::new(),
        }
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
fn answer_of(state: &ObjState) -> ObjectAnswer {
    match state {
        ObjState::Ready(Ready::Inline(b)) => ObjectAnswer::Inline(b.to_vec()),
        ObjState::Ready(Ready::Stored { size, node, .. }) => ObjectAnswer::Stored { size: *size, node: *node },
        ObjState::Failed(e) => ObjectAnswer::Failed(e.clone()),
        ObjState::Pending | ObjState::Released => ObjectAnswer::Unknown,
    }
}
