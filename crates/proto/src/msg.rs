//! Wire messages, one enum per direction of each kind of connection.
//!
//! | connection            | client sends   | server sends   |
//! |-----------------------|----------------|----------------|
//! | any process → daemon  | [`ToNode`]     | [`FromNode`]   |
//! | process → process     | [`ToWorker`]   | [`FromWorker`] |
//!
//! A process-to-process connection carries tasks an owner pushes to a worker it leased (or to an
//! actor) and a borrower's requests to an owner, and the answers back.
//!
//! Each connection opens with [`Hello`] / [`HelloReply`].

use crate::conn::Addr;
pub use crate::groups::{GroupPhase, GroupView};
use crate::ids::{NodeId, ObjectId, TaskId, WorkerId};
pub use crate::views::{ActorView, NodeStats, ProcView, StorePlace, StoredInfo};
pub use ferry_types::{ActorId, GroupStrategy, Placement, Priority, Shape, CPU};
use serde::{Deserialize, Serialize};

/// The first frame on every connection. It carries no secret: each side proves it holds the
/// cluster token with an HMAC over both sides' fresh nonces (see `conn`), so a listener that
/// is not a node of the cluster (one planted on a free port, a wrong address) learns nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u32,
    /// The connecting process.
    pub from: WorkerId,
    /// Its node (zero for tools): a process whose node is declared dead is lost to its peers
    /// even if its sockets stay open.
    pub node: NodeId,
    /// Fresh randomness the accepting side's proof covers.
    pub nonce: [u8; 32],
}

/// The answers to a [`Hello`] and to a [`HelloProof`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum HelloReply {
    /// The accepting side's nonce, and its proof that it holds the token:
    /// `HMAC-SHA256(token, "ferry-accept" | client nonce | this nonce)`.
    Challenge {
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    Welcome {
        node: NodeId,
    },
    Refused {
        reason: String,
    },
}

/// The connecting side's proof that it holds the token, sent once the other side proved it:
/// `HMAC-SHA256(token, "ferry-connect" | server nonce | client nonce | dialed)`. `dialed` is
/// the address the connecting side's socket reached (`ip:port`, or `unix`): the accepting side
/// checks the proof against the address the connection arrived at, so a relay (a listener that
/// passes the handshake on to a real node) cannot complete it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct HelloProof {
    pub proof: [u8; 32],
    pub dialed: String,
}

/// What kind of process registers with a daemon.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum ProcKind {
    Driver,
    Worker,
    /// Another node's daemon, joining the head (`ferry start --address`) or fetching objects.
    Node,
    /// A driver or worker of another node that holds leases here (spillback) or reads this
    /// node's objects. Its executable, like a driver's, is what workers run here.
    Client,
    /// A command-line tool (`ferry status`, `ferry submit`): runs nothing, gets no task output.
    Tool,
}

/// The job's binary, which workers run: its path on the sender's host and, for a job started
/// by `ferry submit`, its content hash (SHA-256, hex). A node that has no file of that hash
/// fetches it from the head, which keeps every submitted binary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct Program {
    pub path: std::path::PathBuf,
    pub hash: Option<String>,
}

/// A job started by `ferry submit`, as the head lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct JobView {
    pub id: u64,
    /// The program's file name, as `ferry submit` was given it.
    pub name: String,
    pub hash: String,
    pub args: Vec<String>,
    /// 0 while it waits in the queue of jobs (see `JobQueued`).
    pub pid: u32,
    /// Unix time in milliseconds (when it was queued, while it waits).
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// The exit code (`None` while running or if a signal ended it).
    pub code: Option<i32>,
    /// `ferry job stop` (or a Ctrl-C on its `ferry submit`) asked it to stop.
    pub stopped: bool,
    /// Its driver's worker id: the job its tasks belong to in the task history.
    pub driver: WorkerId,
}

impl JobView {
    /// Its status as a word: queued, running, stopping, succeeded, failed or stopped.
    pub fn status(&self) -> &'static str {
        match (self.ended_ms, self.stopped, self.code) {
            (None, false, _) if self.pid == 0 => "queued",
            (None, false, _) => "running",
            (None, true, _) => "stopping",
            (Some(_), true, _) => "stopped",
            (Some(_), false, Some(0)) => "succeeded",
            (Some(_), false, _) => "failed",
        }
    }
}

