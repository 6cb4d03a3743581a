//! The node daemon: one per host. It owns the worker pool (processes started from the job's
//! binary in worker mode), grants leases on them to owners, and keeps the accounts of the
//! node's shared-memory store.
//!
//! The daemon is a library: [`start`] runs it on threads inside any process (the driver of
//! an embedded local cluster, or the `ferry` CLI), and [`NodeHandle::shutdown`] stops it and
//! every process it started.
//!
//! Threads: one accepts connections; one per connection reads requests; one (the spawner)
//! starts, kills and reaps worker processes and ticks the scheduler's clock. All share
//! [`State`] behind one mutex; the scheduling policy itself is `ferry_sched::Scheduler`.
//!
//! **Architecture Invariant:** the daemon is off the task path. It sees a lease request per
//! burst of tasks of one shape, never a task; owners push tasks straight to workers.
//!
//! Shutdown order: stop accepting, kill every worker (they also die with the daemon's
//! spawner thread through `PR_SET_PDEATHSIG`, which each worker sets on itself first thing,
//! and exit when their daemon connection closes), close connections, delete the store and
//! socket directories.
//!
//! Workers are started with `posix_spawn` (no `pre_exec` hook, so std does not `fork`): a
//! fork copies the page tables of a process that may hold thousands of threads, and made
//! starting the thousandth actor forty times slower than the first.

use ferry_types::sync::{CondvarExt, MutexExt};
mod actors;
pub mod client;
mod conns;
pub mod control;
mod groups;
pub mod history;
pub mod jobs;
pub mod launch;
mod members;
pub mod memory;
mod pool;
pub mod pressure;
mod store;
mod tables;
pub mod timeline;
mod transfer;
mod views;
pub mod worker_logs;

use actors::{ActorRec, ACTOR_CONN};
use ferry_proto::conn::{accept, Addr, Conn, Stream};
use ferry_proto::listen::{accept_loop as accept_loop_on, wake_pair, Admission, Gate, Limits, Listener, Wake, WakeRx};
use ferry_proto::msg::{
    ActorId, FromNode, JobView, NodeStats, Placement, ProcKind, Program, Shape, StoredInfo, ToNode, CPU as CPU_NAME,
};
use ferry_proto::{FrameError, NodeId, ObjectId, WorkerId};
use ferry_sched::{Action, ConnId, PoolOptions, Scheduler};
use ferry_store::{ObjectTable, StoreDir};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a request waits here before rebalancing may send it to a node with room.
const MOVE_AFTER: Duration = Duration::from_millis(50);

