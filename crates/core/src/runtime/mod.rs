//! The per-process runtime: the owner table, the connection to the node daemon, the
//! connections to leased workers, and (in workers) the executor.
//!
//! Its parts: this module (starting, the owner table's lock, carrying out its effects,
//! stopping); [`daemon`] (the links to node daemons); [`peers`] (connections between
//! processes); [`objects`] (storing, mapping, getting objects); [`wait`] (blocking a thread
//! until the table wakes it).
//!
//! One [`Runtime`] per process, reached through [`runtime`]. Threads it starts:
//! - `ferry-node-rx`: reads the daemon's messages (lease grants, worker deaths, replies);
//! - `ferry-peer-rx` (one per process we connected to: leased workers, actors, owners of
//!   refs we borrow): reads task replies and owners' answers;
//! - `ferry-accept`, and one `ferry-inbound` per process that connected to us: reads pushed
//!   tasks (handed to the `executor` in workers) and borrowers' requests;
//! - `ferry-housekeeping`: returns leases idle for too long.
//!
//! Every process listens on `<session dir>/p-<worker id>.sock`, so a ref's id (which names
//! its owner) is enough to reach the owner on the same node. On a node with a TCP address
//! processes also listen on TCP, and a ref carries its owner's TCP address when it travels
//! (as Ray's refs carry the owner's address), so a process on another node reaches the owner
//! without asking anyone.
//!
//! Leases may come from other nodes: a daemon answers a request with `LeaseSpillback`, and
//! the request goes to that node's daemon (connected to on first use, as a `Client`); the
//! owner table keeps which node granted each lease.
//!
//! The owner table's mutex is never held while blocking on the network: state changes
//! collect their sends in [`Effects`], naming each target by id, and [`Runtime::apply`]
//! sends them on the right connections after the lock is released (sends only append to a
//! connection's buffer, or write to a socket whose reader is always reading).

use ferry_types::sync::{CondvarExt, MutexExt};
mod daemon;
mod events;
mod objects;
mod progress;
pub(crate) use objects::{cancelled_here, Staged};
mod peers;
mod wait;

pub use wait::block_on;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::owner::{ArgDraft, Daemon, Effects, ObjState, OwnerLimits, OwnerState, Ready};
use crate::refs::Addrs;
use ferry_proto::conn::accept;
use ferry_proto::conn::{connect, connect_from, Addr, Conn};
use ferry_proto::listen::{accept_loop as accept_loop_on, wake_pair, Gate, Limits, Listener, Wake as StopLoop, WakeRx};
use ferry_proto::msg::{ActorId, FromNode, FromWorker, NodeStats, ProcKind, PullError, Shape, ToNode, ToWorker};
use ferry_proto::{FrameError, FrameReader, NodeId, ObjectId, Stream, WorkerId};
use ferry_store::{ObjectView, StoreDir};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The process's runtime, started with `Config::default()` on first use if `init` was not
/// called (as Ray does).
pub(crate) fn runtime() -> Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return rt.check_running().map(|_| rt);
    }
    match crate::init(Config::default()) {
        Ok(()) | Err(Error::AlreadyInitialized) => {}
        Err(e) => return Err(e),
    }
    let rt = RUNTIME.get().ok_or_else(|| Error::NotRunning { detail: "initialisation failed".into() })?;
    rt.check_running().map(|_| rt)
}

/// The anonymous namespace of job `job` (one that set no `Config::namespace`).
pub(crate) fn anonymous_namespace(job: WorkerId) -> String {
    format!("anonymous-{:016x}", job.0)
}

/// The runtime if it was started, without starting it.
pub(crate) fn try_runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// Who this process is in the cluster.
pub(crate) struct Identity {
    pub me: WorkerId,
    pub kind: ProcKind,
    pub token: String,
    pub node_addr: Addr,
    pub store_dir: std::path::PathBuf,
    pub session_dir: std::path::PathBuf,
    /// The node's spill directory, where spilled objects are read from.
    pub spill_dir: Option<std::path::PathBuf>,
    /// Also listen on TCP at this host address (a node with a TCP address).
    pub tcp_host: Option<String>,
}