/// One node as the head sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct NodeView {
    pub node: NodeId,
    /// Where drivers and tools reach its daemon (`host:port`).
    pub addr: String,
    /// The control store (DESIGN §9): it keeps the cluster's tables and runs no work.
    pub head: bool,
    pub alive: bool,
    pub total: Shape,
    pub available: Shape,
    /// Lease requests waiting there: a node with some is busy, whatever it has free at the
    /// moment of its heartbeat.
    pub queued: u64,
    pub workers: u64,
    /// Since its last heartbeat.
    pub silent_ms: u64,
    /// Actors alive on it.
    pub actors: u64,
    /// Objects in its store (in memory or spilled), and their bytes.
    pub objects: u64,
    pub object_bytes: u64,
    pub spilled_bytes: u64,
}

/// Why a copy between nodes (`Pull`) failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum PullError {
    /// This node's store had no room for the copy, even after spilling: the object is fine
    /// where it is (its owner must not make it again).
    StoreFull(String),
    /// It could not be copied (its node is gone, or no longer holds it; the transfer broke).
    Failed(String),
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullError::StoreFull(why) => write!(f, "object store full: {why}"),
            PullError::Failed(why) => f.write_str(why),
        }
    }
}

/// Requests to the node daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum ToNode {
    /// First message after the handshake. `listen` is where owners reach this process.
    /// `exe`: a driver's own executable, which workers run (a node started on its own takes
    /// it from the first driver that joins).
    /// `tcp`: where processes of other nodes reach it (a node with a TCP address).
    /// `node`: the node a `Client` runs on (its processes' links here are closed when that
    /// node is declared dead).
    Register { kind: ProcKind, pid: u32, listen: Addr, tcp: Option<String>, exe: Option<Program>, node: Option<NodeId> },
    /// Ask for a worker for tasks of `shape` at nesting `depth` (the driver's tasks are at
    /// depth 1). Answered by `LeaseGranted`, `LeaseSpillback` (ask that node instead) or
    /// `LeaseInfeasible`. `prefer`: the node holding most of the tasks' argument bytes.
    RequestLease {
        req: u64,
        shape: Shape,
        depth: u32,
        placement: Placement,
        prefer: Option<NodeId>,
        priority: Priority,
        /// The job its tasks belong to (its driver's id), and that job's weight in fair
        /// sharing if the asker knows it (its driver does).
        job: WorkerId,
        weight: Option<u32>,
    },
    /// Give a lease back; the worker becomes idle (or is retired, with `kill`).
    ReturnLease { lease: u64, kill: bool },
    /// The task running in this worker waits in `get`: its CPU may go to other work.
    Blocked,
    /// The waiting task resumes and takes its CPU back.
    Unblocked,
    /// An object was written into the store: into the arena extent at `at` this process
    /// created, or (`None`) into a file of its own; account for it. Answered by `Sealed`.
    Seal { req: u64, object: ObjectId, size: u64, at: Option<u64> },
    /// An extent of the arena to write `size` bytes into, pinned by this process until it
    /// says `Unpin` (or goes). Answered by `Created`.
    Create { req: u64, size: u64 },
    /// Where `object` is in this node's store, pinning its extent if it is in the arena.
    /// Answered by `Pinned`.
    Pin { req: u64, object: ObjectId },
    /// This process no longer views these extents (one entry per pin).
    Unpin { at: Vec<u64> },
    /// Objects no longer referenced by their owner: delete them.
    Free { objects: Vec<ObjectId> },
    /// Ask for the store's and the pool's figures. Answered by `Stats`.
    Stats { req: u64 },
    /// Create an actor (its constructor's arguments already resolved). Answered by
    /// `ActorCreated` once it runs, or failed. The sender holds the actor.
    CreateActor { req: u64, actor: ActorId, spec: ActorSpec },
    /// Reserve `name` for `actor` before creating it. Answered by `Ack`.
    ReserveName { req: u64, name: String, actor: ActorId, class: String },
    /// Where is `actor`? Answered by `ActorState` once it is alive or dead (not while it is
    /// being created or restarted). `stale` is a worker the caller found gone: an answer
    /// naming it waits until the daemon has moved the actor on (or declared it dead).
    ResolveActor { req: u64, actor: ActorId, stale: Option<WorkerId> },
    /// The named actor. Answered by `NamedActor`.
    GetNamedActor { req: u64, name: String },
    /// This process holds a handle of `actor` (the first one it holds). Answered by `Ack`
    /// (an error if the actor is unknown or dead).
    HoldActor { req: u64, actor: ActorId },
    /// After its link to the actor's home closed (the control store restarted): this process
    /// holds `actor` `count` times, on this link. Sets the count (sending it twice is
    /// harmless). Answered by `Ack`.
    HoldActorAgain { req: u64, actor: ActorId, count: u32 },
    /// This process holds no handle of `actor` any more: its `count` holds end.
    ReleaseActor { actor: ActorId, count: u32 },
    /// Counts process `holder` as holding `actor` once more (a task returns a value with a
    /// handle in it: its caller holds the actor from now on). Answered by `Ack`.
    HoldActorFor { req: u64, actor: ActorId, holder: WorkerId },
    /// Stop `actor` now, without restart.
    KillActor { actor: ActorId },
    /// From a worker told to `BecomeActor`: the constructor ran (or failed).
    ActorReady { actor: ActorId, error: Option<String> },
    /// From the worker hosting `actor` (or a host to the actor's home): it ends on purpose
    /// (`ferry::exit_actor`, a handle's `terminate`), for `reason`; it is not restarted.
    ActorExited { actor: ActorId, reason: String },
    /// From an actor's home daemon to another node's: run this actor on one of your workers
    /// and report to `home` (`ActorHosted`, `ActorLost`). `KillActor` stops it.
    /// `exe`: the job's binary, for a node whose workers have none yet.
    HostActor { actor: ActorId, spec: ActorSpec, home: NodeId, exe: Option<Program> },
    /// Whether the head keeps a binary of this hash (answered by `Ack`, an error if not).
    HaveBinary { req: u64, hash: String },
    /// A job's binary: exactly `size` raw bytes follow this frame. Answered by `Ack` once it
    /// is stored (an error if its hash is not `hash`).
    PutBinary { req: u64, hash: String, size: u64 },
    /// Send the binary of this hash: answered by `BinaryData` and its raw bytes.
    FetchBinary { hash: String },
    /// Run the stored binary `hash` with `args` as a job joined to this cluster (its driver).
    /// Answered by `JobStarted`, then `JobOutput` as it prints and `JobEnded`.
    SubmitJob { req: u64, hash: String, name: String, args: Vec<String>, weight: Option<u32> },
    /// The jobs started here (answered by `Jobs`).
    Jobs { req: u64 },
    /// Stop job `job`: its process group is sent SIGTERM, then SIGKILL after a grace
    /// period (answered by `Ack`; its submitter, if still there, gets `JobEnded`).
    StopJob { req: u64, job: u64 },
    /// Job `job`'s output (stdout and stderr as printed) from byte `offset` (answered by
    /// `JobLog`, at most 1 MiB at a time).
    JobLogs { req: u64, job: u64, offset: u64 },
    /// The get, put and transfer spans of `job` the history keeps (answered by `Spans`).
    ListSpans { req: u64, job: WorkerId },
    /// The workers' logs this node keeps, with their sizes (answered by `WorkerLogs`).
    ListWorkerLogs { req: u64 },
    /// A chunk of one worker's log from `offset` (answered by `WorkerLog`).
    ReadWorkerLog { req: u64, worker: WorkerId, offset: u64 },
    /// Task events from a process of this node (or, from a member, of its processes), with
    /// how many its buffer dropped: kept by the cluster's history (the control store's, or a
    /// node's own outside a cluster), to which a member passes them on.
    TaskEvents {
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
        dropped: u64,
    },
    /// The tasks of the history that match, newest first, at most `limit` (answered by
    /// `Tasks`).
    ListTasks { req: u64, filter: crate::state::TaskFilter, limit: u32 },
    /// Counts of tasks by function and state (answered by `TaskSummary`).
    SummarizeTasks { req: u64, job: Option<WorkerId> },
    /// To the control store (or a node alone): make placement group `group` (an id the
    /// program drew) of these bundles; answered by `Ack` at once, placed in the background.
    CreateGroup { req: u64, group: u64, name: String, bundles: Vec<Shape>, strategy: GroupStrategy },
    /// Removes a placement group: its bundles' resources go back, what runs in them is
    /// killed. Answered by `Ack`.
    RemoveGroup { req: u64, group: u64 },
    /// Placement groups as their home knows them: one, or all (answered by `Groups`).
    ListGroups { req: u64, group: Option<u64> },
    /// Between daemons, from a group's home: reserve these bundles of `group` (answered by
    /// `BundlesPrepared`), for round `round` of its placing.
    PrepareBundles { group: u64, round: u64, home: NodeId, bundles: Vec<(u32, Shape)> },
    /// The answer to `PrepareBundles`, from `node`.
    BundlesPrepared { group: u64, round: u64, node: NodeId, ok: bool },
    /// Every bundle prepared: offer their resources, renamed for the group.
    CommitBundles { group: u64, round: u64 },
    /// Give back the bundles of `group` reserved here: those of round `round`, or all.
    ReturnBundles { group: u64, round: Option<u64> },
    /// A write to the store failed for want of space on its filesystem (`ENOSPC`: a small
    /// `/dev/shm`, or other programs' files): spill until `bytes` fit there, then answer
    /// `Room` (with an error if nothing more can be spilled).
    MakeRoom { req: u64, bytes: u64 },
    /// From a worker asked to retire: it owns objects or tasks still in use, so it stays.
    StillInUse,
    /// To an actor's home: its constructor ran (or failed) on `worker` of node `host`,
    /// reached at `addr` (the host may not be the node the home asked: a busy one passes the
    /// actor on to a node with room).
    ActorHosted { actor: ActorId, worker: WorkerId, addr: Addr, error: Option<String>, host: NodeId },
    /// To an actor's home: the worker hosting it died.
    ActorLost { actor: ActorId, reason: String },
    /// From a member that (re)joined the control store: the actors it hosts for it, so a
    /// control store started again re-attaches them instead of starting them anew.
    ActorsHosted { node: NodeId, actors: Vec<(ActorId, WorkerId, Addr)> },
    /// Where this cluster's control store is (answered by `ControlAt`): a member asks the
    /// address it was given, which may be any node of the cluster.
    ControlAddress { req: u64 },
    /// What the node knows of processes and stored objects (for `memory_summary`).
    Inventory { req: u64 },
    /// The actors whose records this node keeps (those created through it), dead ones
    /// included (answered by `Actors`).
    ListActors { req: u64 },
    /// The processes connected to this node (answered by `Procs`).
    ListProcs { req: u64 },
    /// Every object in this node's processes' tables and its store, and why each is alive:
    /// the node asks each process (answered by `Memory`).
    Memory { req: u64 },
    /// Asks a node started on its own (`ferry start`) to stop.
    StopNode,
    /// From a node joining the head: who it is and what it has (answered by `Ack`).
    JoinCluster { req: u64, node: NodeId, addr: String, total: Shape },
    /// From a member node, every heartbeat interval; answered by `Cluster` (req 0), the
    /// head's view of every node, which the member schedules with.
    Heartbeat { node: NodeId, stats: NodeStats },
    /// Copy `object` (stored on node `from`) into this node's store. Answered by `Pulled`
    /// once it is here; concurrent pulls of one object share one transfer.
    Pull { req: u64, object: ObjectId, from: NodeId },
    /// From another node's daemon (`node`, which keeps the copy until the object is freed):
    /// send `object`'s bytes. Answered by `ObjectData`, followed
    /// on the connection by exactly `size` raw bytes (not a frame).
    FetchObject { object: ObjectId, node: NodeId },

    /// Every node of the cluster (answered by `Cluster`; a member answers with the head's
    /// last view).
    ClusterStatus { req: u64 },
    /// Lines a worker's tasks printed (`stderr`: on standard error), each already prefixed
    /// with the task or actor and the process; the daemon passes them to the drivers.
    /// `node`: set when a member passes its workers' lines on to the head (which passes them
    /// to its drivers and to the other members').
    Log { stderr: bool, lines: Vec<String>, node: Option<NodeId> },
}

