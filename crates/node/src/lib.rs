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

mod actors;
pub mod client;
pub mod control;
pub mod jobs;
pub mod launch;
mod members;
mod tables;
mod transfer;

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

pub use ferry_proto::layout::{socket_of, worker_env};

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
}

struct State {
    sched: Scheduler,
    store: ObjectTable,
    conns: HashMap<ConnId, ConnInfo>,
    /// Registered workers: their connection and where owners reach them (on this host, and
    /// from other hosts).
    workers: HashMap<WorkerId, (ConnId, Addr, Option<String>)>,
    /// Workers started by the spawner and not yet registered.
    expected: HashSet<WorkerId>,
    next_conn: ConnId,
    actors: HashMap<ActorId, ActorRec>,
    names: HashMap<String, ActorId>,
    /// Lease requests made for actors, by the scheduler's request id.
    actor_reqs: HashMap<u64, ActorId>,
    next_actor_req: u64,
    /// Which actor each actor worker hosts.
    worker_actor: HashMap<WorkerId, ActorId>,
    /// Holds of actors made for processes not connected yet (`HoldActorFor` from another
    /// node's worker for its caller): attached when they connect.
    pending_holds: HashMap<WorkerId, Vec<ActorId>>,
    /// The nodes that joined this head.
    members: HashMap<NodeId, members::Member>,
    /// Seals answered once the store is back under its capacity (back-pressure on `put`
    /// and on task returns).
    waiting_seals: Vec<(ConnId, u64, ObjectId)>,
    /// Writers that found the store's filesystem full: who to answer, the bytes each needs
    /// there, and how many bytes must still be spilled for it (its shortfall when it asked).
    waiting_room: Vec<(RoomWaiter, u64, u64)>,
    /// Bytes spilled so far, and the time their copies took.
    spill_total: (u64, Duration),
    /// Transfers out and in, and their bytes.
    transfers: (u64, u64, u64, u64),
    /// On a member: the other nodes as the head last described them.
    view: Vec<ferry_proto::msg::NodeView>,
    /// For `Placement::Spread`, and the random draws of spillback.
    rr: u64,
    rand: u64,
    /// Transfers in flight: who waits for each object.
    pulls: HashMap<ObjectId, Vec<(ConnId, u64)>>,
    /// Nodes that took copies of objects stored here (told when they are freed).
    copies: HashMap<ObjectId, Vec<NodeId>>,
    /// Lease requests no node alive can fit, waiting for one that can.
    infeasible: Vec<(ConnId, u64, Shape, u32, Placement)>,
    next_rebalance: Instant,
    /// Actors sent to other nodes to host and not yet running there: their resources count
    /// as taken in this node's view of those nodes (which lags by a heartbeat).
    pending_hosts: HashMap<ActorId, (NodeId, Shape, Option<Instant>)>,
    /// Queued requests that may go to another node, and since when they wait: leases of
    /// default placement asked here first, and workers for actors homed here. Requests with a
    /// node affinity, or sent here by another node, stay.
    movable: HashMap<(ConnId, u64), Instant>,
    /// Jobs started with `ferry submit` (on a head).
    jobs: Vec<JobView>,
    /// Workers of an earlier job's binary: stopped when their lease comes back.
    retired: HashSet<WorkerId>,
    /// Actors no node alive can host, waiting for one that can.
    waiting_actors: Vec<ActorId>,
    /// On a control store started again: actors loaded from its tables whose hosts have not
    /// re-reported them yet, and when they are started anew if none does.
    recovering: HashMap<ActorId, Instant>,
    /// Connections with messages queued while the state was locked: written once it is
    /// released (see [`StateGuard`]).
    outbox: std::cell::RefCell<Vec<Arc<Conn>>>,
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
        self.program.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// The program as other nodes are told of it (with its hash, so they can fetch it).
    fn program_spec(&self) -> Option<Program> {
        let hash = self.program_hash.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
    let (links_tx, links_rx) = mpsc::channel();
    let node = Arc::new(Node {
        id,
        state: Mutex::new(State {
            sched,
            store: ObjectTable::new(store, opts.store_capacity),
            conns: HashMap::new(),
            workers: HashMap::new(),
            expected: HashSet::new(),
            next_conn: 1,
            actors: HashMap::new(),
            names: HashMap::new(),
            actor_reqs: HashMap::new(),
            next_actor_req: 1,
            worker_actor: HashMap::new(),
            pending_holds: HashMap::new(),
            members: HashMap::new(),
            waiting_seals: Vec::new(),
            waiting_room: Vec::new(),
            spill_total: (0, Duration::ZERO),
            transfers: (0, 0, 0, 0),
            view: Vec::new(),
            rr: 0,
            rand: ferry_proto::ids::random_u64(),
            pulls: HashMap::new(),
            copies: HashMap::new(),
            infeasible: Vec::new(),
            next_rebalance: Instant::now(),
            pending_hosts: HashMap::new(),
            movable: HashMap::new(),
            jobs: Vec::new(),
            retired: HashSet::new(),
            waiting_actors: Vec::new(),
            recovering: HashMap::new(),
            outbox: Default::default(),
        }),
        opts,
        spawn_tx: Mutex::new(spawn_tx),
        spill_tx: Mutex::new(spill_tx),
        program: Mutex::new(program),
        program_hash: Mutex::new(None),
        tables,
        deferred: Mutex::new(Vec::new()),
        stop_requested: (Mutex::new(false), std::sync::Condvar::new()),
        tcp_addr,
        links_tx: Mutex::new(links_tx),
        head_link: Mutex::new(None),
        control_addr: Mutex::new(None),
        stopping: AtomicBool::new(false),
        pids: Mutex::new(HashMap::new()),
        dirs: Mutex::new(dirs),
        wakes: Mutex::new(Vec::new()),
    });
    let mut threads = Vec::new();
    let n = node.clone();
    threads.push(thread::Builder::new().name("ferry-spawner".into()).spawn(move || spawner(n, spawn_rx))?);
    let n = node.clone();
    threads.push(thread::Builder::new().name("ferry-spill".into()).spawn(move || spiller(n, spill_rx))?);
    let (token, id, max) = (node.opts.token.clone(), node.id, node.opts.max_frame);
    // Not joined at shutdown: it ends when its sender goes with the node.
    thread::Builder::new().name("ferry-links".into()).spawn(move || transfer::links(token, id, max, links_rx))?;
    node.load_control();
    if node.program().is_some() {
        let mut st = node.lock();
        node.apply(&mut st, actions);
    } else {
        // Nothing to start workers from until a driver joins.
        *node.deferred.lock().unwrap_or_else(|e| e.into_inner()) = actions;
    }
    let mut listeners = vec![(Listener::Unix(listener), Limits::unix(), "ferry-accept")];
    if let Some(l) = tcp {
        listeners.push((Listener::Tcp(l), Limits::tcp(), "ferry-accept-tcp"));
    }
    for (l, limits, name) in listeners {
        let n = node.clone();
        let (wake, rx) = wake_pair()?;
        node.wakes.lock().unwrap_or_else(|e| e.into_inner()).push(wake);
        let gate = Gate::new("ferry-node", limits);
        threads.push(thread::Builder::new().name(name.into()).spawn(move || accept_loop(n, l, rx, gate))?);
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
    /// Blocks until a client asks the node to stop (`ToNode::StopNode`).
    pub fn wait_for_stop_request(&self) {
        let (m, cv) = &self.node.stop_requested;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
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
        self.node.pids.lock().unwrap_or_else(|e| e.into_inner()).values().copied().collect()
    }

    /// Stops the daemon and every worker it started, and deletes its directories.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.node.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.node.spawn_tx.lock().unwrap_or_else(|e| e.into_inner()).send(SpawnCmd::Shutdown);
        let _ = self.node.spill_tx.lock().unwrap_or_else(|e| e.into_inner()).send(None);
        for w in self.node.wakes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
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
        self.node.dirs.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
        StateGuard(Some(self.state.lock().unwrap_or_else(|e| e.into_inner())))
    }

    fn stats(&self, st: &State) -> NodeStats {
        NodeStats {
            node: Some(self.id),
            store_objects: st.store.len() as u64,
            store_used_bytes: st.store.used_bytes(),
            store_capacity_bytes: st.store.capacity_bytes(),
            workers: st.sched.num_workers() as u64,
            idle_workers: st.sched.num_idle() as u64,
            leased_workers: (st.sched.num_workers() - st.sched.num_idle()) as u64,
            pending_lease_requests: st.sched.num_queued() as u64,
            total: st.sched.total(),
            available: st.sched.available(),
            actors: self.num_live_actors(st) as u64,
            spilled_objects: st.store.spilled_objects() as u64,
            spilled_bytes: st.store.spilled_bytes(),
            spill_total_bytes: st.spill_total.0,
            spill_total_ns: st.spill_total.1.as_nanos() as u64,
            transfers_out: st.transfers.0,
            transfers_in: st.transfers.1,
            transfer_bytes_out: st.transfers.2,
            transfer_bytes_in: st.transfers.3,
        }
    }

    /// A node started on its own runs the first job's binary (from the first driver or
    /// client that registers, or the first actor another node asks it to host).
    /// `exe`'s path is already this node's copy (see `serve_conn`).
    fn set_program(&self, st: &mut State, exe: Program) {
        match self.program() {
            Some(p) if p == exe.path || self.opts.worker_program.is_some() => return,
            Some(old) => {
                // A job with another binary: workers of the old one must not run its tasks.
                // Idle ones stop now, leased ones when their lease comes back.
                tracing::warn!(
                    "a job with another binary joined ({}; was {}): its workers replace the old ones",
                    exe.path.display(),
                    old.display()
                );
                st.retired = st.workers.keys().chain(st.expected.iter()).copied().collect();
                *self.program.lock().unwrap_or_else(|e| e.into_inner()) = Some(exe.path);
                *self.program_hash.lock().unwrap_or_else(|e| e.into_inner()) = exe.hash;
                let actions = st.sched.retire_idle(Instant::now());
                self.apply(st, actions);
                return;
            }
            None => {}
        }
        *self.program.lock().unwrap_or_else(|e| e.into_inner()) = Some(exe.path);
        *self.program_hash.lock().unwrap_or_else(|e| e.into_inner()) = exe.hash;
        let actions = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        self.apply(st, actions);
    }

    /// Answers the writers waiting for room on the store's filesystem: there is none to make.
    fn no_room(&self, st: &mut State, why: &str) {
        let free = st.store.dir().free_space().unwrap_or(0);
        for (w, bytes, _) in std::mem::take(&mut st.waiting_room) {
            let error = format!(
                "object store full: its filesystem ({}) has {} MiB free for {} MiB, and {why}; give it more \
                 room (a larger /dev/shm: `docker run --shm-size`), or drop references to large objects",
                st.store.dir().path().display(),
                free >> 20,
                bytes.div_ceil(1 << 20)
            );
            self.answer_room(st, w, Some(error));
        }
    }

    fn answer_room(&self, st: &State, w: RoomWaiter, error: Option<String>) {
        match w {
            RoomWaiter::Conn(conn, req) => self.send(st, conn, &FromNode::Room { req, error }),
            RoomWaiter::Local(_, tx) => {
                let _ = tx.try_send(error);
            }
        }
    }

    /// For a thread of this daemon that found the store's filesystem full: spills until
    /// `bytes` fit (as `MakeRoom` does for a process), waiting at most 15 s (a transfer's
    /// requester gives up after a minute, and a transfer tries three times).
    pub(crate) fn wait_for_room(&self, bytes: u64) -> Result<(), String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let id = ferry_proto::ids::random_u64();
        {
            let mut st = self.lock();
            let free = st.store.dir().free_space().unwrap_or(0);
            if free >= bytes {
                return Ok(());
            }
            st.waiting_room.push((RoomWaiter::Local(id, tx), bytes, bytes - free));
        }
        let _ = self.spill_tx.lock().unwrap_or_else(|e| e.into_inner()).send(Some(()));
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            Err(e) => {
                // Not waited for any more: nothing is spilled for it.
                self.lock().waiting_room.retain(|(w, ..)| !matches!(w, RoomWaiter::Local(i, _) if *i == id));
                Err(match e {
                    mpsc::RecvTimeoutError::Timeout => "no room was made within 15 s".into(),
                    mpsc::RecvTimeoutError::Disconnected => "the node is stopping".into(),
                })
            }
        }
    }

    /// Wakes `NodeHandle::wait_for_stop_request` (a client asked, or the head is gone).
    pub(crate) fn request_stop(&self) {
        let (m, cv) = &self.stop_requested;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    fn is_registered(&self, conn: ConnId) -> bool {
        self.lock().conns.get(&conn).is_some_and(|c| c.registered)
    }

    /// The address of a process to give to the peer on `conn`: its TCP one when the peer
    /// came over TCP (it may be on another host) and the process has one.
    fn addr_for(&self, st: &State, conn: ConnId, local: &Addr, tcp: &Option<String>) -> Addr {
        match (st.conns.get(&conn).is_some_and(|c| c.via_tcp), tcp) {
            (true, Some(t)) => Addr::Tcp(t.clone()),
            _ => local.clone(),
        }
    }

    /// Whether this node is part of a cluster (a head, or a member), where requests that no
    /// node can fit wait for one that can rather than fail.
    fn in_cluster(&self) -> bool {
        self.opts.head_timeout.is_some() || self.opts.join.is_some()
    }

    /// A lease request: granted or queued here, sent to another node (`LeaseSpillback`), or
    /// waiting for a node that can fit it.
    #[allow(clippy::too_many_arguments)]
    fn request_lease(
        &self,
        st: &mut State,
        conn: ConnId,
        req: u64,
        shape: Shape,
        depth: u32,
        placement: Placement,
        prefer: Option<NodeId>,
    ) {
        use ferry_sched::place::{place, Decision};
        let others = members::rooms(&self.others(st));
        let me = members::room(&self.my_view(st));
        if placement == Placement::Spread {
            st.rr += 1;
        }
        // xorshift: cheap draws for the power of two choices.
        st.rand ^= st.rand << 13;
        st.rand ^= st.rand >> 7;
        st.rand ^= st.rand << 17;
        match place(&shape, &placement, prefer, &me, &others, st.rr, st.rand) {
            Decision::Local => {
                if placement == Placement::Default {
                    st.movable.insert((conn, req), Instant::now());
                }
                let actions = st.sched.request(conn, req, shape, depth);
                self.apply(st, actions);
            }
            Decision::Spill { node, addr } => self.send(st, conn, &FromNode::LeaseSpillback { req, node, addr }),
            Decision::Fail(reason) => self.send(st, conn, &FromNode::LeaseInfeasible { req, reason }),
            Decision::Wait(why) if !self.in_cluster() => {
                // One node on its own: nothing can join, so it can never run.
                let _ = why;
                let actions = st.sched.request(conn, req, shape, depth);
                self.apply(st, actions);
            }
            Decision::Wait(why) => {
                let first = !st.infeasible.iter().any(|(c, _, s, _, _)| *c == conn && *s == shape);
                if first {
                    tracing::warn!("warning: tasks needing {shape} wait: {why}");
                    let line = format!("ferry: warning: tasks needing {shape} wait: {why}");
                    self.send(st, conn, &FromNode::Log { node: self.id, stderr: true, lines: vec![line] });
                }
                st.infeasible.push((conn, req, shape, depth, placement));
            }
        }
    }

    /// Requests waiting here for resources another node has free go there, as a raylet spills
    /// back queued work: leases by `LeaseSpillback`, actors by `HostActor`. Every 50 ms (from
    /// the spawner's tick), for requests that waited at least [`MOVE_AFTER`], against the
    /// last view of the cluster.
    fn rebalance(&self, st: &mut State) {
        use ferry_sched::place::{fits, take};
        if !self.in_cluster() || st.sched.num_queued() == 0 || Instant::now() < st.next_rebalance {
            return;
        }
        st.next_rebalance = Instant::now() + Duration::from_millis(50);
        let mut others: Vec<ferry_proto::msg::NodeView> =
            self.others_free(st).into_iter().filter(|v| v.alive && !v.addr.is_empty()).collect();
        if others.is_empty() {
            return;
        }
        let mut chosen = Vec::new();
        let (moved, actions) = st.sched.take_short(|conn, req, shape| {
            // Only what has waited a while: a CPU here usually frees sooner than that.
            if st.movable.get(&(conn, req)).is_none_or(|t| t.elapsed() < MOVE_AFTER) {
                return false;
            }
            let best =
                others.iter_mut().filter(|v| fits(shape, &v.available)).max_by_key(|v| v.available.get_milli(CPU_NAME));
            match best {
                Some(v) => {
                    take(&mut v.available, shape);
                    chosen.push((v.node, v.addr.clone()));
                    true
                }
                None => false,
            }
        });
        self.apply(st, actions);
        for ((conn, req, _, _), (node, addr)) in moved.into_iter().zip(chosen) {
            st.movable.remove(&(conn, req));
            if conn == ACTOR_CONN {
                self.actor_moved(st, req, node, addr);
            } else {
                self.send(st, conn, &FromNode::LeaseSpillback { req, node, addr });
            }
        }
    }

    /// The cluster's view changed: requests that waited for a node that can fit them try again.
    fn retry_infeasible(&self, st: &mut State) {
        for actor in std::mem::take(&mut st.waiting_actors) {
            if st.actors.get(&actor).is_some_and(|r| r.is_placing()) {
                self.place_actor(st, actor);
            }
        }
        if st.infeasible.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut st.infeasible);
        for (conn, req, shape, depth, placement) in waiting {
            if st.conns.contains_key(&conn) {
                self.request_lease(st, conn, req, shape, depth, placement, None);
            }
        }
    }

    /// Lines tasks printed: to this node's drivers; a member also passes its own workers'
    /// lines to the head, and the head passes members' lines to its drivers and the other
    /// members (so every driver sees every line once).
    fn log(&self, st: &mut State, from: ConnId, origin: Option<NodeId>, stderr: bool, lines: Vec<String>) {
        let node = origin.unwrap_or(self.id);
        let msg = FromNode::Log { node, stderr, lines: lines.clone() };
        let drivers: Vec<ConnId> =
            st.conns.iter().filter(|(_, c)| c.kind == Some(ProcKind::Driver)).map(|(k, _)| *k).collect();
        for d in drivers {
            self.send(st, d, &msg);
        }
        if origin.is_none() {
            if let Some(head) = self.head_link.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                st.queue(head, &ToNode::Log { stderr, lines, node: Some(self.id) });
            }
        } else if self.opts.head_timeout.is_some() {
            let members: Vec<ConnId> =
                st.members.values().filter(|m| m.alive).map(|m| m.conn).filter(|c| *c != from).collect();
            for m in members {
                self.send(st, m, &msg);
            }
        }
    }

    /// Loads the head's persisted tables (see `control`).
    fn load_control(&self) {
        let Some(c) = &self.tables else { return };
        let mut st = self.lock();
        for (node, addr, total) in c.nodes().unwrap_or_default() {
            st.members.insert(node, members::Member::restored(addr, total));
        }
        for (name, actor, _class) in c.names().unwrap_or_default() {
            st.names.insert(name, actor);
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
        if !st.members.is_empty() || !st.jobs.is_empty() || !st.recovering.is_empty() {
            tracing::info!(
                "control store: {} nodes (to join again within the timeout), {} names, {} actors, {} jobs",
                st.members.len(),
                st.names.len(),
                st.recovering.len(),
                st.jobs.len()
            );
        }
    }

    /// Persists a job's record (on a head with a state directory).
    pub(crate) fn record_job(&self, j: &JobView) {
        if let Some(c) = &self.tables {
            if let Err(e) = c.put_job(j) {
                tracing::error!("control store: cannot record job {}: {e}", j.id);
            }
        }
    }

    /// Lines from another member, passed on by the head: to this node's drivers only.
    fn log_from_head(&self, st: &mut State, origin: NodeId, stderr: bool, lines: Vec<String>) {
        let msg = FromNode::Log { node: origin, stderr, lines };
        let drivers: Vec<ConnId> =
            st.conns.iter().filter(|(_, c)| c.kind == Some(ProcKind::Driver)).map(|(k, _)| *k).collect();
        for d in drivers {
            self.send(st, d, &msg);
        }
    }

    /// Sends `msg` on connection `conn` once the state is released (see [`StateGuard`]).
    fn send(&self, st: &State, conn: ConnId, msg: &FromNode) {
        if let Some(c) = st.conns.get(&conn) {
            st.queue(&c.conn, msg);
        }
    }

    fn spawn_kill(&self, worker: WorkerId) {
        self.spawn_cmd(SpawnCmd::Kill(worker));
    }

    fn spawn_cmd(&self, cmd: SpawnCmd) {
        let _ = self.spawn_tx.lock().unwrap_or_else(|e| e.into_inner()).send(cmd);
    }

    /// Carries out the scheduler's decisions.
    fn apply(&self, st: &mut State, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Grant { conn: ACTOR_CONN, req, worker, .. } => {
                    st.movable.remove(&(ACTOR_CONN, req));
                    self.on_actor_grant(st, req, worker)
                }
                Action::Grant { conn, req, lease, worker } => {
                    st.movable.remove(&(conn, req));
                    let addr = st.workers.get(&worker).map(|(_, a, tcp)| self.addr_for(st, conn, a, tcp));
                    match addr {
                        Some(addr) => self.send(st, conn, &FromNode::LeaseGranted { req, lease, worker, addr }),
                        None => {
                            // Cannot happen: the scheduler only grants registered workers.
                            tracing::warn!("granted unknown worker {worker:?}");
                        }
                    }
                }
                Action::Infeasible { conn: ACTOR_CONN, req, reason } => self.actor_infeasible(st, req, reason),
                Action::Infeasible { conn, req, reason } => {
                    st.movable.remove(&(conn, req));
                    self.send(st, conn, &FromNode::LeaseInfeasible { req, reason })
                }
                Action::StartWorker => self.spawn_cmd(SpawnCmd::Start),
                Action::KillWorker { worker } => self.spawn_cmd(SpawnCmd::Kill(worker)),
                Action::Retire { worker } => match st.workers.get(&worker) {
                    Some((conn, _, _)) => self.send(st, *conn, &FromNode::RetireIfIdle),
                    None => self.spawn_cmd(SpawnCmd::Kill(worker)),
                },
                Action::Recall { conn } => self.send(st, conn, &FromNode::RecallIdleLeases),
                Action::EndRecall { conn } => self.send(st, conn, &FromNode::EndRecall),
            }
        }
    }

    /// Removes the socket a process of this node listened on (it is gone). The path is made
    /// here from its id, never taken from what a peer said.
    fn remove_socket(&self, process: WorkerId) {
        let _ = std::fs::remove_file(socket_of(&self.opts.session_dir, process));
    }

    /// A worker is gone: tell every owner, free its resources, keep the pool's size.
    fn worker_gone(&self, st: &mut State, worker: WorkerId, reason: &str) {
        self.remove_socket(worker);
        st.expected.remove(&worker);
        st.retired.remove(&worker);
        if let Some((conn, _, _)) = st.workers.remove(&worker) {
            if let Some(c) = st.conns.get_mut(&conn) {
                c.worker = None;
            }
            // Only the owner holding its lease needs to know (an actor's callers hear of
            // the actor instead); telling every process would cost n² messages when many
            // workers go at once.
            if let Some(holder) = st.sched.lease_holder(worker).filter(|h| *h != ACTOR_CONN) {
                self.send(st, holder, &FromNode::WorkerDied { worker, reason: reason.to_string() });
            }
        }
        let actions = st.sched.worker_died(worker);
        self.apply(st, actions);
        self.actor_worker_gone(st, worker, reason);
    }

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
            ToNode::Register { kind, pid: _, listen, tcp, exe, node } => {
                let registered = FromNode::Registered {
                    node: self.id,
                    worker: st.conns.get(&conn).map(|c| c.from).unwrap_or_default(),
                    session_dir: self.opts.session_dir.clone(),
                    store_dir: self.opts.store_dir.clone(),
                    spill_dir: self.opts.spill_dir.clone(),
                };
                let Some(info) = st.conns.get_mut(&conn) else {
                    return Ok(());
                };
                info.registered = true;
                info.kind = Some(kind);
                info.node = node;
                let w = info.from;
                self.attach_pending_holds(st, conn, w);
                let Some(info) = st.conns.get_mut(&conn) else {
                    return Ok(());
                };
                match kind {
                    ProcKind::Worker => {
                        if !st.expected.remove(&w) {
                            return Err(format!("worker {w:?} was not started by this node"));
                        }
                        info.worker = Some(w);
                        st.workers.insert(w, (conn, listen, tcp));
                        // The registration is answered before anything is asked of the worker.
                        self.send(st, conn, &registered);
                        if st.retired.remove(&w) {
                            // Started from the previous job's binary: another takes its
                            // place (the scheduler still counts it as starting).
                            self.spawn_kill(w);
                            self.spawn_cmd(SpawnCmd::Start);
                            return Ok(());
                        }
                        let actions = st.sched.worker_registered(w, Instant::now());
                        self.apply(st, actions);
                    }
                    ProcKind::Node | ProcKind::Tool => self.send(st, conn, &registered),
                    ProcKind::Driver | ProcKind::Client => {
                        self.send(st, conn, &registered);
                        if let Some(exe) = exe {
                            self.set_program(st, exe);
                        }
                    }
                }
            }
            ToNode::Log { stderr, lines, node } => self.log(st, conn, node, stderr, lines),
            ToNode::JoinCluster { req, node, addr, total } => {
                let error = match self.opts.head_timeout {
                    Some(_) => self.join_cluster(st, conn, node, addr, total),
                    None => Some("this node is not a head: join the head's address".into()),
                };
                self.send(st, conn, &FromNode::Ack { req, error });
            }
            ToNode::Heartbeat { node, stats } => {
                self.heartbeat(st, node, stats);
                let nodes = self.cluster_view(st);
                self.send(st, conn, &FromNode::Cluster { req: 0, nodes });
            }
            ToNode::ClusterStatus { req } => {
                let nodes = self.full_view(st);
                self.send(st, conn, &FromNode::Cluster { req, nodes });
            }
            // Handled on the connection's thread (`serve_conn`): they block on the network.
            ToNode::Pull { .. }
            | ToNode::FetchObject { .. }
            | ToNode::PutBinary { .. }
            | ToNode::FetchBinary { .. }
            | ToNode::SubmitJob { .. } => {}
            ToNode::HaveBinary { req, hash } => {
                let error = self.binary_path(&hash).is_none().then(|| format!("no binary {hash} here"));
                self.send(st, conn, &FromNode::Ack { req, error });
            }
            ToNode::Jobs { req } => self.jobs(st, conn, req),
            ToNode::StopNode => self.request_stop(),
            ToNode::RequestLease { req, shape, depth, placement, prefer } => {
                self.request_lease(st, conn, req, shape, depth, placement, prefer)
            }
            ToNode::ReturnLease { lease, kill } => {
                let retired = st.sched.lease_worker(lease).is_some_and(|w| st.retired.contains(&w));
                let actions = st.sched.return_lease(conn, lease, kill || retired, Instant::now());
                self.apply(st, actions);
            }
            ToNode::Blocked => {
                if let Some(w) = st.conns.get(&conn).and_then(|c| c.worker) {
                    let actions = st.sched.blocked(w);
                    self.apply(st, actions);
                }
            }
            ToNode::Unblocked => {
                if let Some(w) = st.conns.get(&conn).and_then(|c| c.worker) {
                    st.sched.unblocked(w);
                }
            }
            ToNode::Seal { req, object, size } => match st.store.seal(object, size) {
                Ok(()) if st.store.over_capacity() => {
                    // Answered once spilling has made room: the writer waits until then.
                    st.waiting_seals.push((conn, req, object));
                    let _ = self.spill_tx.lock().unwrap_or_else(|e| e.into_inner()).send(Some(()));
                }
                res => {
                    let error = res.err().map(|e| e.to_string());
                    self.send(st, conn, &FromNode::Sealed { req, error });
                }
            },
            ToNode::StillInUse => {
                if let Some(w) = st.conns.get(&conn).and_then(|c| c.worker) {
                    let actions = st.sched.keep(w, Instant::now());
                    self.apply(st, actions);
                }
            }
            ToNode::MakeRoom { req, bytes } => {
                let free = st.store.dir().free_space().unwrap_or(0);
                let size = st.store.dir().fs_size().unwrap_or(u64::MAX);
                if bytes > size {
                    let error = format!(
                        "object store full: the object needs {} MiB and the store's filesystem ({}) holds {} MiB \
                         in all; give it more room (a larger /dev/shm: `docker run --shm-size`)",
                        bytes.div_ceil(1 << 20),
                        st.store.dir().path().display(),
                        size >> 20
                    );
                    self.send(st, conn, &FromNode::Room { req, error: Some(error) });
                } else if free >= bytes {
                    // Room appeared meanwhile (another writer's was freed).
                    self.send(st, conn, &FromNode::Room { req, error: None });
                } else {
                    st.waiting_room.push((RoomWaiter::Conn(conn, req), bytes, bytes - free));
                    let _ = self.spill_tx.lock().unwrap_or_else(|e| e.into_inner()).send(Some(()));
                }
            }
            ToNode::Inventory { req } => {
                let processes = st.conns.values().filter(|c| c.registered).map(|c| c.from).collect();
                let objects = st
                    .store
                    .list()
                    .into_iter()
                    .map(|o| StoredInfo { object: o.id, size: o.size, spilled: o.spilled })
                    .collect();
                self.send(st, conn, &FromNode::Inventory { req, processes, objects });
            }
            ToNode::Free { objects } => {
                for o in &objects {
                    st.store.free(*o);
                }
                self.free_copies(st, &objects);
            }
            ToNode::Stats { req } => {
                let stats = self.stats(st);
                self.send(st, conn, &FromNode::Stats { req, stats });
            }
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
            ToNode::ControlAddress { req } => {
                let addr = match self.opts.head_timeout.is_some() {
                    true => self.tcp_addr.map(|a| a.to_string()),
                    false => self.control_addr.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                };
                self.send(st, conn, &FromNode::ControlAt { req, addr });
            }
            ToNode::ActorLost { actor, reason } => {
                if st.actors.get(&actor).is_some_and(|r| r.is_remote()) {
                    self.actor_lost(st, actor, &reason);
                }
            }
        }
        Ok(())
    }
}

