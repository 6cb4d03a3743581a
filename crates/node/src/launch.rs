//! Starting a node: its directories, token and options, for the embedded cluster of a
//! program (`ferry::init`) and for `ferry start` (head, member, control store).
//!
//! A session's files live in this user's private directories (`ferry_os::runtime_dir`,
//! `ferry_os::shm_dir`): `s-<pid>-<rand>` in the first (sockets, spilled objects) and in the
//! second (the store). The daemon makes both new and holds a lock on each for its life; they
//! are removed at shutdown, at normal process exit, and otherwise by the next start of a node
//! of this user once nobody holds their lock (whatever PID namespace the session ran in).

use crate::control::{ControlCommand, ControlStore, HeadState, Supervisor};
use crate::{NodeHandle, NodeOptions};
use ferry_os::local;
use ferry_sched::PoolOptions;
use ferry_types::defaults;
use ferry_types::{random_bytes, random_u64, Shape};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use std::time::Instant;

/// Why a node could not start; each says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    #[error("ferry's directories: {0}")]
    Dirs(#[source] std::io::Error),
    #[error("the head's state directory {}: {source}", dir.display())]
    StateDir { dir: PathBuf, source: std::io::Error },
    #[error(
        "a head already runs on this state directory, {} (pid {pid}); stop it with `ferry stop`, or give \
         another --port or --state-dir",
        dir.display()
    )]
    HeadRunning { dir: PathBuf, pid: String },
    #[error("port {port} on {host} is in use by another program; choose another with --port")]
    PortInUse { host: String, port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot start the node daemon{}: {source}", at.as_ref().map(|a| format!(" on {a}")).unwrap_or_default())]
    Daemon { at: Option<String>, source: std::io::Error },
    #[error("the node has no TCP address")]
    NoTcpAddress,
    #[error("cannot start the control store: {0}")]
    ControlStore(String),
    /// The cluster's token or this user's local files (the message says which).
    #[error("{0}")]
    Local(String),
    #[error("cannot start the node in the background: {0}")]
    Background(String),
}

/// The prefix of session directories (swept once their session is over).
pub const SESSION_PREFIX: &str = "s-";

/// What a node is started with: the embedded node's from `ferry::Config`, a `ferry start`
/// node's from its flags and the environment ([`LaunchConfig::from_env`]).
#[derive(Clone)]
pub struct LaunchConfig {
    /// The cluster's token; `None`: a random one (or, for a head, the one its state keeps).
    pub token: Option<String>,
    pub cpus: usize,
    /// Custom resources, e.g. `("gpu", 1.0)`.
    pub resources: Vec<(String, f64)>,
    /// The store's capacity; `None`: a share of RAM, no more than its filesystem has free.
    pub store_bytes: Option<u64>,
    /// Where to spill (a directory of the session's own is made in it); `None`: in the
    /// session's directory.
    pub spill_dir: Option<PathBuf>,
    /// Workers started ahead of need; `None`: one per CPU.
    pub prestart: Option<usize>,
    pub max_workers: usize,
    pub idle_timeout: Duration,
    pub max_frame: u32,
    /// Extra environment for workers (the job's settings).
    pub worker_env: Vec<(String, String)>,
}

impl std::fmt::Debug for LaunchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cpus", &self.cpus)
            .field("resources", &self.resources)
            .field("store_bytes", &self.store_bytes)
            .field("spill_dir", &self.spill_dir)
            .field("prestart", &self.prestart)
            .field("max_workers", &self.max_workers)
            .finish_non_exhaustive()
    }
}