impl ToNode {
    /// The registration of a connection that runs no tasks and owns nothing: a tool, or
    /// another node's daemon.
    pub fn register_tool(kind: ProcKind) -> ToNode {
        ToNode::Register {
            kind,
            pid: std::process::id(),
            listen: Addr::Tcp(String::new()),
            tcp: None,
            exe: None,
            node: None,
        }
    }
}

/// How to create (and re-create) an actor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct ActorSpec {
    /// Registered id of the actor's type.
    pub class: String,
    /// The constructor's arguments, by value.
    pub args: Vec<Arg>,
    /// Resources held for the actor's whole life.
    pub shape: Shape,
    pub name: Option<String>,
    /// Outlives its creator; stops only when killed.
    pub detached: bool,
    pub max_restarts: u32,
    /// Calls run at once on this many threads (1: one at a time, in order).
    pub max_concurrency: u32,
    /// Nesting depth of the creator, for lease priority.
    pub depth: u32,
    /// Which node runs it (as for tasks; `Here` is not used).
    pub placement: Placement,
    /// The job it belongs to (its creator's), and its namespace (`None`: the job's anonymous
    /// one).
    pub job: WorkerId,
    pub namespace: Option<String>,
    /// How urgent its creation is, and whether its worker may be suspended for real-time
    /// work (best-effort) like a best-effort task's.
    pub priority: Priority,
}