/// `bytes` left the store's memory: they go to the writers waiting for room, first come first
/// served (each byte made room for one of them, not for all).
fn made_room(st: &mut State, bytes: u64) {
    let mut left = bytes;
    for (_, _, need) in st.waiting_room.iter_mut() {
        let take = (*need).min(left);
        *need -= take;
        left -= take;
        if left == 0 {
            break;
        }
    }
}

/// Spills the oldest objects to disk while the store is over its capacity, then answers the
/// seals that waited for room. Copies run without the state lock.
fn spiller(node: Arc<Node>, rx: mpsc::Receiver<Option<()>>) {
    spill_while_asked(&node, rx);
    // Stopping: nobody waits for room that will not come.
    node.no_room(&mut node.lock(), "the node is stopping");
}

fn spill_while_asked(node: &Arc<Node>, rx: mpsc::Receiver<Option<()>>) {
    while let Ok(Some(())) = rx.recv() {
        loop {
            let next = {
                let mut st = node.lock();
                // Room asked for on the filesystem (beyond the store's own accounting): a
                // writer is answered once its shortfall is spilled (its pages go when their
                // last mapping does, which may lag) or its bytes fit; it tries again then.
                if !st.waiting_room.is_empty() {
                    let free = st.store.dir().free_space().unwrap_or(u64::MAX);
                    let (done, left): (Vec<_>, Vec<_>) = std::mem::take(&mut st.waiting_room)
                        .into_iter()
                        .partition(|(_, bytes, need)| *need == 0 || free >= *bytes);
                    st.waiting_room = left;
                    for (w, _, _) in done {
                        node.answer_room(&st, w, None);
                    }
                }
                let fs_short = !st.waiting_room.is_empty();
                if !st.store.over_capacity() && !fs_short {
                    let waiting = std::mem::take(&mut st.waiting_seals);
                    for (conn, req, _) in waiting {
                        node.send(&st, conn, &FromNode::Sealed { req, error: None });
                    }
                    break;
                }
                // Secondary copies go first: their nodes can give them again.
                if let Some((_, size)) = st.store.drop_copy() {
                    made_room(&mut st, size);
                    continue;
                }
                match st.store.next_to_spill() {
                    Some((id, _)) => (id, st.store.dir().clone()),
                    None => {
                        // Nothing left to spill: a writer must never wait for room that will
                        // not come.
                        let waiting = std::mem::take(&mut st.waiting_seals);
                        for (conn, req, object) in waiting {
                            st.store.free(object);
                            let error = "object store full and nothing left to spill".to_string();
                            node.send(&st, conn, &FromNode::Sealed { req, error: Some(error) });
                        }
                        node.no_room(&mut st, "nothing of this node's is left in memory to spill");
                        break;
                    }
                }
            };
            let (id, dir) = next;
            let t = Instant::now();
            let copied = dir.spill(id);
            let took = t.elapsed();
            let mut st = node.lock();
            match copied {
                Ok(n) => {
                    st.spill_total.0 += n;
                    st.spill_total.1 += took;
                    made_room(&mut st, n);
                    if st.store.mark_spilled(id) {
                        // Its owner drops its mapping, or the memory would stay in use.
                        let owner =
                            st.conns.iter().find(|(_, c)| c.registered && c.from == id.owner()).map(|(k, _)| *k);
                        if let Some(c) = owner {
                            node.send(&st, c, &FromNode::Spilled { objects: vec![id] });
                        }
                    }
                }
                Err(e) => {
                    // The disk is full (or the spill directory unusable): the writers
                    // waiting for room get a clear error and their objects are dropped.
                    st.store.spill_failed(id);
                    node.no_room(&mut st, &format!("spilling failed: {e}"));
                    let waiting = std::mem::take(&mut st.waiting_seals);
                    let spill = dir.spill_dir().map(|p| p.display().to_string()).unwrap_or_default();
                    for (conn, req, object) in waiting {
                        st.store.free(object);
                        let error = format!(
                            "object store full: {} of {} bytes in memory, and spilling to {spill} failed: {e}; \
                             free space there, drop references to large objects, or raise \
                             Config::object_store_bytes",
                            st.store.used_bytes(),
                            st.store.capacity_bytes()
                        );
                        node.send(&st, conn, &FromNode::Sealed { req, error: Some(error) });
                    }
                    break;
                }
            }
        }
    }
}