impl LaunchConfig {
    /// The defaults, with the environment's overrides (`FERRY_TOKEN`, `FERRY_NUM_CPUS`,
    /// `FERRY_OBJECT_STORE_BYTES`, `FERRY_SPILL_DIR`, `FERRY_PRESTART_WORKERS`,
    /// `FERRY_MAX_WORKERS`).
    pub fn from_env() -> LaunchConfig {
        LaunchConfig {
            token: defaults::env_str("FERRY_TOKEN"),
            cpus: defaults::cpus(),
            resources: Vec::new(),
            store_bytes: defaults::env("FERRY_OBJECT_STORE_BYTES"),
            spill_dir: std::env::var_os("FERRY_SPILL_DIR").filter(|d| !d.is_empty()).map(Into::into),
            prestart: defaults::env("FERRY_PRESTART_WORKERS"),
            max_workers: defaults::env("FERRY_MAX_WORKERS").unwrap_or(defaults::MAX_WORKERS),
            idle_timeout: defaults::IDLE_WORKER_TIMEOUT,
            max_frame: ferry_proto::DEFAULT_MAX_FRAME,
            worker_env: Vec::new(),
        }
    }
}

/// Removes the directories of this user's sessions that are over.
fn cleanup_stale(runtime: &Path, shm: &Path) {
    ferry_os::sweep(runtime, SESSION_PREFIX);
    ferry_os::sweep(shm, SESSION_PREFIX);
}

fn total_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The store's capacity: `explicit`, else a share of RAM, but never more than the store's
/// filesystem (`store_dir`'s, normally `/dev/shm`) has free now: a container's `/dev/shm`
/// is often 64 MiB. Warns when it is small.
pub fn store_capacity(explicit: Option<u64>, store_dir: &Path) -> u64 {
    let free = ferry_store::free_space(store_dir).ok();
    let by_ram = total_memory().map(|m| m / 100 * defaults::STORE_SHARE_OF_RAM_PERCENT).unwrap_or(2 << 30);
    let mib = |b: u64| b >> 20;
    match (explicit, free) {
        (Some(b), Some(f)) if b > f => {
            tracing::warn!(
                "the object store may hold {} MiB (Config::object_store_bytes) but {} has only {} \
                 MiB free: objects past that spill to disk sooner",
                mib(b),
                store_dir.display(),
                mib(f)
            );
            b
        }
        (Some(b), _) => b,
        (None, Some(f)) if f / 10 * 9 < by_ram => {
            let cap = f / 10 * 9;
            tracing::warn!(
                "{} has only {} MiB free, so the object store holds {} MiB (not {}% of RAM, {} MiB) \
                 and larger working sets spill to disk; give it more (docker run --shm-size=...) or set \
                 Config::object_store_bytes",
                store_dir.display(),
                mib(f),
                mib(cap),
                defaults::STORE_SHARE_OF_RAM_PERCENT,
                mib(by_ram)
            );
            cap
        }
        (None, _) => by_ram,
    }
}

/// `resources` with the node's memory as its `memory` resource (in bytes), unless given.
fn with_memory(mut resources: Shape, watch: &crate::pressure::Watch, store_capacity: u64) -> Shape {
    if resources.get_milli(ferry_types::MEMORY) == 0 {
        // Shapes count thousandths: past this a sum could overflow (over a petabyte).
        let bytes = crate::pressure::offered(watch, store_capacity).min(ferry_sched::MAX_AMOUNT / 1000);
        resources.set(ferry_types::MEMORY, bytes as f64);
    }
    resources
}