/// Where an actor is, as the daemon knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum ActorLocation {
    Alive { worker: WorkerId, addr: Addr, incarnation: u32 },
    Dead { reason: String },
}

/// Messages from the node daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum FromNode {
    Registered {
        node: NodeId,
        worker: WorkerId,
        /// The node's directories (a driver that joined by address learns them here).
        session_dir: std::path::PathBuf,
        store_dir: std::path::PathBuf,
        spill_dir: Option<std::path::PathBuf>,
    },
    LeaseGranted {
        req: u64,
        lease: u64,
        worker: WorkerId,
        addr: Addr,
    },
    /// This node will not run it: ask `node` (at `addr`) with `Placement::Here`.
    LeaseSpillback {
        req: u64,
        node: NodeId,
        addr: String,
    },
    /// The answer to `Pull`.
    Pulled {
        req: u64,
        error: Option<PullError>,
    },
    /// The answer to `FetchBinary`: `size` raw bytes follow, or the error says why not.
    BinaryData {
        size: u64,
        error: Option<String>,
    },
    /// The answer to `SubmitJob` while as many jobs run as the head allows
    /// (`FERRY_MAX_RUNNING_JOBS`): job `job` waits, `ahead` jobs before it; `JobStarted`
    /// follows when it starts.
    JobQueued {
        req: u64,
        job: u64,
        ahead: u32,
    },
    JobStarted {
        req: u64,
        job: u64,
        pid: u32,
    },
    /// What the job printed (`stderr`: on standard error).
    JobOutput {
        job: u64,
        stderr: bool,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    JobEnded {
        job: u64,
        code: Option<i32>,
        detail: String,
    },
    Jobs {
        req: u64,
        jobs: Vec<JobView>,
    },
    /// The answer to `ListTasks`: the records, how many matched in all, and the history's
    /// own figures (`None`: this node keeps no history: ask its control store).
    Tasks {
        req: u64,
        tasks: Vec<crate::state::TaskRecord>,
        matched: u64,
        stats: Option<crate::state::HistoryStats>,
    },
    /// The answer to `SummarizeTasks`.
    TaskSummary {
        req: u64,
        rows: Vec<crate::state::TaskSummaryRow>,
        stats: Option<crate::state::HistoryStats>,
    },
    /// The answer to `JobLogs`: the bytes from the offset asked, the offset after them, and
    /// whether the job has ended (then there is no more than this).
    JobLog {
        req: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        next: u64,
        ended: bool,
        error: Option<String>,
    },
    /// The answer to `MakeRoom`.
    Room {
        req: u64,
        error: Option<String>,
    },
    /// To an idle worker beyond the warm pool: exit, unless you own objects or tasks still in
    /// use (then answer `StillInUse`).
    RetireIfIdle,
    /// The answer to `ControlAddress` (`None`: this node is in no cluster).
    ControlAt {
        req: u64,
        addr: Option<String>,
    },
    /// The answer to `FetchObject`: `size` raw bytes follow, or the error says why not.
    ObjectData {
        object: ObjectId,
        size: u64,
        error: Option<String>,
    },
    /// No node can ever satisfy `shape`: tasks of that shape fail with this reason.
    LeaseInfeasible {
        req: u64,
        reason: String,
    },
    /// The daemon is short of resources: return leases that have nothing to do, now and
    /// whenever one goes idle, until `EndRecall`.
    RecallIdleLeases,
    /// The daemon is no longer short: idle leases may be kept for reuse again.
    EndRecall,
    /// The answer to `ListGroups`.
    Groups {
        req: u64,
        groups: Vec<GroupView>,
    },
    /// A worker process exited; owners fail or retry what they had pushed to it.
    WorkerDied {
        worker: WorkerId,
        reason: String,
    },
    /// Fair sharing: give lease `lease` back once the task running on it ends (push it no
    /// more); another job waits for less than its share of the node.
    GiveBackLease {
        lease: u64,
    },
    /// To the holder of a lease on `worker`: the node took it back (reset preemption, for
    /// real-time work or, with `memory`, to free memory; `detail` says why). The worker is
    /// stopped and is killed once the lease comes back (`ReturnLease`), or soon anyway; what
    /// it ran is run again without charging a retry, up to the task's bound.
    Preempted {
        worker: WorkerId,
        memory: bool,
        detail: String,
    },
    Sealed {
        req: u64,
        error: Option<String>,
    },
    /// An extent for `Create` and the arena's epoch to prepare it with, or `None`: no free
    /// extent is large enough, write a file of its own.
    Created {
        req: u64,
        at: Option<u64>,
        epoch: u64,
    },
    /// Where a pinned object is: `None`, not in this node's store.
    Pinned {
        req: u64,
        place: Option<StorePlace>,
    },
    ActorCreated {
        req: u64,
        actor: ActorId,
        error: Option<String>,
    },
    /// The answer to `ReserveName` and `HoldActor`.
    Ack {
        req: u64,
        error: Option<String>,
    },
    ActorState {
        req: u64,
        actor: ActorId,
        location: ActorLocation,
    },
    NamedActor {
        req: u64,
        found: Option<(ActorId, String)>,
    },
    /// An actor's process died; `restarting` says whether a new incarnation is coming.
    ActorDied {
        actor: ActorId,
        reason: String,
        restarting: bool,
    },
    /// To a worker: construct this actor and serve its calls from now on.
    BecomeActor {
        actor: ActorId,
        spec: ActorSpec,
        /// 1 for its first process, one more for each restart.
        incarnation: u32,
    },
    Stats {
        req: u64,
        stats: NodeStats,
    },
    Cluster {
        req: u64,
        nodes: Vec<NodeView>,
    },
    /// The control store's answer to a heartbeat: itself, and the nodes whose views changed
    /// since it last answered this member (every node in its first answer).
    ClusterChanges {
        nodes: Vec<NodeView>,
    },
    /// The head found a node silent past the heartbeat timeout: it is dead.
    NodeDied {
        node: NodeId,
        silent_ms: u64,
    },
    /// Lines printed by tasks of this node's workers, to show on the driver's terminal.
    Log {
        node: NodeId,
        stderr: bool,
        lines: Vec<String>,
    },
    /// These objects of yours were spilled to disk: drop your mappings of them so that
    /// their memory is freed.
    Spilled {
        objects: Vec<ObjectId>,
    },
    Inventory {
        req: u64,
        processes: Vec<WorkerId>,
        objects: Vec<StoredInfo>,
    },
    Actors {
        req: u64,
        actors: Vec<ActorView>,
    },
    /// `None`: this node keeps no history (its control store does).
    Spans {
        req: u64,
        spans: Option<Vec<crate::state::Span>>,
    },
    /// Each worker's log kept here: the worker, its bytes, and whether it still runs.
    WorkerLogs {
        req: u64,
        logs: Vec<(WorkerId, u64, bool)>,
    },
    /// A chunk of a worker's log (`ended`: the worker is gone, nothing more will come).
    WorkerLog {
        req: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        next: u64,
        ended: bool,
        error: Option<String>,
    },
    Procs {
        req: u64,
        procs: Vec<ProcView>,
    },
    /// Every process's table entries (`refs`), its unfinished tasks, the store's objects,
    /// and the processes that did not answer.
    Memory {
        req: u64,
        refs: Vec<RefInfo>,
        pending_tasks: u64,
        stored: Vec<StoredInfo>,
        unreachable: Vec<WorkerId>,
    },
}