/// Connections opened to other processes or daemons, one per peer, with what is known of
/// each peer (a process's node; a daemon's address), under one lock.
struct Links<K, V> {
    conns: HashMap<K, Arc<Conn>>,
    about: HashMap<K, V>,
    /// Peers a thread is connecting to now (others wanting the same one wait for it).
    connecting: std::collections::HashSet<K>,
}

impl<K, V> Default for Links<K, V> {
    fn default() -> Self {
        Links { conns: HashMap::new(), about: HashMap::new(), connecting: Default::default() }
    }
}

/// See the module docs.
pub(crate) struct Runtime {
    me: WorkerId,
    node_id: NodeId,
    cfg: Config,
    /// Whether this process records task events (`Config::task_events`, or
    /// `state::set_task_events` since).
    events_on: std::sync::atomic::AtomicBool,
    /// In a worker: its owner table noted something since the last send (what a task
    /// submitted is sent before the task is said to be done).
    noted: std::sync::atomic::AtomicBool,
    token: String,
    store: StoreDir,
    /// The node's arena, mapped once (`None`: the store has none, or it is on another host).
    arena: Option<Arc<ferry_store::Arena>>,
    session_dir: std::path::PathBuf,
    node_addr: Addr,
    node: Arc<Conn>,
    /// Where this process and others listen on TCP (refs carry their owners').
    addrs: Addrs,
    /// Connections to other nodes' daemons, and their addresses.
    daemons: Mutex<Links<NodeId, String>>,
    /// The cluster's nodes as last asked (to find an actor's home daemon).
    cluster: Mutex<Vec<ferry_proto::msg::NodeView>>,
    /// Calls to daemons waiting for their answer, with the connection each went on (its
    /// address: calls on a daemon's link that closes fail at once).
    node_calls: Mutex<HashMap<u64, (usize, mpsc::SyncSender<FromNode>)>>,
    next_call: AtomicU64,
    state: Mutex<OwnerState>,
    /// Connections we opened to other processes, by process.
    peers: Mutex<Links<WorkerId, NodeId>>,
    /// Signalled when a connection to a process is opened or given up.
    peers_cv: std::sync::Condvar,
    /// Nodes the head declared dead, each with the count of deaths then (`deaths`): a
    /// connection to a process there that was opening as it died is closed at once, as
    /// `node_died` closed the others (lock order: `peers`, then this). One opened later is
    /// kept: the head may hear from the node again.
    dead_nodes: Mutex<HashMap<NodeId, u64>>,
    deaths: AtomicU64,
    /// Work that may wait on another process, off the reader threads (see `in_background`).
    helpers: Mutex<peers::Helpers>,
    helpers_cv: std::sync::Condvar,
    /// Processes that connected to this one (borrowers, callers), with their nodes: closed
    /// when their node is declared dead, which ends their borrows here.
    inbound_conns: Mutex<HashMap<WorkerId, (NodeId, Arc<Conn>)>>,
    /// Requests to other processes waiting for their answer.
    peer_calls: Mutex<HashMap<u64, (WorkerId, mpsc::SyncSender<FromWorker>)>>,
    /// Borrows to release, gathered for a moment so that dropping ten thousand refs one by
    /// one sends one message per owner, not ten thousand (see `release_sender`).
    releases: Mutex<Vec<(ObjectId, u32)>>,
    releases_cv: std::sync::Condvar,
    executor: Option<Arc<Executor>>,
    embedded: Mutex<Option<Box<dyn crate::session::EmbeddedNode>>>,
    running: AtomicBool,
    /// Task events not yet sent to the node (see [`events`]).
    events: Mutex<events::EventBuf>,
    /// Would stop the accept loops (they live as long as the process).
    wakes: Mutex<Vec<StopLoop>>,
}