/// A node's options and directories for `cfg`: workers run `program` (`None`: the first
/// driver's), and it also listens on `tcp` if given.
pub fn options(cfg: &LaunchConfig, program: Option<PathBuf>, tcp: Option<String>) -> Result<NodeOptions, LaunchError> {
    let runtime = ferry_os::runtime_dir().map_err(LaunchError::Dirs)?;
    let shm = ferry_os::shm_dir().map_err(LaunchError::Dirs)?;
    cleanup_stale(&runtime, &shm);
    let sid = format!("{SESSION_PREFIX}{}-{:08x}", std::process::id(), random_u64() as u32);
    let session_dir = runtime.join(&sid);
    // A spill directory the user names may be shared: the session spills into a directory
    // of its own there, made new and private.
    let spill_dir = match &cfg.spill_dir {
        Some(d) => d.join(format!("ferry-spill-{sid}")),
        None => session_dir.join("spill"),
    };
    let token = match &cfg.token {
        Some(t) => t.clone(),
        None => new_token(),
    };
    let watch = crate::pressure::Watch::from_env();
    let capacity = store_capacity(cfg.store_bytes, &shm);
    Ok(NodeOptions {
        memory_watch: watch.clone(),
        session_dir,
        store_dir: shm.join(&sid),
        store_capacity: capacity,
        spill_dir: Some(spill_dir),
        token,
        resources: with_memory(Shape::with_resources(cfg.cpus as f64, &cfg.resources), &watch, capacity),
        pool: PoolOptions {
            prestart: cfg.prestart.unwrap_or(cfg.cpus),
            max_workers: cfg.max_workers,
            idle_timeout: cfg.idle_timeout,
            reset_after: defaults::env_ms("FERRY_PREEMPT_RESET_AFTER_MS", defaults::PREEMPT_RESET_AFTER),
        },
        worker_program: program,
        tcp,
        head_timeout: None,
        control_only: false,
        join: None,
        head_grace: defaults::env_ms("FERRY_HEAD_GRACE_MS", defaults::HEAD_GRACE),
        state_dir: None,
        worker_env: cfg.worker_env.clone(),
        max_frame: cfg.max_frame,
    })
}