/// A task argument as the executing worker receives it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum Arg {
    /// The encoded value itself (small values, passed by value).
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A large value in the shared-memory store of `node`.
    Stored { object: ObjectId, size: u64, node: NodeId },
}

/// Everything a worker needs to run one task.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct TaskSpec {
    pub task: TaskId,
    /// Registered id of the function (its path in the job's binary); never code.
    pub function: String,
    pub args: Vec<Arg>,
    /// Nesting depth: 1 for tasks the driver submits, one more for each level below.
    pub depth: u32,
    /// `None`: its value is its one return object. `Some(n)` (`num_returns`): the value is
    /// split (a tuple by its elements, a `Vec` by its items) into objects `0..n` of the task.
    pub num_returns: Option<u32>,
    /// The job it belongs to: the driver whose work it is (nested tasks inherit it), and
    /// the namespace of its names (`None`: the job's anonymous one).
    pub job: WorkerId,
    pub namespace: Option<String>,
    /// Runs before this one that failed or were lost (0 on the first run).
    pub attempt: u32,
    /// What it holds while it runs; `None` is one CPU (the default, sent as one byte).
    pub resources: Option<Shape>,
    /// A streaming task (a generator): its values go to the owner one by one as
    /// [`FromWorker::Streamed`], as objects `0, 1, ..` of the task.
    pub stream: Option<StreamSpec>,
    /// Its owner records task events: the worker says when it ran (`FromWorker::Done`'s
    /// `ran`), and that it runs if it runs for long.
    pub timed: bool,
}