impl Runtime {
    /// Connects to the node daemon, registers, and starts the runtime's threads.
    pub(crate) fn start(
        mut id: Identity,
        cfg: Config,
        embedded: Option<Box<dyn crate::session::EmbeddedNode>>,
        executor: Option<Arc<Executor>>,
    ) -> Result<&'static Runtime> {
        let bind = |dir: &std::path::Path| {
            let sock = peer_socket(dir, id.me);
            UnixListener::bind(&sock)
                .map_err(|e| Error::Connection { detail: format!("cannot listen on {}: {e}", sock.display()) })
        };
        // Listening before registering: the daemon may lease a worker to an owner as soon as
        // it registers. (A driver that joins by address learns the directory from the answer.)
        let mut listener = match id.session_dir.as_os_str().is_empty() {
            true => None,
            false => Some(bind(&id.session_dir)?),
        };
        let tcp_listener = match &id.tcp_host {
            Some(h) => Some(
                std::net::TcpListener::bind((h.as_str(), 0))
                    .map_err(|e| Error::Connection { detail: format!("cannot listen on TCP at {h}: {e}") })?,
            ),
            None => None,
        };
        let my_tcp = tcp_listener.as_ref().and_then(|l| l.local_addr().ok());
        let (conn, mut reader, node_id) = connect(&id.node_addr, &id.token, id.me, cfg.max_frame_bytes)
            .map_err(|e| Error::Connection { detail: format!("node daemon at {}: {e}", id.node_addr) })?;
        let conn = Arc::new(conn);
        let listen = Addr::Unix(peer_socket(&id.session_dir, id.me));
        let exe = match id.kind {
            ProcKind::Driver => this_program(),
            _ => None,
        };
        let tcp = my_tcp.map(|a| a.to_string());
        conn.send(&ToNode::Register { kind: id.kind, pid: std::process::id(), listen, tcp, exe, node: Some(node_id) })
            .map_err(|e| Error::Connection { detail: e.to_string() })?;
        // Nothing that comes before the answer concerns a process that is not yet registered.
        loop {
            match reader.read::<FromNode>() {
                Ok(FromNode::Registered { session_dir, store_dir, spill_dir, .. }) => {
                    // The node's directories (what a driver that joined by address did not know).
                    id.session_dir = session_dir;
                    id.store_dir = store_dir;
                    id.spill_dir = spill_dir;
                    break;
                }
                Ok(_) => continue,
                Err(e) => return Err(Error::Connection { detail: format!("registration failed: {e}") }),
            }
        }
        let listener = match listener.take() {
            Some(l) => l,
            None => bind(&id.session_dir)?,
        };
        let limits = OwnerLimits {
            max_in_flight: cfg.max_tasks_in_flight_per_worker,
            max_pending_requests: cfg.max_pending_lease_requests.max(1),
            max_lineage_bytes: cfg.max_lineage_bytes,
            job_weight: cfg.job_weight,
        };
        let task_events = cfg.task_events;
        let arena = ferry_store::Arena::open(&id.store_dir).ok();
        let rt = Runtime {
            me: id.me,
            node_id,
            token: id.token,
            store: match id.spill_dir {
                Some(spill) => StoreDir::open(id.store_dir).with_spill(spill),
                None => StoreDir::open(id.store_dir),
            },
            arena,
            session_dir: id.session_dir,
            node_addr: id.node_addr.clone(),
            cfg,
            node: conn,
            events_on: std::sync::atomic::AtomicBool::new(task_events),
            noted: std::sync::atomic::AtomicBool::new(false),
            addrs: Addrs::new(id.me, my_tcp),
            daemons: Default::default(),
            cluster: Mutex::new(Vec::new()),
            node_calls: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            state: Mutex::new({
                let mut st = OwnerState::new(id.me, node_id, limits);
                st.set_task_events(task_events);
                st
            }),
            peers: Default::default(),
            peers_cv: std::sync::Condvar::new(),
            dead_nodes: Default::default(),
            deaths: AtomicU64::new(0),
            helpers: Default::default(),
            helpers_cv: std::sync::Condvar::new(),
            inbound_conns: Mutex::new(HashMap::new()),
            peer_calls: Mutex::new(HashMap::new()),
            releases: Mutex::new(Vec::new()),
            releases_cv: std::sync::Condvar::new(),
            executor,
            embedded: Mutex::new(embedded),
            running: AtomicBool::new(true),
            events: Default::default(),
            wakes: Mutex::new(Vec::new()),
        };
        if RUNTIME.set(rt).is_err() {
            return Err(Error::AlreadyInitialized);
        }
        let rt: &'static Runtime = RUNTIME.get().expect("just set");
        if let Some(a) = &rt.arena {
            // Views are dropped anywhere, locks held: the unpin is queued, and goes out with
            // the next message to the daemon (before any later `Create`, so the extent can be
            // reused at once) or the next housekeeping tick.
            a.set_release(move |at| {
                let _ = rt.node.queue(&ToNode::Unpin { at: vec![at] });
            });
        }
        thread::Builder::new()
            .name("ferry-node-rx".into())
            .spawn(move || rt.daemon_reader(node_id, reader))
            .map_err(|e| Error::Connection { detail: e.to_string() })?;
        thread::Builder::new()
            .name("ferry-housekeeping".into())
            .spawn(move || rt.housekeeping())
            .map_err(|e| Error::Connection { detail: e.to_string() })?;
        thread::Builder::new()
            .name("ferry-release".into())
            .spawn(move || rt.release_sender())
            .map_err(|e| Error::Connection { detail: e.to_string() })?;
        let mut listeners = vec![(Listener::Unix(listener), Limits::unix())];
        if let Some(l) = tcp_listener {
            listeners.push((Listener::Tcp(l), Limits::tcp()));
        }
        for (l, limits) in listeners {
            let (wake, rx) = wake_pair().map_err(|e| Error::Connection { detail: e.to_string() })?;
            rt.wakes.locked().push(wake);
            let gate = Gate::new("ferry", limits);
            thread::Builder::new()
                .name("ferry-accept".into())
                .spawn(move || rt.accept_loop(l, rx, gate))
                .map_err(|e| Error::Connection { detail: e.to_string() })?;
        }
        Ok(rt)
    }

    pub(crate) fn init_lock() -> MutexGuard<'static, ()> {
        INIT.locked()
    }

    pub(crate) fn is_set() -> bool {
        RUNTIME.get().is_some()
    }

    fn check_running(&self) -> Result<()> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::NotRunning { detail: "ferry::shutdown was called".into() })
        }
    }

    /// This process's id.
    /// An error nobody read (see `UnhandledError`): to the program's hook, else printed.
    fn report_unhandled(&self, u: crate::owner::UnhandledError) {
        if let Some(hook) = &self.cfg.on_unhandled_error {
            hook(&u);
            return;
        }
        let at = match (u.worker, u.node) {
            (Some(w), Some(n)) => format!(" (it ran on worker {w:?} of node {n:?})"),
            (Some(w), None) => format!(" (it ran on worker {w:?})"),
            _ => String::new(),
        };
        tracing::error!(
            "unhandled error in task {}{at}: {}. Every ref to its result was dropped without a `get`; get one to \
             handle it, or set Config::on_unhandled_error",
            u.task,
            u.error
        );
    }

    /// This worker's executor (none in a driver).
    pub(crate) fn executor(&self) -> Option<&Arc<Executor>> {
        self.executor.as_ref()
    }

    /// In a worker's task: lends its CPU to the node until the guard goes (as a `get` does).
    pub(crate) fn lend_cpu(&self) -> Option<crate::executor::BlockedGuard> {
        self.executor.as_ref().and_then(|x| x.enter_blocked(&self.node))
    }

    /// The actor this process hosts, if any.
    pub(crate) fn hosting(&self) -> Option<crate::executor::Hosting> {
        self.executor.as_ref().and_then(|x| x.hosting()).cloned()
    }

    /// The job of the work this thread does: the running task's, else the hosted actor's,
    /// else this process's own (a driver is its job).
    pub(crate) fn job(&self) -> crate::owner::Job {
        use crate::owner::Job;
        if let Some(r) = crate::executor::running() {
            return Job { id: r.job, namespace: crate::executor::running_namespace() };
        }
        match self.executor.as_ref().and_then(|x| x.hosting()) {
            Some(h) => Job { id: h.job, namespace: h.namespace.clone() },
            None => Job { id: self.me, namespace: self.cfg.namespace.as_deref().map(Arc::from) },
        }
    }

    /// The namespace names are looked up and registered in: the job's, or, when it set none,
    /// its own anonymous one (as in Ray).
    pub(crate) fn namespace(&self) -> String {
        let job = self.job();
        match job.namespace {
            Some(n) => n.to_string(),
            None => anonymous_namespace(job.id),
        }
    }

    pub(crate) fn me(&self) -> WorkerId {
        self.me
    }

    /// The node this process runs on.
    pub(crate) fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub(crate) fn config(&self) -> &Config {
        &self.cfg
    }

    /// Where this process's node and store are, and the token to reach them.
    pub(crate) fn session_info(&self) -> crate::SessionInfo {
        crate::SessionInfo {
            node_addr: self.node_addr.clone(),
            token: self.token.clone(),
            store_dir: self.store.path().to_path_buf(),
            session_dir: self.session_dir.clone(),
            worker_pids: self.worker_pids(),
            me: self.me,
            listen: Addr::Unix(peer_socket(&self.session_dir, self.me)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, OwnerState> {
        self.state.locked()
    }

    /// Carries out the effects of a state change (after the lock is released).
    pub(crate) fn apply(&'static self, mut fx: Effects) {
        for (to, m) in fx.to_daemons {
            match to {
                Daemon::Node(n) => self.send_to_node(n, &m),
                Daemon::HomeOf(actor) => {
                    let _ = self.actor_home(actor).send(&m);
                }
            }
        }
        if !fx.frees.is_empty() {
            fx.frees.sort_unstable_by_key(|(n, _)| *n);
            for chunk in fx.frees.chunk_by(|a, b| a.0 == b.0) {
                let objects = chunk.iter().map(|(_, o)| *o).collect();
                self.send_to_node(chunk[0].0, &ToNode::Free { objects });
            }
        }
        if !fx.to_workers.is_empty() {
            // A worker without a connection is being reported lost, and a failed send
            // surfaces as its loss on its reader thread: either way the message is moot.
            let sends: Vec<_> = {
                let peers = self.peers.locked();
                fx.to_workers.into_iter().filter_map(|(w, m)| Some((peers.conns.get(&w)?.clone(), m))).collect()
            };
            for (conn, m) in sends {
                let _ = conn.send(&m);
            }
        }
        if !fx.replies.is_empty() {
            // Answers go on the connection the asker opened to us; one that closed has gone.
            let sends: Vec<_> = {
                let inbound = self.inbound_conns.locked();
                fx.replies.into_iter().filter_map(|(w, m)| Some((inbound.get(&w)?.1.clone(), m))).collect()
            };
            for (conn, m) in sends {
                let _ = conn.send(&m);
            }
        }
        if !fx.releases.is_empty() {
            let mut r = self.releases.locked();
            if r.is_empty() {
                self.releases_cv.notify_one();
            }
            r.append(&mut fx.releases);
        }
        for u in fx.unhandled {
            self.report_unhandled(u);
        }
        for (peer, m) in fx.to_peers {
            let sent =
                self.peer_conn(peer).map_err(|e| e.to_string()).and_then(|c| c.send(&m).map_err(|e| e.to_string()));
            if let Err(e) = sent {
                // Its reader reports the loss if it had a connection; otherwise do it here.
                if !self.peers.locked().conns.contains_key(&peer) {
                    self.with_state(|st, fx| st.peer_lost(peer, &format!("cannot reach it: {e}"), fx));
                }
            }
        }
    }

    /// Sends the gathered releases, one message per owner, a moment after the first one
    /// (nothing waits for a release: it only lets an owner free memory).
    fn release_sender(&'static self) {
        loop {
            {
                let mut r = self.releases.locked();
                while r.is_empty() {
                    r = self.releases_cv.wait_locked(r);
                }
            }
            thread::sleep(Duration::from_micros(500));
            let mut batch = std::mem::take(&mut *self.releases.locked());
            batch.sort_unstable_by_key(|(id, _)| id.owner());
            let mut fx = Effects::default();
            for chunk in batch.chunk_by(|a, b| a.0.owner() == b.0.owner()) {
                fx.to_peers.push((chunk[0].0.owner(), ToWorker::ReleaseBorrows { objects: chunk.to_vec() }));
            }
            self.apply(fx);
        }
    }

    /// Runs `f` on the owner table, then carries out its effects.
    pub(crate) fn with_state<R>(&'static self, f: impl FnOnce(&mut OwnerState, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let r = {
            let mut st = self.lock();
            let noted = st.notes_len();
            let r = f(&mut st, &mut fx);
            // The clock is read once for the notes a change made, and only then: most
            // changes note nothing.
            if st.notes_len() > noted {
                st.stamp_notes(noted, events::now_us());
                if self.executor.is_some() {
                    self.noted.store(true, Ordering::Relaxed);
                }
            }
            r
        };
        self.apply(fx);
        r
    }

    /// Returns leases idle past the timeout. A process without leases (most actors, idle
    /// workers) checks rarely: a node may run a thousand of them.
    fn housekeeping(&'static self) {
        let mut holding = false;
        while self.running.load(Ordering::Acquire) {
            let tick = self.cfg.lease_idle_timeout.min(Duration::from_millis(200));
            thread::sleep(if holding { tick / 4 } else { tick });
            if let Some(cutoff) = Instant::now().checked_sub(self.cfg.lease_idle_timeout) {
                holding = self.with_state(|st, fx| {
                    st.return_idle_leases(Some(cutoff), fx);
                    st.num_leases() > 0
                });
            }
            self.tick_task_events();
            // Unpins queued since (see `init`).
            let _ = self.node.flush();
        }
    }

    pub(crate) fn shutdown(&'static self) {
        if !self.running.swap(false, Ordering::AcqRel) {
            return;
        }
        // What happened last is recorded too.
        self.flush_task_events();
        self.with_state(|st, fx| {
            st.fail_all(Error::NotRunning { detail: "ferry::shutdown was called while it was pending".into() }, fx)
        });
        let node = self.embedded.locked().take();
        if let Some(n) = node {
            n.shutdown();
        }
        let _ = std::fs::remove_file(peer_socket(&self.session_dir, self.me));
    }

    /// Cleanup at process exit without taking locks that may be held.
    pub(crate) fn emergency_cleanup(&self) {
        let _ = std::fs::remove_file(peer_socket(&self.session_dir, self.me));
        if let Ok(g) = self.embedded.try_lock() {
            if let Some(n) = g.as_ref() {
                n.emergency_cleanup();
            }
        }
    }

    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.embedded.locked().as_ref().map(|n| n.worker_pids()).unwrap_or_default()
    }
}

/// This process's binary, as nodes are told of it: with its content hash when the job was
/// started by `ferry submit` (then a node without it fetches it from the head).
fn this_program() -> Option<ferry_proto::msg::Program> {
    let path = std::env::current_exe().ok()?;
    let hash = std::env::var(ferry_proto::layout::worker_env::EXE_HASH).ok().filter(|h| !h.is_empty());
    Some(ferry_proto::msg::Program { path, hash })
}

/// Where process `id` of a session listens.
pub(crate) fn peer_socket(session_dir: &std::path::Path, id: WorkerId) -> std::path::PathBuf {
    ferry_proto::layout::socket_of(session_dir, id)
}
