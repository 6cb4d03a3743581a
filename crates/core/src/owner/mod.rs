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

mod actors;
mod borrow;
#[cfg(test)]
mod borrow_model;
pub(crate) mod events;
mod leases;
mod lineage;
#[cfg(test)]
mod model;
mod stream;
mod submit;
mod table;

use crate::error::Error;
use ferry_proto::msg::{
    ActorId, ActorSpec, Arg, FromWorker, ObjectAnswer, Placement, Return, Shape, TaskSpec, ToNode, ToWorker,
};
use ferry_proto::{NodeId, ObjectId, Priority, TaskId, WorkerId};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

pub(crate) use table::AllWait;
use table::{answer_of, Borrowers};

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

/// Effects the state machine asks the runtime to carry out after the lock is released.
/// Each names its target by id; the runtime knows the connections.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Messages to daemons.
    pub to_daemons: Vec<(Daemon, ToNode)>,
    /// Stored objects to delete, with the node whose store holds them.
    pub frees: Vec<(NodeId, ObjectId)>,
    /// Messages to processes this one is connected to (leased workers, actors' workers); if
    /// the connection is gone, its loss is being reported, and the message is moot.
    pub to_workers: Vec<(WorkerId, ToWorker)>,
    /// Messages to other processes by id (connected to on first use).
    pub to_peers: Vec<(WorkerId, ToWorker)>,
    /// Answers to processes that asked us, on their connections to us.
    pub replies: Vec<(WorkerId, FromWorker)>,
    /// Borrowed objects this process no longer holds, with the registrations to release.
    pub releases: Vec<(ObjectId, u32)>,
    /// Errors of tasks whose every ref went without their error being read (Ray's
    /// "unhandled errors"): to be reported.
    pub unhandled: Vec<UnhandledError>,
}

/// A task's error that nobody read: every ref to its result was dropped without a `get`
/// (Ray's "unhandled errors"). Printed on the driver, or given to
/// `Config::on_unhandled_error`.
#[derive(Debug, Clone)]
pub struct UnhandledError {
    /// The task's name.
    pub task: String,
    pub error: Error,
    /// The worker it ran on, and that worker's node (when it got as far as running).
    pub worker: Option<WorkerId>,
    pub node: Option<NodeId>,
}

/// The job work belongs to: its driver, and the namespace its names live in (`None`: the
/// job's own anonymous one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Job {
    pub id: WorkerId,
    pub namespace: Option<Arc<str>>,
}

/// A failed task's error while some of its refs live and none was read.
#[derive(Debug)]
struct Unread {
    report: UnhandledError,
    /// Its return objects still in the table.
    left: u32,
}

/// Which daemon a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Daemon {
    /// The daemon of this node (this process's own node) or of another.
    Node(NodeId),
    /// The daemon keeping the actor's entry (its home, whose tag the actor's id carries).
    HomeOf(ActorId),
}

/// What a reply says its value holds: refs, and handles of actors (with their labels).
#[derive(Debug, Default)]
pub(crate) struct Inside {
    pub refs: Vec<ObjectId>,
    pub actors: Vec<(ActorId, String)>,
    /// When it ran on its worker (start, end; Unix microseconds), if the worker says.
    pub ran: Option<(u64, u64)>,
}

/// What travels inside a value and must stay alive with it: actor handles (held at the
/// daemon) and refs. For a task's arguments they are held until the task is over.
#[derive(Debug, Default)]
pub(crate) struct Exports {
    pub actors: Vec<ActorId>,
    pub refs: Vec<ObjectId>,
}