/// How a streaming task may run ahead of its consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct StreamSpec {
    /// Values produced and not yet taken by the consumer, at most (back-pressure).
    pub window: u32,
    /// Values the consumer has taken already (a run after a retry starts there).
    pub taken: u32,
}

/// From an owner to a worker it holds a lease on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum ToWorker {
    /// Run these tasks, in order.
    Push(Vec<TaskSpec>),
    /// Drop this task if it has not started.
    /// Cancel `task`: dropped if not started; if running, it is told (`is_cancelled`, and a
    /// `get` it waits in returns `Cancelled`); with `force`, the worker hands back the tasks
    /// it has not started and exits.
    /// With `recursive`, the tasks it submitted are cancelled too (by the worker, which owns
    /// them), and theirs in turn.
    Cancel { task: TaskId, force: bool, recursive: bool },
    /// From a borrower to an owner: cancel the task that makes `object` (as `Cancel`).
    CancelObject { object: ObjectId, force: bool, recursive: bool },
    /// Hand back up to `max` of this owner's tasks that have not started (the owner has an
    /// idle worker for them). Answered by `Stolen`.
    Steal { max: u32 },
    /// From a borrower to an owner: the object's value or location, answered by
    /// [`FromWorker::Object`] once the object is final.
    GetObject { object: ObjectId },
    /// From a borrower that could not read `object` from `node` (its copy there is lost):
    /// make it again if that was its only copy, and answer with [`FromWorker::Object`] once
    /// it is final again (or with the error if it cannot be made again).
    Remake { object: ObjectId, node: NodeId },
    /// `ferry::free` of objects the receiver owns, called in process `by`: their values go
    /// now, and a `get` of one says so.
    FreeObjects { objects: Vec<ObjectId>, by: WorkerId },
    /// Count `borrower` as holding each object once more (answered by [`FromWorker::Ack`]).
    AddBorrower { req: u64, objects: Vec<ObjectId>, borrower: WorkerId },
    /// The sender no longer holds these objects; each count is how many registrations of
    /// the sender as a borrower it ends.
    ReleaseBorrows { objects: Vec<(ObjectId, u32)> },
    /// List the objects in this process's table (for `memory_summary`).
    Summary { req: u64 },
    /// The consumer of streaming task `task` has taken `taken` of its values: it may
    /// produce up to `taken + window`.
    StreamTaken { task: TaskId, taken: u32 },
}