/// Everything a daemon needs to start. (Its `Debug` leaves the token out.)
#[derive(Clone)]
pub struct NodeOptions {
    /// Directory for the daemon's and workers' sockets (private to the cluster's user).
    pub session_dir: PathBuf,
    /// Directory of the shared-memory store (on tmpfs).
    pub store_dir: PathBuf,
    pub store_capacity: u64,
    /// Where objects spill when the store is full (on disk); `None` turns spilling off.
    pub spill_dir: Option<PathBuf>,
    /// The cluster token every connection must present.
    pub token: String,
    pub resources: Shape,
    pub pool: PoolOptions,
    /// The program started in worker mode (the job's own binary).
    /// `None` for a node started on its own: the first driver to register gives its own
    /// executable (workers run the job's binary).
    pub worker_program: Option<PathBuf>,
    /// Also listen on this TCP address (`host:port`; port 0 picks one), for drivers and tools
    /// that join by address.
    pub tcp: Option<String>,
    /// Set on the control store: other nodes may join it, and one silent this long is dead.
    pub head_timeout: Option<Duration>,
    /// The control store (DESIGN §9) runs as a node of its own that hosts no work: it keeps
    /// membership, names and the actors homed at it, and is never chosen to run anything, so
    /// it can be killed and started again while every other node goes on.
    pub control_only: bool,
    /// Set on a member: the head's address (`host:port`) to join, and how often to send it a
    /// heartbeat.
    pub join: Option<(String, Duration)>,
    /// On a member: how long it goes on without reaching the control store before it stops
    /// by itself (its head is gone for good).
    pub head_grace: Duration,
    /// On the control store: where its tables persist; on the head node: where submitted
    /// binaries and the jobs' records persist (started again on the same directory, they find
    /// them).
    pub state_dir: Option<PathBuf>,
    /// Extra environment for workers (the job's configuration).
    pub worker_env: Vec<(String, String)>,
    pub max_frame: u32,
    /// What the node watches of its memory, and when it preempts to free some.
    pub memory_watch: pressure::Watch,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("session_dir", &self.session_dir)
            .field("store_dir", &self.store_dir)
            .field("store_capacity", &self.store_capacity)
            .field("spill_dir", &self.spill_dir)
            .field("token", &"<redacted>")
            .field("resources", &self.resources)
            .field("pool", &self.pool)
            .field("worker_program", &self.worker_program)
            .field("tcp", &self.tcp)
            .field("head_timeout", &self.head_timeout)
            .field("control_only", &self.control_only)
            .field("join", &self.join)
            .field("head_grace", &self.head_grace)
            .field("state_dir", &self.state_dir)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

pub use ferry_proto::layout::{socket_of, worker_env, NODE_SOCKET};
pub use groups::PREPARED_TIMEOUT;

pub(crate) struct ConnInfo {
    pub(crate) conn: Arc<Conn>,
    /// The id the peer gave in its hello.
    from: WorkerId,
    /// Set once a worker process registered on this connection.
    worker: Option<WorkerId>,
    /// Nothing but `Register` is accepted before it, and nothing is broadcast to it.
    pub(crate) registered: bool,
    /// What registered on it.
    kind: Option<ProcKind>,
    /// Accepted on the TCP listener: the peer may be on another host, so the addresses it is
    /// given are TCP ones.
    via_tcp: bool,
    /// The node a registered process runs on (as it said).
    node: Option<NodeId>,
    /// Where a registered driver or worker is reached by other processes (its TCP address
    /// for one on another host), and its pid as it said.
    listen: Option<Addr>,
    pid: Option<u32>,
}

struct State {
    /// The worker pool (`pool`).
    pool: Pool,
    store: ObjectTable,
    conns: HashMap<ConnId, ConnInfo>,
    next_conn: ConnId,
    /// Actors this node keeps the entries of, or hosts (`actors`).
    actors: HashMap<ActorId, ActorRec>,
    book: ActorBook,
    /// The other nodes (`members`).
    cluster: Cluster,
    /// Writers waiting for room in the store (`store`).
    room: Room,
    /// Objects copied between nodes (`transfer`).
    copies: Copies,
    /// Lease requests waiting for a node, or that may move to one (`pool`).
    placing: Placing,
    /// Placement groups homed here, and bundles reserved here.
    groups: groups::Groups,
    /// Jobs started with `ferry submit` (on a head).
    jobs: Vec<JobView>,
    /// Jobs given a slot to run (`FERRY_MAX_RUNNING_JOBS`) and not yet started: they count
    /// as running, so concurrent submissions cannot all take the last slot.
    starting_jobs: usize,
    /// Connections with messages queued while the state was locked: written once it is
    /// released (see [`StateGuard`]).
    outbox: std::cell::RefCell<Vec<Arc<Conn>>>,
}

/// The worker processes and the scheduler that leases them.
struct Pool {
    sched: Scheduler,
    /// Registered workers: their connection and where owners reach them (on this host, and
    /// from other hosts).
    workers: HashMap<WorkerId, (ConnId, Addr, Option<String>)>,
    /// Workers started by the spawner and not yet registered.
    expected: HashSet<WorkerId>,
    /// Workers of an earlier job's binary: stopped when their lease comes back.
    retired: HashSet<WorkerId>,
    /// The worker last reset to free memory, until it is gone (one victim at a time), what
    /// the memory was when it was chosen, and resets for memory so far.
    memory_victim: Option<WorkerId>,
    pressure: String,
    memory_resets: u64,
    /// Why workers this node is killing are killed (reset), for their actors' death reasons.
    kill_reasons: HashMap<WorkerId, String>,
}

/// A lease request waiting for a node that can fit it: its connection, id, shape, depth,
/// placement, priority and job.
type Waiting = (ConnId, u64, Shape, u32, Placement, (ferry_types::Priority, ferry_sched::Share));

/// Lease requests on their way to a node.
struct Placing {
    /// Lease requests no node alive can fit, waiting for one that can.
    infeasible: Vec<Waiting>,
    /// Queued requests that may go to another node, and since when they wait: leases of
    /// default placement asked here first, and workers for actors homed here. Requests with a
    /// node affinity, or sent here by another node, stay.
    movable: HashMap<(ConnId, u64), Instant>,
    next_rebalance: Instant,
    /// For `Placement::Spread`, and the random draws of spillback.
    rr: u64,
    rand: u64,
}

/// What the daemon keeps about actors besides their records.
struct ActorBook {
    names: HashMap<String, ActorId>,
    /// Lease requests made for actors, by the scheduler's request id.
    reqs: HashMap<u64, ActorId>,
    next_req: u64,
    /// Which actor each actor worker hosts.
    worker_actor: HashMap<WorkerId, ActorId>,
    /// Holds of actors made for processes not connected yet (`HoldActorFor` from another
    /// node's worker for its caller): attached when they connect.
    pending_holds: HashMap<WorkerId, Vec<ActorId>>,
    /// Actors sent to other nodes to host and not yet running there: their resources count
    /// as taken in this node's view of those nodes (which lags by a heartbeat).
    pending_hosts: HashMap<ActorId, (NodeId, Shape, Option<Instant>)>,
    /// Actors no node alive can host, waiting for one that can.
    waiting: Vec<ActorId>,
    /// On a control store started again: actors loaded from its tables whose hosts have not
    /// re-reported them yet, and when they are started anew if none does.
    recovering: HashMap<ActorId, Instant>,
    /// Dead actors' records (tombstones, for `ferry list actors` and for late callers, who
    /// learn why it died), oldest first: past `dead_kept`, the oldest are forgotten, so a
    /// cluster that makes actors for ever keeps bounded memory (Ray keeps 100,000 too).
    dead: std::collections::VecDeque<ActorId>,
    dead_kept: usize,
    /// Resolves parked because their caller lost a worker this node still calls alive, and
    /// until when (see `resolve_actor`).
    parked: HashMap<ActorId, Instant>,
}

/// The cluster as this node knows it.
struct Cluster {
    /// The nodes that joined this head.
    members: HashMap<NodeId, members::Member>,
    /// On a member: the other nodes as the head last described them.
    view: Vec<ferry_proto::msg::NodeView>,
    /// On the control store: the last change of each member's view, by change number
    /// (`members::publish`), and the last number given.
    changes: std::collections::BTreeMap<u64, NodeId>,
    change_seq: u64,
}

/// Back-pressure on writers to the store.
struct Room {
    /// Seals answered once the store is back under its capacity (back-pressure on `put`
    /// and on task returns).
    seals: Vec<(ConnId, u64, ObjectId)>,
    /// Writers that found the store's filesystem full: who to answer, the bytes each needs
    /// there, and how many bytes must still be spilled for it (its shortfall when it asked).
    writers: Vec<(RoomWaiter, u64, u64)>,
    /// Bytes spilled so far, and the time their copies took.
    spilled: (u64, Duration),
}

/// Objects copied between nodes.
struct Copies {
    /// Transfers in flight: who waits for each object.
    pulls: HashMap<ObjectId, Vec<(ConnId, u64)>>,
    /// Nodes that took copies of objects stored here (told when they are freed).
    taken: HashMap<ObjectId, Vec<NodeId>>,
    /// Transfers out and in, and their bytes.
    counts: (u64, u64, u64, u64),
}

/// The locked state. Messages sent while it is held are queued on their connections, in the
/// order of the changes they report, and written when it is released: a peer that reads
/// slowly (a write may wait up to its 5 s timeout) then stalls only the thread that writes to
/// it, never the daemon.
pub(crate) struct StateGuard<'a>(Option<std::sync::MutexGuard<'a, State>>);

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.0.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_mut().expect("held until dropped")
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        let Some(g) = self.0.take() else { return };
        let touched = std::mem::take(&mut *g.outbox.borrow_mut());
        drop(g);
        for c in touched {
            // A failed write means the peer is gone; its reader thread cleans up.
            let _ = c.flush();
        }
    }
}