/// Tunables the table needs.
#[derive(Debug, Clone)]
pub(crate) struct OwnerLimits {
    pub max_in_flight: usize,
    pub max_pending_requests: usize,
    /// Bytes of task arguments kept for lineage; past it, new objects are not reconstructable.
    pub max_lineage_bytes: usize,
    /// This process's job's weight in fair sharing (sent with its own job's lease requests).
    pub job_weight: Option<u32>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct OwnerState {
    me: WorkerId,
    /// Nesting depth of the tasks this process submits.
    depth: u32,
    /// Entries boxed: a table of a million doubles to two million buckets, which then hold a
    /// pointer each rather than a whole entry (half the memory of a million pending tasks).
    objects: HashMap<ObjectId, Box<ObjEntry>>,
    tasks: HashMap<TaskId, Box<TaskEntry>>,
    /// Actors this process holds handles of (or has calls to).
    actors: HashMap<ActorId, ActorClient>,
    /// `ResolveActor` requests in flight.
    actor_resolves: HashMap<u64, ActorId>,
    classes: Vec<Class>,
    class_ids: HashMap<(Shape, Placement, Priority), usize>,
    /// Leases by this process's lease id (each names the granting node and its own id).
    leases: HashMap<u64, Lease>,
    next_lease: u64,
    /// Lease requests not yet answered.
    lease_requests: HashMap<u64, LeaseRequest>,
    /// The node this process runs on: lease requests go to its daemon first.
    node: NodeId,
    next_seq: u64,
    next_req: u64,
    limits: OwnerLimits,
    /// Set at shutdown: everything pending fails with this.
    stopped: Option<Error>,
    /// The node is short of resources: give leases back as soon as they are idle.
    node_short: bool,
    /// Borrowed entries not yet registered with their owners (see the module docs).
    unregistered: HashSet<ObjectId>,
    /// Processes known to be dead: they are never counted as borrowers again (a task still
    /// running for a dead caller must not pin its return's refs for nobody).
    dead_peers: HashSet<WorkerId>,
    /// How each owned stored object was made (see [`Lineage`]), and the bytes this keeps.
    /// By task: one lineage makes every return of its task.
    lineage: HashMap<TaskId, Lineage>,
    lineage_bytes: usize,
    /// Nodes declared dead: objects stored there are lost.
    dead_nodes: HashSet<NodeId>,
    /// Objects made again so far, and task runs repeated (a lost worker or node, a panic with
    /// `retry_exceptions`, a lost argument): see `ferry::recovery_stats`.
    reconstructions: u64,
    retries: u64,
    /// Task runs ended by preemption (see [`Self::on_preempted`]), and the workers whose
    /// nodes took their leases back, not yet seen gone: their loss is a preemption.
    preemptions: u64,
    preempted: HashMap<WorkerId, leases::Preemption>,
    /// Objects that became `Failed` so far, and who to wake when one does (see `get_all`),
    /// by registration.
    failures: u64,
    /// Failed tasks whose error is not read yet (see [`UnhandledError`]).
    unread: HashMap<TaskId, Unread>,
    failure_waiters: Vec<(u64, Waker)>,
    next_failure_waiter: u64,
    /// Streaming tasks' streams (see [`stream`]).
    streams: HashMap<TaskId, stream::StreamState>,
    /// In a worker, the task it runs now (not an actor's): the parent of what it submits.
    running: Option<TaskId>,
    /// Whether task events are noted, the notes not yet taken, and the time changes happen
    /// at now (see [`events`]).
    task_events: bool,
    notes: Vec<events::Note>,
    /// Incremented each time the notes are taken.
    notes_gen: u32,
    note_extras: Vec<ferry_proto::state::Extra>,
    whats: events::Whats,
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
    state: ObjState,
    local: u32,
    submitted: u32,
    /// Live objects whose values contain this ref (each holds it once).
    pins: u32,
    /// Borrowed objects: this process's registrations at the owner not yet released.
    registered: u32,
    /// Borrowed objects: a `GetObject` to the owner is outstanding.
    fetching: bool,
    /// Owned objects: the processes that borrow it, with their unreleased registrations.
    borrowers: Borrowers,
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
    remote_waiters: Vec<WorkerId>,
    /// Owned objects: actors whose handles are inside its value, each held once for it.
    actors: Vec<ActorId>,
    /// Owned objects: lineages naming it as an argument (see `Lineage`).
    lineage_pins: u32,
}

impl Rare {
    fn is_empty(&self) -> bool {
        let Rare { waiters, dependents, contains, remote_waiters, actors, lineage_pins } = self;
        waiters.is_empty()
            && dependents.is_empty()
            && contains.is_empty()
            && remote_waiters.is_empty()
            && actors.is_empty()
            && *lineage_pins == 0
    }
}

impl ObjEntry {
    fn new(state: ObjState, local: u32) -> Box<ObjEntry> {
        Box::new(ObjEntry {
            state,
            local,
            submitted: 0,
            pins: 0,
            registered: 0,
            fetching: false,
            borrowers: Borrowers::default(),
            rare: None,
        })
    }
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }
    fn wake(&mut self) {
        if let Some(r) = &mut self.rare {
            for w in r.waiters.drain(..) {
                w.wake();
            }
            if r.is_empty() {
                // Allocated for a waiter alone: it goes with it (a million-ref `get_all`
                // otherwise leaves one behind on every object its cursor stopped at).
                self.rare = None;
            }
        }
    }
    /// Wakes `w` when the object is final.
    fn add_waiter(&mut self, w: &Waker) {
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
    /// Preemptions it may still take and run again without charging a retry, and those it
    /// took.
    preemptions_left: u32,
    preempted: u32,
    /// Times it ran and failed or was lost before this run.
    attempts: u32,
    state: TaskState,
    /// Its first return object; the others (`num_returns`) follow it by index.
    ret: ObjectId,
    /// How many objects it returns (1 unless split; 0 if split into none), and whether its value is split into them
    /// (`num_returns`) rather than being its one object.
    returns: u32,
    split: bool,
    /// Cancelled while pushed: its result is final already; it is never run again.
    cancelled: bool,
    /// The job it belongs to (its driver), told to the worker that runs it.
    job: Job,
    /// A streaming task, with its back-pressure window: `returns` counts the values it
    /// made so far (see [`stream`]).
    stream: Option<u32>,
    /// The task of this process that submitted it (in a worker): a recursive cancel of that
    /// task cancels this one.
    parent: Option<TaskId>,
    /// Where its note that says what it is waits to be sent (the notes' generation and its
    /// place; [`events::NOT_NOTED`] if none): a task that ends before the notes go has its
    /// end noted in that note, one record for the task (see [`events`]).
    noted: u64,
}

impl TaskEntry {
    /// Its return objects, in order.
    fn rets(&self) -> impl Iterator<Item = ObjectId> + '_ {
        (0..self.returns).map(|index| ObjectId { task: self.ret.task, index })
    }
}