/// What an owner says about an object a borrower asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum ObjectAnswer {
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    Stored {
        size: u64,
        node: NodeId,
    },
    /// The object failed, with this error (as its owner has it).
    Failed(crate::error::Error),
    /// The owner has no such object (freed, or never existed).
    Unknown,
}

/// One object in a process's table, as `memory_summary` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct RefInfo {
    pub object: ObjectId,
    /// The process whose table this is.
    pub holder: WorkerId,
    pub owned: bool,
    /// "pending", "inline", "stored" or "failed".
    pub state: String,
    pub size: u64,
    pub local: u32,
    pub submitted: u32,
    /// Objects (values) that contain this ref.
    pub contained_in: u32,
    /// Processes borrowing it (owned objects only).
    pub borrowers: u32,
}

impl RefInfo {
    /// Why an object with these counts over every process's table is alive, in words
    /// (`memory_summary`, `ferry memory`); empty if none of them holds it.
    pub fn reasons(local_refs: u32, borrowers: u32, task_args: u32, contained_in: u32) -> Vec<String> {
        let mut r = Vec::new();
        if local_refs > 0 {
            r.push(format!("{local_refs} local ref(s)"));
        }
        if borrowers > 0 {
            r.push(format!("borrowed by {borrowers} process(es)"));
        }
        if task_args > 0 {
            r.push(format!("argument of {task_args} pending task(s)"));
        }
        if contained_in > 0 {
            r.push(format!("contained in {contained_in} object(s)"));
        }
        r
    }
}

