//! The per-process runtime: the owner table, the connection to the node daemon, the
//! connections to leased workers, and (in workers) the executor.
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

use crate::config::Config;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::owner::{ArgDraft, Daemon, Effects, ObjState, OwnerLimits, OwnerState, Ready};
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

/// See the module docs.
pub(crate) struct Runtime {
    pub me: WorkerId,
    pub node_id: NodeId,
    pub cfg: Config,
    pub token: String,
    pub store: StoreDir,
    pub session_dir: std::path::PathBuf,
    pub node_addr: Addr,
    node: Arc<Conn>,
    /// Where processes of other nodes reach this one.
    pub my_tcp: Option<SocketAddr>,
    /// Where other processes listen on TCP, learnt from the refs they own.
    addrs: std::sync::RwLock<HashMap<WorkerId, SocketAddr>>,
    /// Connections to other nodes' daemons, and their addresses.
    daemons: Mutex<HashMap<NodeId, Arc<Conn>>>,
    daemon_addrs: Mutex<HashMap<NodeId, String>>,
    /// The cluster's nodes as last asked (to find an actor's home daemon).
    cluster: Mutex<Vec<ferry_proto::msg::NodeView>>,
    /// Calls to daemons waiting for their answer, with the connection each went on (its
    /// address: calls on a daemon's link that closes fail at once).
    node_calls: Mutex<HashMap<u64, (usize, mpsc::SyncSender<FromNode>)>>,
    next_call: AtomicU64,
    state: Mutex<OwnerState>,
    /// Connections we opened to other processes, by process.
    peers: Mutex<HashMap<WorkerId, Arc<Conn>>>,
    /// The node of each process connected to (from its handshake): when a node is declared
    /// dead, its processes are lost at once, even if their sockets stay open.
    peer_nodes: Mutex<HashMap<WorkerId, NodeId>>,
    /// Processes that connected to this one (borrowers, callers), with their nodes: closed
    /// when their node is declared dead, which ends their borrows here.
    inbound_conns: Mutex<HashMap<WorkerId, (NodeId, Arc<Conn>)>>,
    /// Requests to other processes waiting for their answer.
    peer_calls: Mutex<HashMap<u64, (WorkerId, mpsc::SyncSender<FromWorker>)>>,
    /// Borrows to release, gathered for a moment so that dropping ten thousand refs one by
    /// one sends one message per owner, not ten thousand (see `release_sender`).
    releases: Mutex<Vec<(ObjectId, u32)>>,
    releases_cv: std::sync::Condvar,
    pub executor: Option<Arc<Executor>>,
    embedded: Mutex<Option<Box<dyn crate::session::EmbeddedNode>>>,
    running: AtomicBool,
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
        };
        let rt = Runtime {
            me: id.me,
            node_id,
            token: id.token,
            store: match id.spill_dir {
                Some(spill) => StoreDir::open(id.store_dir).with_spill(spill),
                None => StoreDir::open(id.store_dir),
            },
            session_dir: id.session_dir,
            node_addr: id.node_addr.clone(),
            cfg,
            node: conn,
            my_tcp,
            addrs: Default::default(),
            daemons: Default::default(),
            daemon_addrs: Default::default(),
            cluster: Mutex::new(Vec::new()),
            node_calls: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            state: Mutex::new(OwnerState::new(id.me, node_id, limits)),
            peers: Mutex::new(HashMap::new()),
            peer_nodes: Mutex::new(HashMap::new()),
            inbound_conns: Mutex::new(HashMap::new()),
            peer_calls: Mutex::new(HashMap::new()),
            releases: Mutex::new(Vec::new()),
            releases_cv: std::sync::Condvar::new(),
            executor,
            embedded: Mutex::new(embedded),
            running: AtomicBool::new(true),
            wakes: Mutex::new(Vec::new()),
        };
        if RUNTIME.set(rt).is_err() {
            return Err(Error::AlreadyInitialized);
        }
        let rt: &'static Runtime = RUNTIME.get().expect("just set");
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
            rt.wakes.lock().unwrap_or_else(|e| e.into_inner()).push(wake);
            let gate = Gate::new("ferry", limits);
            thread::Builder::new()
                .name("ferry-accept".into())
                .spawn(move || rt.accept_loop(l, rx, gate))
                .map_err(|e| Error::Connection { detail: e.to_string() })?;
        }
        Ok(rt)
    }

    pub(crate) fn init_lock() -> MutexGuard<'static, ()> {
        INIT.lock().unwrap_or_else(|e| e.into_inner())
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, OwnerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
                let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                fx.to_workers.into_iter().filter_map(|(w, m)| Some((peers.get(&w)?.clone(), m))).collect()
            };
            for (conn, m) in sends {
                let _ = conn.send(&m);
            }
        }
        if !fx.replies.is_empty() {
            // Answers go on the connection the asker opened to us; one that closed has gone.
            let sends: Vec<_> = {
                let inbound = self.inbound_conns.lock().unwrap_or_else(|e| e.into_inner());
                fx.replies.into_iter().filter_map(|(w, m)| Some((inbound.get(&w)?.1.clone(), m))).collect()
            };
            for (conn, m) in sends {
                let _ = conn.send(&m);
            }
        }
        if !fx.releases.is_empty() {
            let mut r = self.releases.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_empty() {
                self.releases_cv.notify_one();
            }
            r.append(&mut fx.releases);
        }
        for (peer, m) in fx.to_peers {
            let sent =
                self.peer_conn(peer).map_err(|e| e.to_string()).and_then(|c| c.send(&m).map_err(|e| e.to_string()));
            if let Err(e) = sent {
                // Its reader reports the loss if it had a connection; otherwise do it here.
                if !self.peers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&peer) {
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
                let mut r = self.releases.lock().unwrap_or_else(|e| e.into_inner());
                while r.is_empty() {
                    r = self.releases_cv.wait(r).unwrap_or_else(|e| e.into_inner());
                }
            }
            thread::sleep(Duration::from_micros(500));
            let mut batch = std::mem::take(&mut *self.releases.lock().unwrap_or_else(|e| e.into_inner()));
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
            f(&mut st, &mut fx)
        };
        self.apply(fx);
        r
    }

    // ---- the node connection ----

    /// Sends a request to the daemon and waits for its answer.
    pub(crate) fn node_call(&self, make: impl FnOnce(u64) -> ToNode) -> Result<FromNode> {
        self.call_at(&self.node, make)
    }

    /// Sends a request to the daemon on `conn` (this node's or another's) and waits for its
    /// answer.
    pub(crate) fn call_at(&self, conn: &Conn, make: impl FnOnce(u64) -> ToNode) -> Result<FromNode> {
        let req = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        self.node_calls.lock().unwrap_or_else(|e| e.into_inner()).insert(req, (conn as *const Conn as usize, tx));
        if let Err(e) = conn.send(&make(req)) {
            self.node_calls.lock().unwrap_or_else(|e| e.into_inner()).remove(&req);
            return Err(Error::Connection { detail: format!("node daemon: {e}") });
        }
        rx.recv_timeout(Duration::from_secs(60)).map_err(|e| {
            self.node_calls.lock().unwrap_or_else(|e| e.into_inner()).remove(&req);
            let detail = match e {
                mpsc::RecvTimeoutError::Timeout => "the node daemon did not answer within 60 s",
                mpsc::RecvTimeoutError::Disconnected => "the daemon's connection closed before it answered",
            };
            Error::Connection { detail: detail.into() }
        })
    }

    pub(crate) fn send_node(&self, m: &ToNode) {
        let _ = self.node.send(m);
    }

    /// Reads what a daemon sends: this node's (`node == self.node_id`), or another node's
    /// that this process holds leases of.
    fn daemon_reader(&'static self, node: NodeId, mut reader: FrameReader<Stream>) {
        loop {
            let msg = match reader.read::<FromNode>() {
                Ok(m) => m,
                Err(e) if node == self.node_id => {
                    self.node_lost(e);
                    return;
                }
                Err(_) => {
                    self.daemon_lost(node);
                    return;
                }
            };
            match msg {
                FromNode::LeaseGranted { req, lease: theirs, worker, addr } => match self.worker_conn(worker, &addr) {
                    Ok(_) => {
                        let now = Instant::now();
                        self.with_state(|st, fx| st.on_lease_granted(req, (node, theirs), worker, now, fx))
                    }
                    Err(e) => {
                        tracing::warn!("cannot reach leased worker {worker:?} at {addr}: {e}");
                        self.with_state(|st, fx| st.on_lease_unreachable(req, (node, theirs), fx))
                    }
                },
                FromNode::LeaseSpillback { req, node: to, addr } => self.spill_back(req, to, &addr),
                FromNode::LeaseInfeasible { req, reason } => {
                    self.with_state(|st, fx| st.on_lease_infeasible(req, reason, fx))
                }
                FromNode::Pulled { req, .. } => self.answer_call(req, msg),
                FromNode::RecallIdleLeases => self.with_state(|st, fx| st.on_recall(fx)),
                FromNode::EndRecall => self.with_state(|st, _| st.on_end_recall()),
                FromNode::RetireIfIdle if self.executor.is_some() => {
                    // A worker that owns objects or tasks in use is not idle (as in Ray): its
                    // objects would fail with `OwnerDied` under those who hold them.
                    if self.lock().owns_anything() {
                        let _ = self.node.send(&ToNode::StillInUse);
                    } else {
                        std::process::exit(0);
                    }
                }
                FromNode::RetireIfIdle => {}
                FromNode::WorkerDied { worker, reason } => self.worker_lost(worker, &reason),
                FromNode::Sealed { req, .. }
                | FromNode::Room { req, .. }
                | FromNode::Stats { req, .. }
                | FromNode::Ack { req, .. }
                | FromNode::NamedActor { req, .. } => self.answer_call(req, msg),
                FromNode::ActorState { req, actor, location } => {
                    let resolving = self.lock().take_resolve(req);
                    match resolving {
                        Some(actor) => self.actor_located(actor, location),
                        None => self.answer_call(req, FromNode::ActorState { req, actor, location }),
                    }
                }
                FromNode::Spilled { objects } => self.with_state(|st, _| {
                    for id in objects {
                        st.drop_view(id);
                    }
                }),
                FromNode::Inventory { req, .. } | FromNode::Cluster { req, .. } => self.answer_call(req, msg),
                // Nothing runs on other nodes yet (issue 5's scheduling).
                FromNode::NodeDied { node: dead, .. } => self.node_died(dead),
                FromNode::Log { node, stderr, lines } => print_log(node != self.node_id, node, stderr, &lines),
                FromNode::ActorDied { actor, reason, restarting } => {
                    self.with_state(|st, fx| st.on_actor_died(actor, &reason, restarting, fx))
                }
                FromNode::BecomeActor { actor, spec } => match &self.executor {
                    Some(x) => x.become_actor(actor, spec),
                    None => tracing::warn!("a driver was asked to host an actor; ignored"),
                },
                // Creation failures also reach callers through `ActorState` (dead).
                FromNode::ActorCreated { .. }
                | FromNode::Registered { .. }
                | FromNode::ObjectData { .. }
                | FromNode::BinaryData { .. }
                | FromNode::JobStarted { .. }
                | FromNode::JobOutput { .. }
                | FromNode::JobEnded { .. }
                | FromNode::Jobs { .. }
                | FromNode::ControlAt { .. } => {}
            }
        }
    }

    /// A daemon sent a lease request on to node `to`: ask that node, which grants or queues it
    /// (`Placement::Here`). If it cannot be reached, this node queues it after all.
    fn spill_back(&'static self, req: u64, to: NodeId, addr: &str) {
        let at = match self.daemon_conn(to, addr) {
            Ok(_) => to,
            Err(e) => {
                tracing::warn!("cannot reach node {to} at {addr} ({e}); the task waits on this node");
                self.node_id
            }
        };
        self.with_state(|st, fx| st.on_lease_spilled(req, at, fx));
    }

    /// Sends `m` to node `n`'s daemon (dropped if that node is unknown or gone: then what it
    /// would have done, freeing or returning, no longer matters).
    fn send_to_node(&'static self, n: NodeId, m: &ToNode) {
        if n == self.node_id {
            let _ = self.node.send(m);
            return;
        }
        let known = self.daemons.lock().unwrap_or_else(|e| e.into_inner()).get(&n).cloned();
        let conn = match known {
            Some(c) => Some(c),
            None => {
                let addr = self.daemon_addrs.lock().unwrap_or_else(|e| e.into_inner()).get(&n).cloned();
                addr.and_then(|a| self.daemon_conn(n, &a).ok())
            }
        };
        if let Some(c) = conn {
            let _ = c.send(m);
        }
    }

    /// The connection to node `n`'s daemon at `addr`, opened (and registered as a client)
    /// on first use.
    fn daemon_conn(&'static self, n: NodeId, addr: &str) -> Result<Arc<Conn>> {
        let mut daemons = self.daemons.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = daemons.get(&n) {
            return Ok(c.clone());
        }
        self.daemon_addrs.lock().unwrap_or_else(|e| e.into_inner()).insert(n, addr.to_string());
        let err = |e: String| Error::Connection { detail: format!("node {n} at {addr}: {e}") };
        let (conn, mut reader, _) =
            connect(&Addr::Tcp(addr.to_string()), &self.token, self.me, self.cfg.max_frame_bytes)
                .map_err(|e| err(e.to_string()))?;
        let register = ToNode::Register {
            kind: ProcKind::Client,
            pid: std::process::id(),
            listen: Addr::Unix(peer_socket(&self.session_dir, self.me)),
            tcp: self.my_tcp.map(|a| a.to_string()),
            exe: this_program(),
            node: Some(self.node_id),
        };
        conn.send(&register).map_err(|e| err(e.to_string()))?;
        reader.get_ref().set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| err(e.to_string()))?;
        loop {
            match reader.read::<FromNode>() {
                Ok(FromNode::Registered { .. }) => break,
                Ok(_) => continue,
                Err(e) => return Err(err(format!("registration failed: {e}"))),
            }
        }
        reader.get_ref().set_read_timeout(None).map_err(|e| err(e.to_string()))?;
        let conn = Arc::new(conn);
        daemons.insert(n, conn.clone());
        drop(daemons);
        thread::Builder::new()
            .name("ferry-daemon-rx".into())
            .spawn(move || self.daemon_reader(n, reader))
            .map_err(|e| err(e.to_string()))?;
        Ok(conn)
    }

    /// The head declared node `n` dead (its heartbeats stopped: it may be frozen or cut off, its
    /// sockets still open). Its workers are lost now rather than when (if) their connections
    /// break: their tasks are retried or fail, and requests waiting there are asked again.
    fn node_died(&'static self, n: NodeId) {
        if n == self.node_id {
            return;
        }
        let workers = self.with_state(|st, _| {
            st.node_dead(n);
            st.workers_leased_at(n)
        });
        // And every other process there this one talks to: owners it borrows from (their
        // objects fail with `OwnerDied`), actors it calls.
        let others: Vec<WorkerId> = {
            let mut pn = self.peer_nodes.lock().unwrap_or_else(|e| e.into_inner());
            let w = pn.iter().filter(|(_, node)| **node == n).map(|(w, _)| *w).collect();
            pn.retain(|_, node| *node != n);
            w
        };
        for w in workers.into_iter().chain(others) {
            self.worker_lost(w, &format!("its node {n} was declared dead (no heartbeat)"));
        }
        // Processes there that connected to this one: closing their links ends their borrows
        // (and, for a worker, the tasks of owners there) as if they had exited.
        for (_, (node, c)) in self.inbound_conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if *node == n {
                c.shutdown();
            }
        }
        self.daemon_lost(n);
    }

    /// Another node's daemon is gone: requests waiting there are asked of this node again
    /// (its workers, and so the leases, go with it and are reported by their connections).
    fn daemon_lost(&'static self, n: NodeId) {
        if let Some(c) = self.daemons.lock().unwrap_or_else(|e| e.into_inner()).remove(&n) {
            c.shutdown();
            // Calls waiting for its answer fail now (their senders go).
            let at = Arc::as_ptr(&c) as usize;
            self.node_calls.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, (c, _)| *c != at);
        }
        // The view as last asked, never asked now: this runs on a daemon's reader thread, which
        // must not wait for an answer only it can read.
        let control = self.cluster.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|v| v.head && v.node == n);
        // Requests for actors' addresses sent there will not be answered: asked again below,
        // once the control store is back (or of whatever answers for a node that is gone).
        let stalled = self.lock().forget_resolves_at(ActorId::tag_of(n));
        if self.running.load(Ordering::Acquire) {
            // The control store is gone, and is started again without knowing who held the
            // actors homed at it: this process holds its again, once it is back.
            let holds = if control { self.lock().held_actors_at(ActorId::tag_of(n)) } else { Vec::new() };
            if !holds.is_empty() || !stalled.is_empty() {
                let _ = thread::Builder::new().name("ferry-rehold".into()).spawn(move || {
                    if control {
                        // The head restarts it within moments; a head gone for good takes this
                        // node with it (after its grace), which fails every call. Bounded anyway.
                        let end = Instant::now() + Duration::from_secs(300);
                        let c = loop {
                            match self.control_conn() {
                                Ok(c) => break c,
                                Err(_) if Instant::now() < end && self.running.load(Ordering::Acquire) => {}
                                Err(e) => {
                                    let why = format!("its home, the control store, did not come back: {e}");
                                    self.with_state(|st, fx| st.home_gone(&stalled, &why, fx));
                                    return;
                                }
                            }
                        };
                        for (actor, count) in holds {
                            let _ = self.call_at(&c, |req| ToNode::HoldActorAgain { req, actor, count });
                        }
                    }
                    self.with_state(|st, fx| st.resolve_again(&stalled, fx));
                });
            }
        }
        self.with_state(|st, fx| st.on_daemon_lost(n, fx));
    }

    /// The cluster's nodes, asked of this node's daemon (`refresh`) or as last asked.
    fn cluster_view(&self, refresh: bool) -> Vec<ferry_proto::msg::NodeView> {
        if !refresh {
            let known = self.cluster.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if !known.is_empty() {
                return known;
            }
        }
        match self.node_call(|req| ToNode::ClusterStatus { req }) {
            Ok(FromNode::Cluster { nodes, .. }) => {
                *self.cluster.lock().unwrap_or_else(|e| e.into_inner()) = nodes.clone();
                nodes
            }
            _ => Vec::new(),
        }
    }

    /// The daemon keeping `actor`'s entry: its home node, whose tag the id carries (this
    /// node's daemon if that node is unknown: it answers that there is no such actor).
    pub(crate) fn actor_home(&'static self, actor: ActorId) -> Arc<Conn> {
        let tag = actor.home_tag();
        if tag == ActorId::tag_of(self.node_id) {
            return self.node.clone();
        }
        let control = self.cluster_view(false).iter().any(|v| v.head && ActorId::tag_of(v.node) == tag);
        if control {
            return self.control_conn().unwrap_or_else(|_| self.node.clone());
        }
        for refresh in [false, true] {
            let view = self.cluster_view(refresh);
            if let Some(v) = view.iter().find(|v| ActorId::tag_of(v.node) == tag && v.alive) {
                if let Ok(c) = self.daemon_conn(v.node, &v.addr) {
                    return c;
                }
            }
        }
        self.node.clone()
    }

    /// A new actor id. Named and detached actors live at the head (the cluster's directory
    /// of names); others at this node, which also places them.
    pub(crate) fn new_actor_id(&'static self, at_head: bool) -> ActorId {
        let home = match at_head {
            true => self.cluster_view(false).iter().find(|v| v.head).map(|v| v.node).unwrap_or(self.node_id),
            false => self.node_id,
        };
        ActorId::new(home, ferry_proto::ids::random_u64())
    }

    /// The control store (this node's daemon when there is no cluster, which then plays its
    /// part). While it restarts (the head starts it again within milliseconds) this waits for
    /// it, up to 10 s.
    pub(crate) fn control_conn(&'static self) -> Result<Arc<Conn>> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(v) = self.cluster_view(false).into_iter().find(|v| v.head && v.node != self.node_id) else {
                return Ok(self.node.clone());
            };
            match self.daemon_conn(v.node, &v.addr) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= end => {
                    return Err(Error::Connection {
                        detail: format!(
                            "the control store at {} did not answer for 10 s ({e}); the head node starts it \
                             again when it dies: see `ferry status` on the head",
                            v.addr
                        ),
                    })
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Where process `w` listens on TCP (learnt from a ref it owns), for processes of other
    /// nodes; this process's own address for itself.
    pub(crate) fn tcp_addr_of(&self, w: WorkerId) -> Option<SocketAddr> {
        if w == self.me {
            return self.my_tcp;
        }
        self.addrs.read().unwrap_or_else(|e| e.into_inner()).get(&w).copied()
    }

    pub(crate) fn learn_addr(&self, w: WorkerId, a: SocketAddr) {
        if w == self.me {
            return;
        }
        let known = self.addrs.read().unwrap_or_else(|e| e.into_inner()).get(&w) == Some(&a);
        if !known {
            self.addrs.write().unwrap_or_else(|e| e.into_inner()).insert(w, a);
        }
    }

    fn answer_call(&self, req: u64, msg: FromNode) {
        if let Some((_, tx)) = self.node_calls.lock().unwrap_or_else(|e| e.into_inner()).remove(&req) {
            let _ = tx.send(msg);
        }
    }

    /// Connects to a resolved actor's worker (outside the owner lock) and lets its calls go.
    fn actor_located(&'static self, actor: ferry_proto::msg::ActorId, location: ferry_proto::msg::ActorLocation) {
        use crate::owner::Located;
        use ferry_proto::msg::ActorLocation;
        let at = match location {
            ActorLocation::Alive { worker, addr, .. } => match self.worker_conn(worker, &addr) {
                Ok(_) => Located::At(worker),
                Err(_) => Located::Unreachable(worker),
            },
            ActorLocation::Dead { reason } => Located::Dead(reason),
        };
        self.with_state(|st, fx| st.actor_resolved(actor, at, fx));
    }

    fn node_lost(&'static self, e: FrameError) {
        if self.executor.is_some() {
            // A worker without its daemon has no purpose: its node is gone or stopping.
            std::process::exit(0);
        }
        if self.running.load(Ordering::Acquire) {
            tracing::error!("lost the connection to the node daemon: {e}");
            self.with_state(|st, fx| {
                st.fail_all(Error::Connection { detail: format!("lost the node daemon: {e}") }, fx)
            });
        }
    }

    // ---- leased workers ----

    /// The connection to another process by id: at its well-known socket if it is on this
    /// node, else at the TCP address its refs carried.
    pub(crate) fn peer_conn(&'static self, peer: WorkerId) -> Result<Arc<Conn>> {
        if let Some(c) = self.peers.lock().unwrap_or_else(|e| e.into_inner()).get(&peer) {
            return Ok(c.clone());
        }
        let unix = peer_socket(&self.session_dir, peer);
        let addr = match self.tcp_addr_of(peer).filter(|_| !unix.exists()) {
            Some(a) => Addr::Tcp(a.to_string()),
            None => Addr::Unix(unix),
        };
        self.worker_conn(peer, &addr)
    }

    /// The connection to `worker`, opened (with its reader thread) on first use.
    fn worker_conn(&'static self, worker: WorkerId, addr: &Addr) -> Result<Arc<Conn>> {
        // Held while connecting, so two threads never open two connections to one process
        // (its replies must come back on one ordered stream).
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = peers.get(&worker) {
            return Ok(c.clone());
        }
        let (conn, reader, node) = connect_from(addr, &self.token, self.me, self.node_id, self.cfg.max_frame_bytes)
            .map_err(|e| Error::Connection { detail: e.to_string() })?;
        let conn = Arc::new(conn);
        peers.insert(worker, conn.clone());
        self.peer_nodes.lock().unwrap_or_else(|e| e.into_inner()).insert(worker, node);
        drop(peers);
        thread::Builder::new()
            .name("ferry-peer-rx".into())
            .spawn(move || self.worker_reader(worker, reader))
            .map_err(|e| Error::Connection { detail: e.to_string() })?;
        Ok(conn)
    }

    fn worker_reader(&'static self, worker: WorkerId, mut reader: FrameReader<Stream>) {
        let reason = loop {
            match reader.read::<FromWorker>() {
                Ok(FromWorker::Done { task, returns, contained, actors }) => {
                    let inside = crate::owner::Inside { refs: contained, actors };
                    let now = Instant::now();
                    self.with_state(|st, fx| st.on_done(task, returns, inside, now, fx))
                }
                Ok(FromWorker::Failed { task, error }) => {
                    let now = Instant::now();
                    self.with_state(|st, fx| st.on_failed(task, error, now, fx))
                }
                Ok(FromWorker::Requeued { tasks }) => self.with_state(|st, fx| st.on_requeued(tasks, fx)),
                Ok(FromWorker::Stolen { tasks }) => self.with_state(|st, fx| st.on_stolen(worker, tasks, fx)),
                Ok(FromWorker::Retained { objects }) => {
                    self.with_state(|st, fx| st.add_borrowers(worker, &objects, fx))
                }
                Ok(FromWorker::Object { object, answer }) => {
                    self.with_state(|st, fx| st.on_object_answer(object, answer, fx))
                }
                Ok(m @ (FromWorker::Ack { .. } | FromWorker::Summary { .. })) => {
                    let req = match &m {
                        FromWorker::Ack { req } | FromWorker::Summary { req, .. } => *req,
                        _ => unreachable!("matched above"),
                    };
                    if let Some((_, tx)) = self.peer_calls.lock().unwrap_or_else(|e| e.into_inner()).remove(&req) {
                        let _ = tx.send(m);
                    }
                }
                Err(FrameError::Closed) => break "its connection closed".to_string(),
                Err(e) => {
                    tracing::warn!("closing connection to process {worker:?}: {e}");
                    break e.to_string();
                }
            }
        };
        self.worker_lost(worker, &reason);
    }

    fn worker_lost(&'static self, worker: WorkerId, reason: &str) {
        if let Some(c) = self.peers.lock().unwrap_or_else(|e| e.into_inner()).remove(&worker) {
            c.shutdown();
        }
        self.peer_nodes.lock().unwrap_or_else(|e| e.into_inner()).remove(&worker);
        // Its unanswered requests fail (their senders are dropped).
        self.peer_calls.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, (p, _)| *p != worker);
        self.with_state(|st, fx| {
            st.on_worker_lost(worker, reason, fx);
            st.peer_lost(worker, reason, fx);
        });
    }

    /// Sends a request to another process and waits for its answer.
    pub(crate) fn peer_call(&'static self, peer: WorkerId, make: impl FnOnce(u64) -> ToWorker) -> Result<FromWorker> {
        let conn = self.peer_conn(peer)?;
        let req = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        self.peer_calls.lock().unwrap_or_else(|e| e.into_inner()).insert(req, (peer, tx));
        if let Err(e) = conn.send(&make(req)) {
            self.peer_calls.lock().unwrap_or_else(|e| e.into_inner()).remove(&req);
            return Err(Error::Connection { detail: format!("process {peer:?}: {e}") });
        }
        rx.recv_timeout(Duration::from_secs(60)).map_err(|e| {
            self.peer_calls.lock().unwrap_or_else(|e| e.into_inner()).remove(&req);
            Error::Connection { detail: format!("process {peer:?} did not answer: {e}") }
        })
    }

    /// Registers this process (or `borrower`) with the owners of `ids` as holding them,
    /// one request per owner, and waits for every answer.
    pub(crate) fn register_borrows(&'static self, ids: Vec<ObjectId>, borrower: WorkerId) {
        let mut ids = ids;
        ids.sort_unstable_by_key(|id| id.owner());
        for chunk in ids.chunk_by(|a, b| a.owner() == b.owner()) {
            let owner = chunk[0].owner();
            let objects = chunk.to_vec();
            // An owner that cannot be reached is dead: its objects fail with OwnerDied on
            // their next `get`, so there is nothing to hold.
            let _ = self.peer_call(owner, |req| ToWorker::AddBorrower { req, objects, borrower });
        }
    }

    /// After `get` decoded a value: registers the borrowed refs it held.
    pub(crate) fn register_decoded(&'static self, new: Vec<ObjectId>) {
        if new.is_empty() {
            return;
        }
        let ids = self.lock().take_unregistered(Some(&new));
        self.register_borrows(ids, self.me);
    }

    /// At the end of a task for `caller`: every borrowed ref still held here and not yet
    /// registered is registered now, before the caller's hold on it (the task's arguments)
    /// ends. Returns those owned by the caller: it counts them when it reads `Retained`.
    pub(crate) fn register_at_task_end(&'static self, caller: WorkerId) -> Vec<ObjectId> {
        let ids = {
            let mut st = self.lock();
            if !st.has_unregistered() {
                return Vec::new();
            }
            st.take_unregistered(None)
        };
        let (callers, others): (Vec<ObjectId>, Vec<ObjectId>) = ids.into_iter().partition(|id| id.owner() == caller);
        self.register_borrows(others, self.me);
        callers
    }

    // ---- connections from other processes ----

    /// Accepts other processes' connections (see `ferry_proto::listen`): each gets a thread
    /// that runs its handshake, then reads what it sends.
    fn accept_loop(&'static self, listener: Listener, wake: WakeRx, gate: Arc<Gate>) {
        accept_loop_on(&listener, &wake, &gate, |stream, adm| {
            let _ = thread::Builder::new().name("ferry-inbound".into()).spawn(move || {
                let (source, gate) = (adm.source(), adm.gate().clone());
                match accept(stream, &self.token, self.node_id, self.cfg.max_frame_bytes, adm) {
                    Ok((conn, reader, hello, _slot)) => {
                        let conn = Arc::new(conn);
                        let mut inb = self.inbound_conns.lock().unwrap_or_else(|e| e.into_inner());
                        inb.insert(hello.from, (hello.node, conn.clone()));
                        drop(inb);
                        self.inbound(hello.from, conn, reader)
                    }
                    Err(e) if !e.worth_logging(source) => {}
                    Err(e) => {
                        gate.log.log(|| format!("ferry: refused a connection from {source}: {e}"));
                    }
                }
            });
        });
    }

    /// Reads what another process sends us: tasks to run (workers only) and requests about
    /// objects we own.
    fn inbound(&'static self, from: WorkerId, conn: Arc<Conn>, mut reader: FrameReader<Stream>) {
        loop {
            match reader.read::<ToWorker>() {
                Ok(m @ (ToWorker::Push(_) | ToWorker::Cancel { .. } | ToWorker::Steal { .. })) => {
                    match &self.executor {
                        Some(x) => x.on_message(&conn, m),
                        None => {
                            tracing::warn!("process {from:?} sent tasks to a driver; closing its connection");
                            break;
                        }
                    }
                }
                Ok(ToWorker::GetObject { object }) => self.with_state(|st, fx| st.on_get_request(from, object, fx)),
                Ok(ToWorker::Remake { object, node }) => {
                    self.with_state(|st, fx| st.on_remake_request(from, object, node, fx))
                }
                Ok(ToWorker::AddBorrower { req, objects, borrower }) => {
                    self.with_state(|st, fx| st.add_borrowers(borrower, &objects, fx));
                    let _ = conn.send(&FromWorker::Ack { req });
                }
                Ok(ToWorker::ReleaseBorrows { objects }) => {
                    self.with_state(|st, fx| st.release_borrows(from, &objects, fx))
                }
                Ok(ToWorker::Summary { req }) => {
                    let (refs, tasks) = {
                        let st = self.lock();
                        (st.summary(), st.table_sizes().1 as u64)
                    };
                    let _ = conn.send(&FromWorker::Summary { req, refs, tasks });
                }
                Err(FrameError::Closed) => break,
                Err(e) => {
                    // Malformed or oversized: drop this connection, keep running.
                    tracing::warn!("closing the connection of process {from:?}: {e}");
                    break;
                }
            }
        }
        conn.shutdown();
        {
            let mut inb = self.inbound_conns.lock().unwrap_or_else(|e| e.into_inner());
            if inb.get(&from).is_some_and(|(_, c)| Arc::ptr_eq(c, &conn)) {
                inb.remove(&from);
            }
        }
        if let Some(x) = &self.executor {
            x.owner_gone(&conn);
        }
        self.with_state(|st, fx| st.peer_lost(from, "its connection closed", fx));
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
        }
    }

    // ---- objects ----

    /// Stores an encoded value this process owns and returns its id.
    pub(crate) fn put_encoded(&'static self, enc: crate::codec::Encoded<'_>) -> Result<ObjectId> {
        if enc.len() <= self.cfg.inline_max_bytes {
            let v = enc.into_vec();
            return Ok(self.with_state(|st, _| st.new_object(ObjState::Ready(Ready::Inline(Arc::new(v))))));
        }
        // Reserve the id first so the file is named for it.
        let id = self.with_state(|st, _| st.new_object(ObjState::Pending));
        let stored = self.write_and_seal(id, &enc);
        let state = match &stored {
            Ok(size) => Ok(Ready::Stored { size: *size, node: self.node_id, view: self.store.map(id).ok() }),
            Err(e) => Err(e.clone()),
        };
        self.with_state(|st, fx| st.finish_put(id, state, fx));
        stored.map(|_| id)
    }

    /// Writes an object into this node's store and has the daemon account for it.
    /// A value built in the store (`BytesMut`) becomes the object without a copy.
    pub(crate) fn write_and_seal(&self, id: ObjectId, enc: &crate::codec::Encoded<'_>) -> Result<u64> {
        let written = match enc {
            crate::codec::Encoded::Staged { path, .. } => self.store.adopt(path, id),
            _ => self.with_room(enc.len() as u64, || self.store.write_parts(id, &enc.parts())),
        };
        let size = written
            .map_err(|e| Error::ObjectStoreFull { detail: format!("cannot write object {id:?} to the store: {e}") })?;
        match self.node_call(|req| ToNode::Seal { req, object: id, size })? {
            FromNode::Sealed { error: None, .. } => Ok(size),
            FromNode::Sealed { error: Some(e), .. } => Err(Error::ObjectStoreFull { detail: e }),
            other => Err(Error::Connection { detail: format!("unexpected reply to seal: {other:?}") }),
        }
    }

    /// Runs a write to the store; if its filesystem is full (`ENOSPC`), asks the daemon to
    /// spill until `bytes` fit and tries again, for as long as the daemon can make room
    /// (other writers compete for it; bounded at 60 s). A filesystem smaller than the store's
    /// capacity is pressure, as the capacity is.
    pub(crate) fn with_room<T>(&self, bytes: u64, mut write: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
        let end = Instant::now() + Duration::from_secs(60);
        let mut tries: u32 = 0;
        loop {
            match write() {
                Err(e) if ferry_store::is_no_space(&e) && Instant::now() < end => {
                    if tries > 0 {
                        // Room was made and another writer took it: give them a moment.
                        thread::sleep(Duration::from_millis(5 * u64::from(tries.min(20))));
                    }
                    tries += 1;
                    match self.node_call(|req| ToNode::MakeRoom { req, bytes }) {
                        Ok(FromNode::Room { error: None, .. }) => continue,
                        Ok(FromNode::Room { error: Some(why), .. }) => return Err(std::io::Error::other(why)),
                        Ok(other) => return Err(std::io::Error::other(format!("unexpected reply: {other:?}"))),
                        Err(err) => return Err(std::io::Error::other(format!("{e}, and the node: {err}"))),
                    }
                }
                r => return r,
            }
        }
    }

    /// Maps `id`, stored on `node`: first copied here if `node` is another node (the daemon
    /// pulls it; a copy already here is used as it is).
    pub(crate) fn map_from(&self, id: ObjectId, node: NodeId) -> Result<ObjectView> {
        if node != self.node_id {
            if let Ok(v) = self.store.map(id) {
                return Ok(v);
            }
            match self.node_call(|req| ToNode::Pull { req, object: id, from: node })? {
                FromNode::Pulled { error: None, .. } => {}
                // The store here is full: not a loss (its owner must not make it again).
                FromNode::Pulled { error: Some(e @ PullError::StoreFull(_)), .. } => {
                    return Err(Error::ObjectStoreFull { detail: e.to_string() })
                }
                FromNode::Pulled { error: Some(e), .. } => {
                    return Err(Error::ObjectLost {
                        object: id,
                        reason: format!("cannot copy it from node {node}: {e}"),
                    })
                }
                other => return Err(Error::Connection { detail: format!("unexpected reply to pull: {other:?}") }),
            }
        }
        self.map_object(id)
    }

    pub(crate) fn map_object(&self, id: ObjectId) -> Result<ObjectView> {
        self.store
            .map(id)
            .map_err(|e| Error::ObjectLost { object: id, reason: format!("its store file could not be read: {e}") })
    }

    /// Polls `id`: ready, failed, or pending (then `waker` is registered, and a borrowed
    /// object is asked of its owner).
    pub(crate) fn poll_object(&'static self, id: ObjectId, waker: &Waker) -> Poll<Result<Ready>> {
        self.with_state(|st, fx| st.poll_object(id, waker, fx))
    }

    /// Blocks the calling thread until `poll` is ready or the deadline passes (`None`).
    /// In a worker, a task that waits gives its CPU back for the wait.
    pub(crate) fn block_until<R>(
        &self,
        deadline: Option<Instant>,
        mut poll: impl FnMut(&Waker) -> Poll<R>,
    ) -> Option<R> {
        let tw = Arc::new(ThreadWaker { thread: thread::current() });
        let waker = Waker::from(tw);
        let mut blocked = None;
        loop {
            if let Poll::Ready(r) = poll(&waker) {
                return Some(r);
            }
            if blocked.is_none() {
                blocked = Some(self.executor.as_ref().and_then(|x| x.enter_blocked(self)));
            }
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    thread::park_timeout(d - now);
                }
            }
        }
    }

    pub(crate) fn submit(
        &'static self,
        function: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        class: (&Shape, &ferry_proto::msg::Placement),
        retries: (u32, bool),
        exported: crate::owner::Exports,
    ) -> ObjectId {
        self.with_state(|st, fx| st.submit(function, name, args, class, retries, exported, fx))
    }

    /// An object whose value is an error (for calls that fail before a task exists).
    pub(crate) fn failed_object(&'static self, err: Error) -> ObjectId {
        self.with_state(|st, _| st.new_object(ObjState::Failed(err)))
    }

    pub(crate) fn node_stats(&self) -> Result<NodeStats> {
        match self.node_call(|req| ToNode::Stats { req })? {
            FromNode::Stats { stats, .. } => Ok(stats),
            other => Err(Error::Connection { detail: format!("unexpected reply to stats: {other:?}") }),
        }
    }

    pub(crate) fn shutdown(&'static self) {
        if !self.running.swap(false, Ordering::AcqRel) {
            return;
        }
        self.with_state(|st, fx| {
            st.fail_all(Error::NotRunning { detail: "ferry::shutdown was called while it was pending".into() }, fx)
        });
        let node = self.embedded.lock().unwrap_or_else(|e| e.into_inner()).take();
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
        self.embedded.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|n| n.worker_pids()).unwrap_or_default()
    }
}

struct ThreadWaker {
    thread: thread::Thread,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.thread.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.thread.unpark();
    }
}

/// Runs a future to completion on this thread (used for `async fn` tasks).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let tw = Arc::new(ThreadWaker { thread: thread::current() });
    let waker = Waker::from(tw);
    let mut cx = std::task::Context::from_waker(&waker);
    let mut blocked = None;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        if blocked.is_none() {
            if let Some(rt) = try_runtime() {
                blocked = Some(rt.executor.as_ref().and_then(|x| x.enter_blocked(rt)));
            }
        }
        thread::park();
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

/// Shows lines that tasks printed, as they came (each starts with `(task pid=N)`); lines from
/// another node also name it.
fn print_log(remote: bool, node: NodeId, stderr: bool, lines: &[String]) {
    use std::io::Write;
    let mut text = String::new();
    for l in lines {
        match (remote, l.strip_prefix('(')) {
            (true, Some(rest)) => text.push_str(&format!("(node={} {rest}\n", &node.to_string()[..8])),
            _ => {
                text.push_str(l);
                text.push('\n');
            }
        }
    }
    let _ = if stderr {
        std::io::stderr().write_all(text.as_bytes())
    } else {
        std::io::stdout().write_all(text.as_bytes())
    };
}