impl State {
    /// Queues `msg` on `conn`, to be written once the state is released.
    fn queue<T: serde::Serialize>(&self, conn: &Arc<Conn>, msg: &T) {
        if conn.queue(msg).is_ok() {
            let mut o = self.outbox.borrow_mut();
            if !o.last().is_some_and(|l| Arc::ptr_eq(l, conn)) {
                o.push(conn.clone());
            }
        }
    }
}

/// Who waits for room on the store's filesystem: a process (answered with `Room`), or a
/// thread of this daemon (a transfer into the store), by a number of its own.
enum RoomWaiter {
    Conn(ConnId, u64),
    Local(u64, mpsc::SyncSender<Option<String>>),
}

enum SpawnCmd {
    Start,
    Kill(WorkerId),
    Shutdown,
}

struct Node {
    id: NodeId,
    opts: NodeOptions,
    state: Mutex<State>,
    spawn_tx: Mutex<mpsc::Sender<SpawnCmd>>,
    /// Wakes the spill thread (`None` stops it).
    spill_tx: Mutex<mpsc::Sender<Option<()>>>,
    /// Workers' output to their log files (`worker_logs`).
    worker_logs: Mutex<mpsc::Sender<worker_logs::Lines>>,
    /// The program workers run (set by the first driver on a node started on its own), and
    /// its content hash when known (passed on to workers, who pass it to other nodes).
    program: Mutex<Option<PathBuf>>,
    program_hash: Mutex<Option<String>>,
    /// The head's persisted tables.
    tables: Option<tables::Tables>,
    /// The scheduler's first actions (prestarting workers), held until there is a program.
    deferred: Mutex<Vec<Action>>,
    /// Set when a client asks the node to stop.
    stop_requested: (Mutex<bool>, std::sync::Condvar),
    tcp_addr: Option<std::net::SocketAddr>,
    /// Messages to other nodes' daemons (see `transfer::links`).
    links_tx: Mutex<mpsc::Sender<(NodeId, String, ToNode)>>,
    /// On a member: its link to the control store, once joined, and that store's address.
    head_link: Mutex<Option<Arc<Conn>>>,
    /// The cluster's task history, if this node keeps it (see [`history`]): a lock of its
    /// own, so that recording tasks never waits on, or holds up, the node's state.
    history: Arc<history::Shared>,
    control_addr: Mutex<Option<String>>,
    stopping: AtomicBool,
    /// Pids of live workers, for the last-resort cleanup at process exit.
    pids: Mutex<HashMap<WorkerId, u32>>,
    /// The session's directories, locked while the daemon lives (released when they are
    /// removed at shutdown, or by the kernel if the process dies first).
    dirs: Mutex<Vec<ferry_os::SessionDir>>,
    /// Stop the accept loops.
    wakes: Mutex<Vec<Wake>>,
}