/// A new random token (32 hex digits).
fn new_token() -> String {
    random_bytes(16).iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the embedded node of a program whose binary is `program` (its workers run it).
pub fn start_embedded(cfg: &LaunchConfig, program: PathBuf) -> Result<NodeHandle, LaunchError> {
    let opts = options(cfg, Some(program), None)?;
    crate::start(opts).map_err(|source| LaunchError::Daemon { at: None, source })
}

/// How long the control store waits for a silent node (`FERRY_NODE_TIMEOUT_MS`).
pub fn node_timeout() -> Duration {
    defaults::env_ms("FERRY_NODE_TIMEOUT_MS", defaults::NODE_TIMEOUT)
}

/// How a node started on its own takes part in a cluster.
#[derive(Debug, Clone)]
pub enum NodeRole {
    /// The control store: nodes join it; one silent this long is dead. It runs no work; its
    /// tables persist in `state_dir`.
    Control { timeout: Duration, state_dir: Option<PathBuf> },
    /// The head node: it joins the control store at `control` like any member, and keeps
    /// submitted binaries and the jobs it runs in `state_dir`.
    Head { control: String, heartbeat: Duration, state_dir: Option<PathBuf> },
    /// It joins the cluster through any node's address (normally the head's), with a
    /// heartbeat every interval.
    Member { head: String, heartbeat: Duration },
}

/// Starts a node on its own (for `ferry start`): it listens on `tcp` too, and its workers
/// run the binary of the first driver that joins (or that leases a worker from another node).
/// Returns the node and its token.
pub fn start(cfg: &LaunchConfig, tcp: &str, role: NodeRole) -> Result<(NodeHandle, String), LaunchError> {
    let mut cfg = cfg.clone();
    if let NodeRole::Head { state_dir: Some(dir), .. } | NodeRole::Control { state_dir: Some(dir), .. } = &role {
        // The cluster's token lives with the head's state: a head started again keeps it, so
        // members and drivers that hold it carry on.
        if cfg.token.is_none() {
            cfg.token = Some(persistent_token(dir)?);
        }
    }
    let mut opts = options(&cfg, None, Some(tcp.to_string()))?;
    match role {
        NodeRole::Control { timeout, state_dir } => {
            opts.head_timeout = Some(timeout);
            opts.state_dir = state_dir;
            opts.control_only = true;
            opts.resources = Shape::default();
            opts.pool.prestart = 0;
            opts.pool.max_workers = 0;
            opts.spill_dir = None;
        }
        NodeRole::Head { control, heartbeat, state_dir } => {
            opts.join = Some((control, heartbeat));
            opts.state_dir = state_dir;
        }
        NodeRole::Member { head, heartbeat } => opts.join = Some((head, heartbeat)),
    }
    let token = opts.token.clone();
    let node = crate::start(opts).map_err(|source| LaunchError::Daemon { at: Some(tcp.to_string()), source })?;
    Ok((node, token))
}

/// The token kept in `dir` (made, readable by its user only, the first time). The directory
/// must be this user's and private (or is made so): it is refused otherwise.
fn persistent_token(dir: &Path) -> Result<String, LaunchError> {
    let fail = |source| LaunchError::StateDir { dir: dir.to_path_buf(), source };
    let dir = ferry_os::private_dir_all(dir).map_err(fail)?;
    let file = dir.join("token");
    match ferry_os::read_secret(&file) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let token = new_token();
    ferry_os::write_secret(&file, token.as_bytes()).map_err(fail)?;
    Ok(token)
}

/// How a node started by `ferry start` takes part in its cluster.
pub enum Serve {
    /// The head: it starts its control store with `control` (and starts it again whenever it
    /// dies), keeping both's state in `state_dir` (see [`HeadState::open`]).
    Head { state_dir: Option<PathBuf>, control: ControlCommand },
    /// A member joining the cluster at `head` (any node's address) with its `token`.
    Member { head: String, token: String },
}

/// A node started by [`serve`]: running until [`Serving::wait`] sees a stop request.
#[derive(Debug)]
pub struct Serving {
    node: NodeHandle,
    addr: SocketAddr,
    token: String,
    token_file: PathBuf,
    links: Vec<PathBuf>,
    control: Option<(String, u32)>,
    supervisor: Option<Supervisor>,
    head_state: Option<HeadState>,
}

/// Starts a head or a member on `host:port` (0: any port): its control store first for a
/// head; then the node, the links through which this user's processes on this host reach it
/// by its Unix socket, and the token file that lets them join without being given it.
pub fn serve(cfg: &LaunchConfig, host: &str, port: u16, how: Serve) -> Result<Serving, LaunchError> {
    let mut cfg = cfg.clone();
    let mut control = None;
    let mut head_state = None;
    let role = match how {
        Serve::Head { state_dir, control: command } => {
            // The head's state always persists (in a directory of its own when no port is
            // fixed, which goes with the head), so its control store can start again on it.
            let state = HeadState::open(state_dir.as_deref(), host, port)?;
            let c = ControlStore::start(command, state.dir())?;
            let addr = c.addr().to_string();
            control = Some(c);
            let dir = state.dir().to_path_buf();
            head_state = Some(state);
            // Five heartbeats per timeout at least (its control store has the same timeout).
            let every = (node_timeout() / 5).clamp(Duration::from_millis(10), defaults::HEARTBEAT);
            NodeRole::Head {
                control: addr,
                heartbeat: defaults::env_ms("FERRY_HEARTBEAT_MS", every),
                state_dir: Some(dir),
            }
        }
        Serve::Member { head, token } => {
            // A member uses the cluster's token, so drivers reach it with the same one.
            cfg.token = Some(token);
            NodeRole::Member { head, heartbeat: defaults::env_ms("FERRY_HEARTBEAT_MS", defaults::HEARTBEAT) }
        }
    };
    let (node, token) = match start(&cfg, &format!("{host}:{port}"), role) {
        Ok(x) => x,
        Err(e) => {
            if let Some(c) = control {
                c.stop();
            }
            return Err(e);
        }
    };
    let addr = node.tcp_addr().ok_or(LaunchError::NoTcpAddress)?;
    let control_seen = control.as_ref().map(|c| (c.addr().to_string(), c.pid()));
    let supervisor = control.map(ControlStore::supervise);
    let mut serving = Serving {
        node,
        addr,
        token,
        token_file: PathBuf::new(),
        links: Vec::new(),
        control: control_seen,
        supervisor,
        head_state,
    };
    // Processes of this user on this host reach the node through its Unix socket.
    serving.links = local::local_socket_links(addr).map_err(LaunchError::Local)?;
    if let ferry_proto::Addr::Unix(sock) = serving.node.addr() {
        for link in &serving.links {
            let _ = std::fs::remove_file(link);
            std::os::unix::fs::symlink(&sock, link)
                .map_err(|e| LaunchError::Local(format!("cannot link {}: {e}", link.display())))?;
        }
    }
    serving.token_file = local::token_file(addr.port()).map_err(LaunchError::Local)?;
    ferry_os::write_secret(&serving.token_file, serving.token.as_bytes())
        .map_err(|e| LaunchError::Local(format!("cannot write {}: {e}", serving.token_file.display())))?;
    // Ready means in the cluster: once `ferry start` returns, the control store lists this
    // node (so `ferry status` shows it and `ferry stop` stops it). A head that cannot be
    // reached yet is not fatal: the node keeps trying, as it does after any break.
    let end = Instant::now() + defaults::env_ms("FERRY_JOIN_WAIT_MS", JOIN_WAIT);
    while !serving.node.joined() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !serving.node.joined() {
        tracing::warn!("not in the cluster yet (its control store did not answer within {JOIN_WAIT:?}); still trying");
    }
    Ok(serving)
}

/// How long [`serve`] waits for the node to join its cluster before it reports it started.
const JOIN_WAIT: Duration = Duration::from_secs(10);

impl Serving {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The file (this user's alone) that holds the token.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// How many times a head started its control store again, live (`None` on a member).
    pub fn control_restarts(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicU64>> {
        self.supervisor.as_ref().map(|s| s.restarts())
    }

    /// The control store's address and process id, on a head.
    pub fn control(&self) -> Option<(&str, u32)> {
        self.control.as_ref().map(|(a, p)| (a.as_str(), *p))
    }

    /// Serves until the node is asked to stop, then stops it (and the control store of a
    /// head) and removes its token file and links.
    pub fn wait(self) {
        self.node.wait_for_stop_request();
        let _ = std::fs::remove_file(&self.token_file);
        for link in &self.links {
            let _ = std::fs::remove_file(link);
        }
        if let Some(s) = self.supervisor {
            s.stop();
        }
        self.node.shutdown();
        drop(self.head_state);
    }
}

/// Runs `program args` (a `ferry start ... --block`) in a session of its own, logging to a
/// private file in this user's runtime directory, and returns that file once the node prints
/// `ready`; `on_line` gets every line it prints before. A `token` reaches it in its
/// environment, never in its arguments (which every user can read for the node's life).
pub fn start_background(
    program: &Path,
    args: &[String],
    token: Option<&str>,
    mut on_line: impl FnMut(&str),
) -> Result<PathBuf, LaunchError> {
    let failed = |e: &dyn std::fmt::Display| LaunchError::Background(e.to_string());
    // Its log goes to a file of this user's alone: the terminal (or a pipe) it was started
    // from may go away.
    let dir = ferry_os::runtime_dir().map_err(LaunchError::Dirs)?;
    let log = dir.join(format!("node-{}.log", std::process::id()));
    let log_file = ferry_os::open_private_log(&log).map_err(|e| failed(&e))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
    if let Some(t) = token {
        cmd.env("FERRY_TOKEN", t);
    }
    // The node must outlive this terminal session.
    ferry_os::new_session_on_exec(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| failed(&e))?;
    let out = child.stdout.take().ok_or_else(|| failed(&"it has no standard output"))?;
    for line in BufReader::new(out).lines() {
        let line = line.map_err(|e| failed(&e))?;
        if line == "ready" {
            return Ok(log);
        }
        on_line(&line);
    }
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    Err(failed(&format!("it exited before it was ready ({:?}): {}", child.wait().ok(), tail.trim())))
}