/// A task's return value as the worker reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum Return {
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Written to the store of the worker's node and sealed there.
    Stored {
        size: u64,
        node: NodeId,
    },
}

/// Why a task produced no value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum TaskError {
    /// The function panicked.
    Panicked { function: String, message: String },
    /// The worker's binary has no function with this id.
    UnknownFunction { function: String },
    /// An argument did not decode as the type the function takes.
    BadArgument { function: String, index: usize, detail: String },
    /// The return value did not encode.
    BadReturn { function: String, detail: String },
    /// The return value encoded but could not be stored: the store is full (`store_full`), or
    /// the node could not be reached.
    ReturnNotStored { function: String, detail: String, store_full: bool },
    /// An argument in the store could not be read.
    ArgumentUnavailable { function: String, detail: String },
    /// Cancelled before it started.
    Cancelled,
}

/// From a worker to the owner that pushed it tasks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum FromWorker {
    Done {
        task: TaskId,
        returns: Vec<Return>,
        /// Refs inside the return value: the caller keeps them alive while the value lives.
        /// Those it does not own are already registered with their owners as borrowed by it.
        contained: Vec<ObjectId>,
        /// Actors whose handles are inside the return value (with their labels): the daemon
        /// already counts the caller as holding each once more, for the value.
        actors: Vec<(ActorId, String)>,
        /// When it started and ended on the worker (Unix microseconds), if task events are on.
        ran: Option<(u64, u64)>,
    },
    Failed {
        task: TaskId,
        error: TaskError,
    },
    /// These tasks were pushed but never started (the worker blocked); submit them again.
    Requeued {
        tasks: Vec<TaskId>,
    },
    /// The answer to `Steal`: these tasks will not run here (possibly none).
    Stolen {
        tasks: Vec<TaskId>,
    },
    /// Sent before a task's reply: objects owned by the receiver that this worker still
    /// holds after the task; the receiver counts it as their borrower once more.
    Retained {
        objects: Vec<ObjectId>,
    },
    /// A streaming task's value number `index` (sent in order, before its reply): it is
    /// object `index` of the task. `contained` and `actors` as in `Done`.
    Streamed {
        task: TaskId,
        index: u32,
        value: Return,
        contained: Vec<ObjectId>,
        actors: Vec<(ActorId, String)>,
    },
    /// The answer to [`ToWorker::GetObject`].
    Object {
        object: ObjectId,
        answer: ObjectAnswer,
    },
    Ack {
        req: u64,
    },
    Summary {
        req: u64,
        refs: Vec<RefInfo>,
        /// Tasks this process submitted that are not finished.
        tasks: u64,
    },
}

/// An `ObjectRef` inside a value: the object's id (which names its owner) and, in a
/// cluster, where its owner listens on TCP, so that a process on any node can reach it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct RefWire {
    pub id: ObjectId,
    pub owner: Option<std::net::SocketAddr>,
}

/// An actor handle inside a value: the actor, its type (checked when decoded into a handle
/// of a type) and its label (for errors and logs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct HandleWire {
    pub actor: ActorId,
    pub class: String,
    pub label: String,
}