/// What a task is for: a scheduling class, or an actor (a call, or with `create` its creation).
#[derive(Debug)]
struct Target {
    class: usize,
    actor: Option<ActorId>,
    create: Option<Box<ActorSpec>>,
    /// What its value becomes.
    returns: Rets,
    /// The job it belongs to.
    job: Job,
}

impl Target {
    fn call(actor: ActorId, returns: Rets, job: Job) -> Target {
        Target { class: 0, actor: Some(actor), create: None, returns, job }
    }
    fn creation(actor: ActorId, spec: ActorSpec) -> Target {
        let job = Job { id: spec.job, namespace: spec.namespace.as_deref().map(Arc::from) };
        Target { class: 0, actor: Some(actor), create: Some(Box::new(spec)), returns: Rets::One, job }
    }
}

/// What a task's value becomes: one object, objects split from it (`num_returns`), or a
/// stream of objects, one per value it yields (with its back-pressure window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rets {
    One,
    Split(u32),
    Stream(u32),
}

impl Rets {
    /// One object, or `n` split from the value.
    pub fn split(n: Option<u32>) -> Rets {
        n.map_or(Rets::One, Rets::Split)
    }
}

#[derive(Debug, Default)]
struct Class {
    shape: Shape,
    placement: Placement,
    /// Its own class per priority: its own leases, so real-time tasks never wait behind
    /// best-effort ones pushed to a worker, and its own lease requests, served by priority.
    priority: Priority,
    queue: VecDeque<TaskId>,
    leases: Vec<u64>,
    pending_requests: usize,
    /// The job of the tasks last submitted to it (what its lease requests are for, in fair
    /// sharing; the default, 0, is no job).
    job: WorkerId,
}