impl Node {
    fn program(&self) -> Option<PathBuf> {
        self.program.locked().clone()
    }
    /// The program as other nodes are told of it (with its hash, so they can fetch it).
    fn program_spec(&self) -> Option<Program> {
        let hash = self.program_hash.locked().clone();
        self.program().map(|path| Program { path, hash })
    }
}

/// A running daemon.
pub struct NodeHandle {
    node: Arc<Node>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").field("id", &self.node.id).finish()
    }
}

/// Starts a node daemon on background threads.
pub fn start(opts: NodeOptions) -> io::Result<NodeHandle> {
    if opts.token.len() < ferry_proto::conn::MIN_TOKEN_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the cluster token has {} characters, fewer than {}: a stranger can guess a short token offline \
                 from one handshake; leave FERRY_TOKEN (Config::token) unset and ferry makes a random one, or give \
                 32 random hex digits or more",
                opts.token.len(),
                ferry_proto::conn::MIN_TOKEN_LEN
            ),
        ));
    }
    ferry_os::raise_fd_limit();
    // Made new (never adopted) and locked for the daemon's life: see `ferry_os::SessionDir`.
    let mut dirs = vec![ferry_os::SessionDir::create_at(&opts.session_dir)?];
    dirs.push(ferry_os::SessionDir::create_at(&opts.store_dir)?);
    let mut store = StoreDir::open(&opts.store_dir);
    if let Some(spill) = &opts.spill_dir {
        if !spill.starts_with(&opts.session_dir) {
            // In a directory the user named, which may be shared: its parent is made if
            // missing (private), and swept of this user's spill directories of dead sessions.
            if let Some(root) = spill.parent() {
                if !root.exists() {
                    ferry_os::private_dir_all(root)?;
                }
                ferry_os::sweep(root, "ferry-spill-");
            }
            dirs.push(ferry_os::SessionDir::create_at(spill)?);
        } else {
            std::fs::DirBuilder::new().mode(0o700).create(spill)?;
        }
        store = store.with_spill(spill);
    }
    // Objects go to the arena unless FERRY_STORE_ARENA=0 (each to a file of its own, as
    // before the arena: for comparisons).
    let objects = match ferry_types::defaults::env::<u8>("FERRY_STORE_ARENA") {
        Some(0) => ObjectTable::new(store, opts.store_capacity),
        _ => ObjectTable::with_arena(store, opts.store_capacity)?,
    };
    let sock = opts.session_dir.join("node.sock");
    let listener = UnixListener::bind(&sock)?;
    let tcp = match &opts.tcp {
        Some(a) => Some(std::net::TcpListener::bind(a)?),
        None => None,
    };
    let tcp_addr = match &tcp {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let (sched, actions) = Scheduler::new(&opts.resources, opts.pool.clone());
    let file = if opts.control_only { "control.redb" } else { "jobs.redb" };
    let tables = match &opts.state_dir {
        Some(d) => Some(
            tables::Tables::open(d, file)
                .map_err(|e| io::Error::other(format!("control store in {}: {e}", d.display())))?,
        ),
        None => None,
    };
    // A node with a state directory keeps its id across restarts: the control store's is in
    // the home tag of its actors' ids, the head node's in the membership table.
    let id = match &tables {
        Some(c) => c.node_id().map_err(|e| io::Error::other(format!("state in {:?}: {e}", opts.state_dir)))?,
        None => NodeId(ferry_proto::ids::random_u64()),
    };
    let program = opts.worker_program.clone();
    let (spawn_tx, spawn_rx) = mpsc::channel();
    let (spill_tx, spill_rx) = mpsc::channel();
    let (logs_tx, logs_rx) = mpsc::channel();
    let (links_tx, links_rx) = mpsc::channel();
    let node = Arc::new(Node {
        id,
        state: Mutex::new(State {
            pool: Pool {
                sched,
                workers: HashMap::new(),
                expected: HashSet::new(),
                retired: HashSet::new(),
                memory_victim: None,
                pressure: String::new(),
                memory_resets: 0,
                kill_reasons: HashMap::new(),
            },
            store: objects,
            conns: HashMap::new(),
            next_conn: 1,
            actors: HashMap::new(),
            book: ActorBook {
                names: HashMap::new(),
                reqs: HashMap::new(),
                next_req: 1,
                worker_actor: HashMap::new(),
                pending_holds: HashMap::new(),
                pending_hosts: HashMap::new(),
                waiting: Vec::new(),
                recovering: HashMap::new(),
                dead: std::collections::VecDeque::new(),
                parked: HashMap::new(),
                dead_kept: std::env::var("FERRY_DEAD_ACTORS_KEPT")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(actors::DEAD_ACTORS_KEPT),
            },
            cluster: Cluster { members: HashMap::new(), view: Vec::new(), changes: Default::default(), change_seq: 0 },
            room: Room { seals: Vec::new(), writers: Vec::new(), spilled: (0, Duration::ZERO) },
            copies: Copies { pulls: HashMap::new(), taken: HashMap::new(), counts: (0, 0, 0, 0) },
            groups: Default::default(),
            placing: Placing {
                infeasible: Vec::new(),
                movable: HashMap::new(),
                next_rebalance: Instant::now(),
                rr: 0,
                rand: ferry_proto::ids::random_u64(),
            },
            jobs: Vec::new(),
            starting_jobs: 0,
            outbox: Default::default(),
        }),
        opts,
        spawn_tx: Mutex::new(spawn_tx),
        spill_tx: Mutex::new(spill_tx),
        worker_logs: Mutex::new(logs_tx),
        program: Mutex::new(program),
        program_hash: Mutex::new(None),
        tables,
        deferred: Mutex::new(Vec::new()),
        stop_requested: (Mutex::new(false), std::sync::Condvar::new()),
        tcp_addr,
        links_tx: Mutex::new(links_tx),
        head_link: Mutex::new(None),
        history: Arc::new(history::Shared::new(
            std::env::var("FERRY_TASK_HISTORY_PER_JOB")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(history::DEFAULT_PER_JOB),
        )),
        control_addr: Mutex::new(None),
        stopping: AtomicBool::new(false),
        pids: Mutex::new(HashMap::new()),
        dirs: Mutex::new(dirs),
        wakes: Mutex::new(Vec::new()),
    });
    let mut threads = Vec::new();
    let n = node.clone();
    threads.push(thread::Builder::new().name("ferry-spawner".into()).spawn(move || pool::spawner(n, spawn_rx))?);
    let n = node.clone();
    threads.push(thread::Builder::new().name("ferry-spill".into()).spawn(move || store::spiller(n, spill_rx))?);
    let dir = worker_logs::dir(&node.opts.session_dir);
    // Not joined at shutdown: it ends when its sender goes with the node.
    thread::Builder::new().name("ferry-worker-logs".into()).spawn(move || worker_logs::writer(dir, logs_rx))?;
    let h = node.history.clone();
    threads.push(thread::Builder::new().name("ferry-history".into()).spawn(move || h.folder())?);
    let (token, id, max) = (node.opts.token.clone(), node.id, node.opts.max_frame);
    // Not joined at shutdown: it ends when its sender goes with the node.
    thread::Builder::new().name("ferry-links".into()).spawn(move || transfer::links(token, id, max, links_rx))?;
    node.load_control();
    if node.program().is_some() {
        let mut st = node.lock();
        node.apply(&mut st, actions);
    } else {
        // Nothing to start workers from until a driver joins.
        *node.deferred.locked() = actions;
    }
    let mut listeners = vec![(Listener::Unix(listener), Limits::unix(), "ferry-accept")];
    if let Some(l) = tcp {
        listeners.push((Listener::Tcp(l), Limits::tcp(), "ferry-accept-tcp"));
    }
    for (l, limits, name) in listeners {
        let n = node.clone();
        let (wake, rx) = wake_pair()?;
        node.wakes.locked().push(wake);
        let gate = Gate::new("ferry-node", limits);
        threads.push(thread::Builder::new().name(name.into()).spawn(move || conns::accept_loop(n, l, rx, gate))?);
    }
    if let Some(timeout) = node.opts.head_timeout {
        let n = node.clone();
        threads.push(thread::Builder::new().name("ferry-members".into()).spawn(move || members::monitor(n, timeout))?);
    }
    if let Some((head, every)) = node.opts.join.clone() {
        let n = node.clone();
        // Not joined at shutdown: it sleeps between heartbeats and ends when it sees `stopping`.
        thread::Builder::new().name("ferry-heartbeat".into()).spawn(move || members::join_loop(n, &head, every))?;
    }
    Ok(NodeHandle { node, threads })
}