/// Accepts connections until the node stops (see `ferry_proto::listen`): each gets a thread
/// that runs its handshake, then serves it.
fn accept_loop(node: Arc<Node>, listener: Listener, wake: WakeRx, gate: Arc<Gate>) {
    accept_loop_on(&listener, &wake, &gate, |stream, adm| {
        let n = node.clone();
        let _ = thread::Builder::new().name("ferry-node-conn".into()).spawn(move || serve_conn(n, stream, adm));
    });
}

fn serve_conn(node: Arc<Node>, stream: Stream, adm: Admission) {
    let via_tcp = matches!(stream, Stream::Tcp(_));
    let (source, gate) = (adm.source(), adm.gate().clone());
    let (conn, mut reader, hello, _slot) = match accept(stream, &node.opts.token, node.id, node.opts.max_frame, adm) {
        Ok(x) => x,
        // A peer that left (a port probe, a process that ended) is not worth a line.
        Err(e) if !e.worth_logging(source) => return,
        Err(e) => {
            if !node.stopping.load(Ordering::SeqCst) {
                gate.log.log(|| format!("ferry-node: refused a connection from {source}: {e}"));
            }
            return;
        }
    };
    // A peer that stops reading must not hold a writing thread for ever.
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let conn = Arc::new(conn);
    let id = {
        let mut st = node.lock();
        let id = st.next_conn;
        st.next_conn += 1;
        let info = ConnInfo {
            conn: conn.clone(),
            from: hello.from,
            worker: None,
            registered: false,
            kind: None,
            via_tcp,
            node: None,
        };
        st.conns.insert(id, info);
        id
    };
    let reason = loop {
        match reader.read::<ToNode>() {
            Ok(ToNode::FetchObject { object, node: to }) if node.is_registered(id) => {
                node.serve_fetch(&conn, object, to)
            }
            Ok(ToNode::Pull { req, object, from }) if node.is_registered(id) => node.pull(id, req, object, from),
            Ok(ToNode::PutBinary { req, hash, size }) if node.is_registered(id) => {
                node.put_binary(&conn, &mut reader, req, &hash, size)
            }
            Ok(ToNode::FetchBinary { hash }) if node.is_registered(id) => node.serve_binary(&conn, &hash),
            Ok(ToNode::SubmitJob { req, hash, name, args }) if node.is_registered(id) => {
                node.submit_job(conn.clone(), req, &hash, &name, args)
            }
            Ok(mut msg) => {
                // A program named by hash is fetched (from the head) before the state is
                // locked, so the daemon never waits on the network while holding it.
                if let ToNode::Register { exe: Some(p), .. } | ToNode::HostActor { exe: Some(p), .. } = &mut msg {
                    if p.hash.is_some() {
                        p.path = node.local_program(p);
                    }
                }
                if let Err(e) = node.handle(id, msg) {
                    break format!("protocol error: {e}");
                }
            }
            Err(FrameError::Closed) => break "connection closed".to_string(),
            Err(FrameError::Io(e)) => break format!("connection failed: {e}"),
            Err(e) => {
                // Malformed or oversized: this connection is done; the daemon goes on.
                tracing::warn!("closing connection from {:?}: {e}", hello.from);
                break e.to_string();
            }
        }
    };
    conn.shutdown();
    let mut st = node.lock();
    let st = &mut *st;
    let info = st.conns.remove(&id);
    if let Some(i) =
        info.as_ref().filter(|i| matches!(i.kind, Some(ProcKind::Driver | ProcKind::Worker | ProcKind::Client)))
    {
        // A process is gone (of this node; or of another, whose link here closes when it
        // exits, gives this node up for dead, or its node is declared dead): what it owned
        // here will never be asked for again (its borrowers get `OwnerDied`), so its stored
        // objects and their copies go.
        let owned: Vec<ObjectId> = st.store.list().into_iter().map(|o| o.id).filter(|o| o.owner() == i.from).collect();
        for o in &owned {
            st.store.free(*o);
        }
        node.free_copies(st, &owned);
        // Its socket, if it listened in this node's session directory.
        node.remove_socket(i.from);
    }
    if let Some(w) = info.and_then(|i| i.worker) {
        node.worker_gone(st, w, &format!("worker's connection to its node ended ({reason})"));
        node.spawn_cmd(SpawnCmd::Kill(w));
    }
    node.actors_conn_closed(st, id);
    node.member_conn_closed(st, id);
    st.movable.retain(|(c, _), _| *c != id);
    st.infeasible.retain(|(c, ..)| *c != id);
    st.waiting_room.retain(|(w, ..)| !matches!(w, RoomWaiter::Conn(c, _) if *c == id));
    let actions = st.sched.conn_closed(id);
    node.apply(st, actions);
}