#[derive(Debug)]
struct Lease {
    worker: WorkerId,
    /// The node that granted it, and the lease's id there.
    node: NodeId,
    theirs: u64,
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

/// A lease request in flight: the node it was sent to and how it was asked there.
#[derive(Debug)]
struct LeaseRequest {
    class: usize,
    node: NodeId,
    placement: Placement,
    depth: u32,
    prefer: Option<NodeId>,
    /// The job of the tasks it is for (the first queued one's when asked).
    job: WorkerId,
}

/// How an owned stored object was made, kept while the object lives so that it can be made
/// again if every copy is lost (lineage reconstruction, DESIGN §8). Its arguments stay held
/// (`submitted`) meanwhile, so that they can be remade too.
#[derive(Debug, Clone)]
struct Lineage {
    function: &'static str,
    /// How many objects the task returns (split or not), and how many of them (entries in
    /// the table) still name this lineage: it goes with the last.
    returns: u32,
    split: bool,
    live: u32,
    /// A streaming task's window (see `TaskEntry::stream`).
    stream: Option<u32>,
    job: Job,
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

/// Where a resolved actor turned out to be.
#[derive(Debug)]
pub(crate) enum Located {
    /// On this worker, which this process is now connected to.
    At(WorkerId),
    /// Its home says it is on this worker, and connecting to it failed (why).
    Unreachable(WorkerId, String),
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
    /// The worker it is on, once this process is connected to it.
    worker: Option<WorkerId>,
    resolving: bool,
    /// The worker it was on when we last lost it (so the daemon does not send us back).
    stale: Option<WorkerId>,
    /// Connections to its worker that failed in a row while its home called it alive: at
    /// two, its waiting calls fail with `ActorUnavailable` rather than wait for ever.
    unreachable: u32,
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
            resolving: false,
            stale: None,
            unreachable: 0,
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

impl OwnerState {
    pub fn new(me: WorkerId, node: NodeId, limits: OwnerLimits) -> OwnerState {
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
            next_lease: 1,
            lease_requests: HashMap::default(),
            node,
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
            preemptions: 0,
            preempted: HashMap::default(),
            failures: 0,
            unread: HashMap::default(),
            failure_waiters: Vec::new(),
            next_failure_waiter: 1,
            streams: HashMap::default(),
            running: None,
            task_events: false,
            notes: Vec::new(),
            notes_gen: 0,
            note_extras: Vec::new(),
            whats: Default::default(),
        }
    }

    /// Nesting depth of the tasks this process submits (one more than the running task's).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    pub fn set_depth(&mut self, depth: u32) {
        self.depth = depth;
    }

    /// The task this worker runs now (`None` between tasks, and in actors, whose calls may
    /// run several at once): what is submitted meanwhile is its child.
    pub fn set_running(&mut self, task: Option<TaskId>) {
        self.running = task;
    }

    /// Task runs repeated, objects made again and task runs preempted so far
    /// (`ferry::recovery_stats`).
    pub fn recovery(&self) -> (u64, u64, u64) {
        (self.retries, self.reconstructions, self.preemptions)
    }

    /// The daemon is short of resources: leases go back as soon as they are idle, those idle
    /// now at once, until [`Self::on_end_recall`].
    pub fn on_recall(&mut self, fx: &mut Effects) {
        self.node_short = true;
        self.return_idle_leases(None, fx);
    }

    pub fn on_end_recall(&mut self) {
        self.node_short = false;
    }

    /// The actor a `ResolveActor` request was about, if it is one of this table's.
    pub fn take_resolve(&mut self, req: u64) -> Option<ActorId> {
        self.actor_resolves.remove(&req)
    }

    /// Whether this process holds borrowed refs not yet registered with their owners.
    pub fn has_unregistered(&self) -> bool {
        !self.unregistered.is_empty()
    }

    /// Whether this process owns anything others may still need: objects (held here or by
    /// borrowers), tasks it submitted, actors it holds or created.
    pub fn owns_anything(&self) -> bool {
        !self.tasks.is_empty()
            || !self.actors.is_empty()
            || !self.lineage.is_empty()
            || self.objects.keys().any(|id| id.owner() == self.me)
    }
}