impl NodeHandle {
    /// The cluster token every connection to it must prove.
    pub fn token(&self) -> &str {
        &self.node.opts.token
    }
    /// Its session's directory (sockets), store directory and spill directory.
    pub fn session_dir(&self) -> &std::path::Path {
        &self.node.opts.session_dir
    }
    pub fn store_dir(&self) -> &std::path::Path {
        &self.node.opts.store_dir
    }
    pub fn spill_dir(&self) -> Option<&std::path::Path> {
        self.node.opts.spill_dir.as_deref()
    }

    /// Where drivers and workers on this host connect.
    pub fn addr(&self) -> Addr {
        Addr::Unix(self.node.opts.session_dir.join("node.sock"))
    }
    pub fn id(&self) -> NodeId {
        self.node.id
    }
    /// The TCP address it listens on, if any.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.node.tcp_addr
    }
    /// Whether it is in a cluster's control store now (a head's or a member's link is up).
    pub fn joined(&self) -> bool {
        self.node.head_link.locked().is_some()
    }
    /// Blocks until a client asks the node to stop (`ToNode::StopNode`).
    pub fn wait_for_stop_request(&self) {
        let (m, cv) = &self.node.stop_requested;
        let mut g = m.locked();
        while !*g {
            g = cv.wait_locked(g);
        }
    }
    pub fn stats(&self) -> NodeStats {
        let st = self.node.lock();
        self.node.stats(&st)
    }
    /// A way to read the node's figures from another thread (heartbeats).
    pub fn stats_source(&self) -> impl Fn() -> NodeStats + Send + 'static {
        let node = self.node.clone();
        move || {
            let st = node.lock();
            node.stats(&st)
        }
    }
    /// Pids of the worker processes alive now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.node.pids.locked().values().copied().collect()
    }

    /// Stops the daemon and every worker it started, and deletes its directories.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.node.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.node.spawn_tx.locked().send(SpawnCmd::Shutdown);
        let _ = self.node.spill_tx.locked().send(None);
        self.node.history.stop();
        for w in self.node.wakes.locked().iter() {
            w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let conns: Vec<Arc<Conn>> = self.node.lock().conns.values().map(|c| c.conn.clone()).collect();
        for c in conns {
            c.shutdown();
        }
        StoreDir::open(&self.node.opts.store_dir).destroy();
        let _ = std::fs::remove_dir_all(&self.node.opts.session_dir);
        if let Some(spill) = &self.node.opts.spill_dir {
            let _ = std::fs::remove_dir_all(spill);
        }
        self.node.dirs.locked().clear();
    }

    /// Last-resort cleanup that takes no lock that could be held: for an `atexit` handler
    /// when the process ends without `shutdown`.
    pub fn emergency_cleanup(&self) {
        if let Ok(p) = self.node.pids.try_lock() {
            for pid in p.values() {
                // SAFETY: plain syscall; a stale pid at worst gets a signal it ignores.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.node.opts.store_dir);
        let _ = std::fs::remove_dir_all(&self.node.opts.session_dir);
        if let Some(spill) = &self.node.opts.spill_dir {
            let _ = std::fs::remove_dir_all(spill);
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Node {
    fn lock(&self) -> StateGuard<'_> {
        StateGuard(Some(self.state.locked()))
    }

    fn stats(&self, st: &State) -> NodeStats {
        let arena = st.store.arena_stats();
        NodeStats {
            node: Some(self.id),
            store_objects: st.store.len() as u64,
            store_used_bytes: st.store.used_bytes(),
            store_capacity_bytes: st.store.capacity_bytes(),
            workers: st.pool.sched.num_workers() as u64,
            idle_workers: st.pool.sched.num_idle() as u64,
            leased_workers: (st.pool.sched.num_workers() - st.pool.sched.num_idle()) as u64,
            pending_lease_requests: st.pool.sched.num_queued() as u64,
            total: st.pool.sched.total(),
            available: st.pool.sched.available(),
            actors: self.num_live_actors(st) as u64,
            spilled_objects: st.store.spilled_objects() as u64,
            spilled_bytes: st.store.spilled_bytes(),
            spill_total_bytes: st.room.spilled.0,
            spill_total_ns: st.room.spilled.1.as_nanos() as u64,
            transfers_out: st.copies.counts.0,
            transfers_in: st.copies.counts.1,
            transfer_bytes_out: st.copies.counts.2,
            transfer_bytes_in: st.copies.counts.3,
            suspended_workers: st.pool.sched.suspensions().0 as u64,
            suspensions: st.pool.sched.suspensions().1,
            resets: st.pool.sched.resets(),
            memory_resets: st.pool.memory_resets,
            arena_bytes: arena.size,
            arena_free_bytes: arena.free,
            arena_largest_free_bytes: arena.largest_free,
            arena_free_extents: arena.free_extents,
            arena_pinned_extents: arena.pinned_extents,
            store_fallback_files: arena.fallbacks,
            store_fragmented_fallbacks: arena.fragmented,
        }
    }

    /// Wakes `NodeHandle::wait_for_stop_request` (a client asked, or the head is gone).
    pub(crate) fn request_stop(&self) {
        let (m, cv) = &self.stop_requested;
        *m.locked() = true;
        cv.notify_all();
    }

    /// Whether this node is part of a cluster (a head, or a member), where requests that no
    /// node can fit wait for one that can rather than fail.
    fn in_cluster(&self) -> bool {
        self.opts.head_timeout.is_some() || self.opts.join.is_some()
    }

    /// Loads the head's persisted tables (see `control`).
    fn load_control(&self) {
        let Some(c) = &self.tables else { return };
        let mut st = self.lock();
        for (node, addr, total) in c.nodes().unwrap_or_default() {
            st.cluster.members.insert(node, members::Member::restored(addr, total));
        }
        for (name, actor, _class) in c.names().unwrap_or_default() {
            st.book.names.insert(name, actor);
        }
        // Their hosts re-report them when they join again; those none reports within a node
        // timeout are started anew.
        let due = Instant::now() + self.opts.head_timeout.unwrap_or(Duration::from_secs(5));
        for (actor, spec) in c.actors().unwrap_or_default() {
            self.restore_actor(&mut st, actor, spec, due);
        }
        st.jobs = c.jobs().unwrap_or_default();
        for j in st.jobs.iter_mut().filter(|j| j.ended_ms.is_none()) {
            // It ran under a head that is gone; whether it is still running is not known.
            j.ended_ms = Some(j.started_ms);
        }
        if !st.cluster.members.is_empty() || !st.jobs.is_empty() || !st.book.recovering.is_empty() {
            tracing::info!(
                "control store: {} nodes (to join again within the timeout), {} names, {} actors, {} jobs",
                st.cluster.members.len(),
                st.book.names.len(),
                st.book.recovering.len(),
                st.jobs.len()
            );
        }
    }

    /// Sends `msg` on connection `conn` once the state is released (see [`StateGuard`]).
    fn send(&self, st: &State, conn: ConnId, msg: &FromNode) {
        if let Some(c) = st.conns.get(&conn) {
            st.queue(&c.conn, msg);
        }
    }

    /// A request on connection `conn`, checked (registration first) and routed to the part of
    /// the daemon it concerns.
    fn handle(&self, conn: ConnId, msg: ToNode) -> Result<(), String> {
        let mut st = self.lock();
        let st = &mut *st;
        let registered = st.conns.get(&conn).is_some_and(|c| c.registered);
        match (&msg, registered) {
            (ToNode::Register { .. }, true) => return Err("registered twice".into()),
            (ToNode::Register { .. }, false) => {}
            (_, false) => return Err("request before registration".into()),
            (_, true) => {}
        }
        match msg {
            m @ ToNode::Register { .. } => return self.on_register(st, conn, m),
            ToNode::Log { stderr, lines, node } => self.log(st, conn, node, stderr, lines),
            m @ (ToNode::JoinCluster { .. }
            | ToNode::Heartbeat { .. }
            | ToNode::ClusterStatus { .. }
            | ToNode::ControlAddress { .. }) => self.on_cluster(st, conn, m),
            m @ (ToNode::HaveBinary { .. } | ToNode::Jobs { .. } | ToNode::StopNode) => self.on_jobs(st, conn, m),

            m @ (ToNode::RequestLease { .. }
            | ToNode::ReturnLease { .. }
            | ToNode::Blocked
            | ToNode::Unblocked
            | ToNode::StillInUse) => self.on_pool(st, conn, m),
            m @ (ToNode::Seal { .. }
            | ToNode::Create { .. }
            | ToNode::Pin { .. }
            | ToNode::Unpin { .. }
            | ToNode::MakeRoom { .. }
            | ToNode::Inventory { .. }
            | ToNode::Free { .. }
            | ToNode::Stats { .. }) => self.on_store(st, conn, m),
            m @ (ToNode::CreateActor { .. }
            | ToNode::ReserveName { .. }
            | ToNode::ResolveActor { .. }
            | ToNode::GetNamedActor { .. }
            | ToNode::HoldActor { .. }
            | ToNode::ReleaseActor { .. }
            | ToNode::HoldActorAgain { .. }
            | ToNode::HoldActorFor { .. }
            | ToNode::KillActor { .. }
            | ToNode::ActorReady { .. }
            | ToNode::ActorExited { .. }
            | ToNode::HostActor { .. }
            | ToNode::ActorHosted { .. }
            | ToNode::ActorsHosted { .. }
            | ToNode::ActorLost { .. }) => self.on_actor(st, conn, m),
            m @ (ToNode::CreateGroup { .. }
            | ToNode::RemoveGroup { .. }
            | ToNode::ListGroups { .. }
            | ToNode::PrepareBundles { .. }
            | ToNode::BundlesPrepared { .. }
            | ToNode::CommitBundles { .. }
            | ToNode::ReturnBundles { .. }) => self.on_groups(st, conn, m),
            m @ (ToNode::ListActors { .. } | ToNode::ListProcs { .. } | ToNode::Memory { .. }) => {
                self.on_view(st, conn, m)
            }
            // Handled on the connection's thread (`serve_conn`): they block on the network.
            ToNode::Pull { .. }
            | ToNode::FetchObject { .. }
            | ToNode::PutBinary { .. }
            | ToNode::FetchBinary { .. }
            | ToNode::SubmitJob { .. }
            | ToNode::StopJob { .. }
            | ToNode::JobLogs { .. }
            | ToNode::ListWorkerLogs { .. }
            | ToNode::ReadWorkerLog { .. }
            | ToNode::TaskEvents { .. }
            | ToNode::ListTasks { .. }
            | ToNode::ListSpans { .. }
            | ToNode::SummarizeTasks { .. } => {}
        }
        Ok(())
    }
}