fn spawner(node: Arc<Node>, rx: mpsc::Receiver<SpawnCmd>) {
    let mut children: HashMap<WorkerId, Child> = HashMap::new();
    // Killed workers are reaped on the next tick; all children are checked once a second
    // (for one that died on its own before registering), not every tick: a node may have a
    // thousand actor processes.
    let mut dying: Vec<WorkerId> = Vec::new();
    let mut last_scan = Instant::now();
    loop {
        // Take every command waiting, then reap once.
        let mut cmds = vec![rx.recv_timeout(Duration::from_millis(50))];
        while let Ok(c) = rx.try_recv() {
            cmds.push(Ok(c));
        }
        for cmd in cmds {
            match cmd {
                Ok(SpawnCmd::Start) => match spawn_worker(&node) {
                    Ok((w, child)) => {
                        node.pids.lock().unwrap_or_else(|e| e.into_inner()).insert(w, child.id());
                        children.insert(w, child);
                    }
                    Err(e) => {
                        let program = node.program().map(|p| p.display().to_string()).unwrap_or_default();
                        tracing::error!("cannot start a worker ({program}): {e}");
                        let mut st = node.lock();
                        let actions = st.sched.worker_start_failed();
                        node.apply(&mut st, actions);
                    }
                },
                Ok(SpawnCmd::Kill(w)) => {
                    if let Some(c) = children.get_mut(&w) {
                        let _ = c.kill();
                        dying.push(w);
                    }
                }
                Ok(SpawnCmd::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    for c in children.values_mut() {
                        let _ = c.kill();
                    }
                    for (_, mut c) in children.drain() {
                        let _ = c.wait();
                    }
                    node.pids.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        // Reap exited workers and tick the pool's clock.
        let scan_all = last_scan.elapsed() >= Duration::from_secs(1);
        if scan_all {
            last_scan = Instant::now();
        }
        let candidates: Vec<WorkerId> = if scan_all { children.keys().copied().collect() } else { dying.clone() };
        let mut exited: Vec<(WorkerId, String)> = Vec::new();
        for w in candidates {
            if let Some(c) = children.get_mut(&w) {
                if let Ok(Some(status)) = c.try_wait() {
                    exited.push((w, format!("worker process exited ({status})")));
                }
            }
        }
        dying.retain(|w| children.contains_key(w) && !exited.iter().any(|(x, _)| x == w));
        let mut st = node.lock();
        for (w, reason) in exited {
            children.remove(&w);
            node.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&w);
            let was_expected = st.expected.contains(&w);
            node.worker_gone(&mut st, w, &reason);
            if was_expected {
                let actions = st.sched.worker_start_failed();
                node.apply(&mut st, actions);
            }
        }
        let actions = st.sched.tick(Instant::now());
        node.apply(&mut st, actions);
        node.rebalance(&mut st);
    }
}

fn spawn_worker(node: &Node) -> io::Result<(WorkerId, Child)> {
    use worker_env::*;
    let w = WorkerId(ferry_proto::ids::random_u64());
    node.lock().expected.insert(w);
    let o = &node.opts;
    let program = node.program().ok_or_else(|| io::Error::other("no job has joined: no worker program yet"))?;
    let mut cmd = Command::new(program);
    cmd.env(WORKER, "1")
        .env(WORKER_ID, w.0.to_string())
        .env(NODE_SOCKET, o.session_dir.join("node.sock"))
        .env(TOKEN, &o.token)
        .env(STORE_DIR, &o.store_dir)
        .env(SESSION_DIR, &o.session_dir)
        .env(PARENT_PID, std::process::id().to_string())
        .env(SPILL_DIR, o.spill_dir.as_deref().unwrap_or(std::path::Path::new("")))
        .env(TCP_HOST, node.tcp_addr.map(|a| a.ip().to_string()).unwrap_or_default())
        .env(EXE_HASH, node.program_hash.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default())
        .envs(o.worker_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    match cmd.spawn() {
        Ok(c) => Ok((w, c)),
        Err(e) => {
            node.lock().expected.remove(&w);
            Err(e)
        }
    }
}
