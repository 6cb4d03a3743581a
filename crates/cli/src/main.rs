//! `ferry`: start a node on its own, see its state, stop it. A thin shell over
//! `ferry_core::__private::start_node` and the node's wire protocol.
//!
//! ```text
//! ferry start --head [--host H] [--port P] [--num-cpus N] [--resources k=v,..] [--block]
//! ferry start --address HEAD:PORT [--host H] [--port P] [--token-file F] ...   (joins the head)
//! ferry status [--address H:P] [--token-file F]
//! ferry stop   [--address H:P] [--token-file F] [--node-only]
//! ferry submit [--address H:P] [--token-file F] -- ./job args...
//! ```
//! Drivers join with `ferry::init(Config::default().address("H:P"))` or `FERRY_ADDRESS`.
//! The token comes from `--token-file`, `FERRY_TOKEN`, or the file `ferry start` wrote in this
//! user's private runtime directory on that host; `--token` works too but is visible to every
//! user of the host in the process list.

use clap::{Args, Parser, Subcommand};
use ferry_node::launch::{LaunchConfig, NodeRole};
use ferry_os::local;
use ferry_proto::conn::connect;
use ferry_proto::msg::{FromNode, ProcKind, ToNode};
use ferry_proto::{Addr, WorkerId};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEFAULT_PORT: u16 = 6380;

#[derive(Parser)]
#[command(name = "ferry", version, about = "Start, inspect and stop ferry nodes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a command reaches a node, and the token it shows.
#[derive(Args, Clone, Default)]
struct Target {
    /// The node's address, HOST:PORT (default: FERRY_ADDRESS, else 127.0.0.1:6380).
    #[arg(long)]
    address: Option<String>,
    /// A file holding the cluster token (default: FERRY_TOKEN, else the token file
    /// `ferry start` wrote for this user on this host).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cluster token itself. Other users of this host can read it in the process list:
    /// prefer --token-file or FERRY_TOKEN.
    #[arg(long)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a node on this host. Its workers run the binary of the first driver that joins.
    Start {
        /// Start the head node: other nodes join it.
        #[arg(long)]
        head: bool,
        /// Join the head at HOST:PORT.
        #[arg(long)]
        address: Option<String>,
        /// A file holding the cluster token, to join a head (default: FERRY_TOKEN, else the
        /// head's token file for this user on this host).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The cluster token itself, to join a head. Other users of this host can read it in
        /// the process list: prefer --token-file or FERRY_TOKEN.
        #[arg(long)]
        token: Option<String>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (0 picks a free one).
        #[arg(long, default_value_t = DEFAULT_PORT)]
        port: u16,
        /// CPUs to offer (default: the machine's cores).
        #[arg(long)]
        num_cpus: Option<usize>,
        /// Custom resources, e.g. `gpu=1,disk=2`.
        #[arg(long)]
        resources: Option<String>,
        /// Store capacity in bytes (default 30% of RAM, at most what the store's filesystem
        /// has free).
        #[arg(long)]
        object_store_bytes: Option<u64>,
        /// Stay in the foreground until `ferry stop` (otherwise the node runs in the background
        /// and logs to a file it names).
        #[arg(long)]
        block: bool,
        /// On a head: where its control store (nodes, named actors), its jobs and its token
        /// persist, made private (0700) or refused if others can reach it (default: `head-PORT`
        /// in this user's runtime directory, $TMPDIR/ferry-UID).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// On a head: a node silent this long is declared dead (default 5000; or
        /// FERRY_NODE_TIMEOUT_MS).
        #[arg(long)]
        node_timeout_ms: Option<u64>,
        /// How often this node sends the control store a heartbeat (default 1000, or a fifth
        /// of the timeout on the head; or FERRY_HEARTBEAT_MS).
        #[arg(long)]
        heartbeat_ms: Option<u64>,
        /// A node that cannot reach its head's control store for this long stops by itself
        /// (default 60000; or FERRY_HEAD_GRACE_MS).
        #[arg(long)]
        head_grace_ms: Option<u64>,
        /// Run the control store alone (the head starts it as a process of its own, and starts
        /// it again if it dies).
        #[arg(long, hide = true)]
        control_store: bool,
    },
    /// Run a job binary on the cluster: it is shipped to the head by content hash (once), runs
    /// there as the job's driver, and its output comes back here.
    Submit {
        #[command(flatten)]
        target: Target,
        /// The program and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Show the node's resources, workers, actors and store, every node of its cluster, and
    /// the jobs it ran.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Stop the cluster: every node (members first, then the head and its control store),
    /// with every worker they started.
    Stop {
        #[command(flatten)]
        target: Target,
        /// Stop only the node at the address.
        #[arg(long)]
        node_only: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Submit { target, command } => {
            warn_token_in_argv(target.token.is_some());
            return submit(&target, &command);
        }
        Cmd::Start {
            head,
            address,
            token,
            token_file,
            host,
            port,
            num_cpus,
            resources,
            object_store_bytes,
            block,
            state_dir,
            control_store,
            node_timeout_ms,
            heartbeat_ms,
            head_grace_ms,
        } => {
            // Read where they are used, and inherited by the control store's process.
            for (var, v) in [
                ("FERRY_NODE_TIMEOUT_MS", node_timeout_ms),
                ("FERRY_HEARTBEAT_MS", heartbeat_ms),
                ("FERRY_HEAD_GRACE_MS", head_grace_ms),
            ] {
                if let Some(v) = v {
                    // SAFETY: still one thread: nothing reads the environment concurrently.
                    unsafe { std::env::set_var(var, v.to_string()) };
                }
            }
            let target = Target { address: address.clone(), token: token.clone(), token_file };
            let role = match (head, address) {
                _ if control_store => Ok(Role::Control { state_dir }),
                (true, None) if target.token.is_some() || target.token_file.is_some() => {
                    Err("--token and --token-file are for joining a head (with --address); a head makes its own \
                     token, keeps it in its state directory, and takes FERRY_TOKEN if you want to choose it"
                        .to_string())
                }
                (true, None) => Ok(Role::Head { state_dir }),
                (false, Some(a)) => Ok(Role::Member { head: a, target }),
                _ => Err("give either --head, or --address HEAD:PORT to join a head".to_string()),
            };
            warn_token_in_argv(token.is_some() && !control_store);
            match role {
                Err(e) => Err(e),
                Ok(role) if block => {
                    start_blocking(role, &host, port, num_cpus, resources.as_deref(), object_store_bytes)
                }
                Ok(_) => start_background(token),
            }
        }
        Cmd::Status { target } => {
            warn_token_in_argv(target.token.is_some());
            status(&target)
        }
        Cmd::Stop { target, node_only } => {
            warn_token_in_argv(target.token.is_some());
            stop(&target, node_only)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn warn_token_in_argv(given: bool) {
    if given {
        eprintln!(
            "ferry: warning: --token is visible to every user of this host in the process list; \
             use --token-file or FERRY_TOKEN"
        );
    }
}

impl Target {
    /// The address: given, FERRY_ADDRESS, or the default; it must be HOST:PORT.
    fn address(&self) -> Result<String, String> {
        let a = self
            .address
            .clone()
            .or_else(|| std::env::var("FERRY_ADDRESS").ok().filter(|a| !a.is_empty()))
            .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
        match a.rsplit_once(':').map(|(_, p)| p.parse::<u16>()) {
            Some(Ok(_)) => Ok(a),
            _ => Err(format!("{a:?} is not an address: use HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})")),
        }
    }

    /// The token: --token, --token-file, FERRY_TOKEN, or this user's token file for the port.
    fn token(&self, address: &str) -> Result<String, String> {
        let given = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(read_token_file(f)?),
            (None, None) => std::env::var("FERRY_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        local::cluster_token(address, given.as_deref())
    }
}

/// A token from a file the user names (it must be theirs and private, as ssh asks of keys).
fn read_token_file(f: &Path) -> Result<String, String> {
    ferry_os::read_secret(f)
        .map(|t| t.trim().to_string())
        .map_err(|e| format!("cannot read the token from {}: {e}", f.display()))
}

fn parse_resources(s: &str) -> Result<Vec<(String, f64)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| format!("resource {p:?} is not name=amount"))?;
            let v: f64 = v.trim().parse().map_err(|_| format!("resource {p:?}: {v:?} is not a number"))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

enum Role {
    Control { state_dir: Option<PathBuf> },
    Head { state_dir: Option<PathBuf> },
    Member { head: String, target: Target },
}

/// Milliseconds from the environment, for tests that need short heartbeats.
fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

/// Runs the node in this process until `ferry stop`.
fn start_blocking(
    role: Role,
    host: &str,
    port: u16,
    cpus: Option<usize>,
    resources: Option<&str>,
    store: Option<u64>,
) -> Result<(), String> {
    let mut cfg = LaunchConfig::from_env();
    if let Some(n) = cpus {
        cfg.cpus = n.max(1);
    }
    cfg.resources = parse_resources(resources.unwrap_or(""))?;
    if let Some(b) = store {
        cfg.store_bytes = Some(b);
    }
    let mut control = None;
    let mut head_state = None;
    let node_role = match &role {
        Role::Control { state_dir } => {
            die_with_parent();
            NodeRole::Control { timeout: env_ms("FERRY_NODE_TIMEOUT_MS", 5000), state_dir: state_dir.clone() }
        }
        Role::Head { state_dir } => {
            // The head's state always persists (in a directory of its own when no port is
            // fixed, which goes with the head), so its control store can start again on it.
            let state = HeadState::open(state_dir.as_deref(), host, port)?;
            let c = ControlStore::start(host, state.dir())?;
            let addr = c.addr.clone();
            control = Some(c);
            let dir = state.dir().to_path_buf();
            head_state = Some(state);
            // Five heartbeats per timeout at least (its control store has the same timeout).
            let timeout = env_ms("FERRY_NODE_TIMEOUT_MS", 5000).as_millis() as u64;
            let heartbeat = env_ms("FERRY_HEARTBEAT_MS", (timeout / 5).clamp(10, 1000));
            NodeRole::Head { control: addr, heartbeat, state_dir: Some(dir) }
        }
        Role::Member { head, target } => {
            // A member uses the cluster's token, so drivers reach it with the same one.
            cfg.token = Some(target.token(head)?);
            NodeRole::Member { head: head.clone(), heartbeat: env_ms("FERRY_HEARTBEAT_MS", 1000) }
        }
    };
    let started = ferry_node::launch::start(&cfg, &format!("{host}:{port}"), node_role);
    let (node, token) = match started {
        Ok(x) => x,
        Err(e) => {
            if let Some(c) = control {
                c.stop();
            }
            return Err(e);
        }
    };
    let addr = node.tcp_addr().ok_or("the node has no TCP address")?;
    if let Role::Control { state_dir } = &role {
        // How the head (and tests) find the running control store's process. Nobody joins it
        // by a token file: it writes none (it may be killed, and could not remove it).
        if let Some(dir) = state_dir {
            let _ = ferry_os::write_secret(&dir.join("control.pid"), std::process::id().to_string().as_bytes());
        }
        println!("address: {addr}");
        println!("ready");
        node.wait_for_stop_request();
        node.shutdown();
        return Ok(());
    }
    let supervisor = control.map(|c| {
        println!("control store: {} (pid {}, started again if it dies)", c.addr, c.pid());
        c.supervise()
    });
    // Processes of this user on this host reach the node through its Unix socket.
    let links = local::local_socket_links(addr)?;
    if let ferry_proto::Addr::Unix(sock) = node.addr() {
        for link in &links {
            let _ = std::fs::remove_file(link);
            std::os::unix::fs::symlink(&sock, link).map_err(|e| format!("cannot link {}: {e}", link.display()))?;
        }
    }
    let file = local::token_file(addr.port())?;
    ferry_os::write_secret(&file, token.as_bytes()).map_err(|e| e.to_string())?;
    println!("ferry: node started (pid {})", std::process::id());
    println!("address: {addr}");
    println!("token: {token}");
    println!("join with: ferry::init(ferry::Config::default().address(\"{addr}\")), or FERRY_ADDRESS={addr}");
    println!("the token is in {} (readable by this user only; or give FERRY_TOKEN)", file.display());
    println!("ready");
    node.wait_for_stop_request();
    let _ = std::fs::remove_file(&file);
    for link in &links {
        let _ = std::fs::remove_file(link);
    }
    if let Some(s) = supervisor {
        s.stop();
    }
    node.shutdown();
    drop(head_state);
    Ok(())
}

/// A head's state directory, locked for the head's life: a second head on it is refused.
struct HeadState {
    dir: PathBuf,
    /// For a head on a port picked by the system: a directory of its own, removed with it.
    _session: Option<ferry_os::SessionDir>,
    _lock: Option<ferry_os::Lock>,
}

impl HeadState {
    fn open(given: Option<&Path>, host: &str, port: u16) -> Result<HeadState, String> {
        let runtime = || ferry_os::runtime_dir().map_err(|e| e.to_string());
        if given.is_none() && port == 0 {
            let name = format!("s-head-{}-{:08x}", std::process::id(), ferry_proto::ids::random_u64() as u32);
            let session = ferry_os::SessionDir::create(&runtime()?, &name).map_err(|e| e.to_string())?;
            return Ok(HeadState { dir: session.path().to_path_buf(), _session: Some(session), _lock: None });
        }
        let dir = match given {
            Some(d) => d.to_path_buf(),
            None => runtime()?.join(format!("head-{port}")),
        };
        let dir = ferry_os::private_dir_all(&dir).map_err(|e| format!("the head's state directory: {e}"))?;
        let pid_file = dir.join("head.pid");
        let running = || std::fs::read_to_string(&pid_file).ok().map(|p| p.trim().to_string()).unwrap_or_default();
        let lock = ferry_os::Lock::try_acquire(&dir.join("head.lock")).map_err(|e| e.to_string())?;
        let Some(lock) = lock else {
            return Err(format!(
                "a head already runs on this state directory, {} (pid {}); stop it with `ferry stop`, or give \
                 another --port or --state-dir",
                dir.display(),
                running()
            ));
        };
        if port != 0 {
            if let Err(e) = std::net::TcpListener::bind((host, port)) {
                return Err(match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        format!("port {port} on {host} is in use by another program; choose another with --port")
                    }
                    _ => format!("cannot listen on {host}:{port}: {e}"),
                });
            }
        }
        ferry_os::write_secret(&pid_file, std::process::id().to_string().as_bytes()).map_err(|e| e.to_string())?;
        Ok(HeadState { dir, _session: None, _lock: Some(lock) })
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Dies with the process that started this one (the head, for its control store).
fn die_with_parent() {
    let parent: Option<i32> = std::env::var("FERRY_PARENT_PID").ok().and_then(|p| p.parse().ok());
    if let Some(parent) = parent {
        // SAFETY: plain syscalls on this process.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                // The parent died before the line above.
                std::process::exit(1);
            }
        }
    }
}

/// The control store's process, started by the head (DESIGN §9): on its own so that it can
/// die and start again while every node, task and actor goes on.
struct ControlStore {
    child: std::process::Child,
    addr: String,
    host: String,
    state_dir: PathBuf,
}

impl ControlStore {
    /// Starts `ferry start --control-store` on `host` (any port the first time) and waits
    /// until it is ready.
    fn start(host: &str, state_dir: &Path) -> Result<ControlStore, String> {
        let (child, addr) = Self::spawn(host, 0, state_dir)?;
        Ok(ControlStore { child, addr, host: host.to_string(), state_dir: state_dir.to_path_buf() })
    }

    fn spawn(host: &str, port: u16, state_dir: &Path) -> Result<(std::process::Child, String), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(exe)
            .args(["start", "--control-store", "--block", "--host", host, "--port", &port.to_string()])
            .arg("--state-dir")
            .arg(state_dir)
            .env("FERRY_PARENT_PID", std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the control store: {e}"))?;
        let out = child.stdout.take().ok_or("no output from the control store")?;
        let mut lines = BufReader::new(out).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.map_err(|e| e.to_string())?;
            if let Some(a) = line.strip_prefix("address: ") {
                addr = Some(a.to_string());
            }
            if line == "ready" {
                break;
            }
        }
        // Whatever it prints later is drained, so that it never writes to a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        match addr {
            Some(a) => Ok((child, a)),
            None => {
                let _ = child.kill();
                Err(format!("the control store exited before it was ready ({:?})", child.wait().ok()))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (the head could not start after all).
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Watches the control store from a thread of its own (its death signal is tied to that
    /// thread) and starts it again, on the same address and state, whenever it dies.
    fn supervise(self) -> Supervisor {
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(self.child.id()));
        let (s, p) = (stopping.clone(), pid.clone());
        let thread = std::thread::spawn(move || {
            let ControlStore { mut child, addr, host, state_dir } = self;
            let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let mut started = std::time::Instant::now();
            loop {
                let status = child.wait();
                if s.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                eprintln!("ferry: the control store exited ({status:?}); starting it again on {addr}");
                // Only for drills and tests that need the outage to last.
                std::thread::sleep(env_ms("FERRY_CONTROL_RESTART_DELAY_MS", 0));
                if started.elapsed() < Duration::from_secs(1) {
                    // It died as soon as it started: not in a tight loop.
                    std::thread::sleep(Duration::from_secs(1));
                }
                // Its port may take a moment to be free again; bounded, then the head gives up.
                let mut tries = 0;
                child = loop {
                    match Self::spawn(&host, port, &state_dir) {
                        Ok((c, _)) => break c,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            eprintln!("ferry: cannot start the control store yet: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => {
                            eprintln!("ferry: giving up on the control store: {e}");
                            return;
                        }
                    }
                };
                p.store(child.id(), std::sync::atomic::Ordering::SeqCst);
                started = std::time::Instant::now();
                if s.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        });
        Supervisor { stopping, pid, thread }
    }
}

struct Supervisor {
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pid: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: std::thread::JoinHandle<()>,
}

impl Supervisor {
    /// Stops the control store for good.
    fn stop(self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let pid = self.pid.load(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: a signal to the child this head started (and has not reaped: the thread
        // below reaps it).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let _ = self.thread.join();
    }
}

/// Starts `ferry start ... --block` in the background (its own session) and returns once it
/// is ready, passing on what it printed. A token given on the command line reaches it in
/// its environment, not in its arguments (which every user can read for the node's life).
fn start_background(token: Option<String>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args = Vec::new();
    let mut given = std::env::args().skip(1);
    while let Some(a) = given.next() {
        if a == "--token" {
            given.next();
        } else if !a.starts_with("--token=") {
            args.push(a);
        }
    }
    args.push("--block".into());
    // Its log goes to a file of this user's alone: the terminal (or a pipe) it was started
    // from may go away.
    let dir = ferry_os::runtime_dir().map_err(|e| e.to_string())?;
    let log = dir.join(format!("node-{}.log", std::process::id()));
    let log_file = ferry_os::open_private_log(&log).map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(log_file);
    if let Some(t) = token {
        cmd.env("FERRY_TOKEN", t);
    }
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; the node must outlive this terminal session.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().map_err(|e| format!("cannot start the node: {e}"))?;
    let out = child.stdout.take().ok_or("no output from the node")?;
    for line in BufReader::new(out).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line == "ready" {
            println!("log: {}", log.display());
            return Ok(());
        }
        println!("{line}");
    }
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    Err(format!("the node exited before it was ready ({:?}): {}", child.wait().ok(), tail.trim()))
}

type Reader = ferry_proto::FrameReader<ferry_proto::Stream>;

/// Connects to the node at `address` and registers as `kind`.
fn register(address: &str, token: &str, kind: ProcKind) -> Result<(ferry_proto::Conn, Reader), String> {
    let me = WorkerId(ferry_proto::ids::random_u64());
    // A node of this user on this host is reached through its Unix socket.
    let to = match local::local_socket(address)? {
        Some(sock) => Addr::Unix(sock),
        None => Addr::Tcp(address.to_string()),
    };
    let (conn, mut rx, _) =
        connect(&to, token, me, 1 << 24).map_err(|e| format!("cannot reach the node at {address}: {e}"))?;
    conn.send(&ToNode::register_tool(kind)).map_err(|e| e.to_string())?;
    // A tool never waits for long: a node that does not answer is reported.
    rx.get_ref().set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    loop {
        match rx.read::<FromNode>() {
            Ok(FromNode::Registered { .. }) => return Ok((conn, rx)),
            Ok(_) => continue,
            Err(e) => return Err(format!("the node closed the connection: {e}")),
        }
    }
}

/// Connects to the node `target` names, as a tool; returns its address and token too.
fn node_conn(target: &Target) -> Result<(ferry_proto::Conn, Reader, String, String), String> {
    let address = target.address()?;
    if local::local_socket(&address)?.is_none() {
        local::probe(&address)?;
    }
    let token = target.token(&address)?;
    let (conn, rx) = register(&address, &token, ProcKind::Tool)?;
    Ok((conn, rx, address, token))
}

/// Waits for the answer `want` picks out, ignoring other messages; a node that says nothing
/// for `limit` is reported.
fn answer<T>(rx: &mut Reader, limit: Duration, mut want: impl FnMut(FromNode) -> Option<T>) -> Result<T, String> {
    let end = Instant::now() + limit;
    loop {
        match rx.read::<FromNode>() {
            Ok(m) => {
                if let Some(v) = want(m) {
                    return Ok(v);
                }
            }
            Err(ferry_proto::FrameError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    && Instant::now() < end => {}
            Err(e) => return Err(format!("the node did not answer: {e}")),
        }
    }
}

fn sha256_file(path: &std::path::Path) -> Result<String, String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(format!("{:x}", h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// `ferry submit`: ship the binary by hash (if the head lacks it), run it, pass its output on,
/// exit with its exit code.
fn submit(target: &Target, command: &[String]) -> ExitCode {
    match submit_inner(target, command) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn submit_inner(target: &Target, command: &[String]) -> Result<i32, String> {
    use std::io::Write;
    let program = Path::new(&command[0]);
    let size = std::fs::metadata(program).map_err(|e| format!("cannot read {}: {e}", program.display()))?.len();
    let hash = sha256_file(program)?;
    let name = program.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| command[0].clone());
    let (conn, mut rx, address, _) = node_conn(target)?;
    conn.send(&ToNode::HaveBinary { req: 1, hash: hash.clone() }).map_err(|e| e.to_string())?;
    let have = answer(&mut rx, Duration::from_secs(30), |m| match m {
        FromNode::Ack { req: 1, error } => Some(error.is_none()),
        _ => None,
    })?;
    if have {
        eprintln!("ferry: the head already has {} ({})", program.display(), &hash[..12]);
    } else {
        eprintln!(
            "ferry: uploading {} ({:.1} MiB, {}) to {address} ...",
            program.display(),
            size as f64 / 1048576.0,
            &hash[..12]
        );
        let t = Instant::now();
        conn.send(&ToNode::PutBinary { req: 2, hash: hash.clone(), size }).map_err(|e| e.to_string())?;
        let file = std::fs::File::open(program).map_err(|e| e.to_string())?;
        conn.send_file(&file, size).map_err(|e| format!("upload failed: {e}"))?;
        answer(&mut rx, Duration::from_secs(120), |m| match m {
            FromNode::Ack { req: 2, error } => Some(error),
            _ => None,
        })?
        .map_or(Ok(()), |e| Err(format!("the head refused the binary: {e}")))?;
        eprintln!("ferry: uploaded in {:.2?}", t.elapsed());
    }
    conn.send(&ToNode::SubmitJob { req: 3, hash, name: name.clone(), args: command[1..].to_vec() })
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut last_output = Instant::now();
    let mut job = 0;
    loop {
        match rx.read::<FromNode>() {
            Ok(FromNode::JobStarted { job: j, pid, .. }) => {
                job = j;
                eprintln!("ferry: job {j} ({name}) running on the head (pid {pid})");
            }
            Ok(FromNode::JobOutput { stderr, data, .. }) => {
                last_output = Instant::now();
                let _ = if stderr { std::io::stderr().write_all(&data) } else { std::io::stdout().write_all(&data) };
            }
            Ok(FromNode::JobEnded { code, detail, .. }) => {
                let _ = std::io::stdout().flush();
                eprintln!("ferry: job {job} ({name}) ended ({detail}) after {:.1?}", started.elapsed());
                return Ok(code.unwrap_or(1));
            }
            Ok(_) => {}
            Err(ferry_proto::FrameError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                // A long wait shows progress rather than silence.
                if last_output.elapsed() >= Duration::from_secs(30) {
                    eprintln!("ferry: job {job} ({name}) still running ({:.0?} so far)", started.elapsed());
                    last_output = Instant::now();
                }
            }
            Err(e) => return Err(format!("lost the head while job {job} ({name}) ran: {e}")),
        }
    }
}

/// The nodes of the cluster the node on `conn` is part of, as its control store knows them
/// (a node's own view lags by a heartbeat); `None` if it is in no cluster.
fn cluster_nodes(
    conn: &ferry_proto::Conn,
    rx: &mut Reader,
    token: &str,
) -> Result<Option<Vec<ferry_proto::msg::NodeView>>, String> {
    let ask = |conn: &ferry_proto::Conn, rx: &mut Reader| -> Result<Option<Vec<_>>, String> {
        conn.send(&ToNode::ClusterStatus { req: 11 }).map_err(|e| e.to_string())?;
        answer(rx, Duration::from_secs(10), |m| match m {
            FromNode::Cluster { req: 11, nodes } => Some(Some(nodes)),
            FromNode::Ack { req: 11, error: Some(_) } => Some(None),
            _ => None,
        })
    };
    conn.send(&ToNode::ControlAddress { req: 10 }).map_err(|e| e.to_string())?;
    let control = answer(rx, Duration::from_secs(10), |m| match m {
        FromNode::ControlAt { req: 10, addr } => Some(addr),
        _ => None,
    })?;
    if let Some(addr) = control {
        // The control store may be restarting: then this node's view will do.
        if let Ok((c, mut r)) = register(&addr, token, ProcKind::Tool) {
            if let Ok(Some(nodes)) = ask(&c, &mut r) {
                return Ok(Some(nodes));
            }
        }
    }
    ask(conn, rx)
}

/// "1 node", "2 nodes".
fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        _ => format!("{n} {what}s"),
    }
}

fn status(target: &Target) -> Result<(), String> {
    let (conn, mut rx, address, _) = node_conn(target)?;
    conn.send(&ToNode::Stats { req: 1 }).map_err(|e| e.to_string())?;
    let stats = answer(&mut rx, Duration::from_secs(10), |m| match m {
        FromNode::Stats { stats, .. } => Some(stats),
        _ => None,
    })?;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!("node {} at {address}: alive", stats.node.map(|n| n.to_string()).unwrap_or_default());
    println!("  resources: {} available of {}", stats.available, stats.total);
    println!("  workers:   {} ({} idle, {} leased)", stats.workers, stats.idle_workers, stats.leased_workers);
    println!("  actors:    {}", stats.actors);
    println!(
        "  store:     {}, {:.1} of {:.1} MiB in memory; {}, {:.1} MiB spilled",
        count(stats.store_objects as usize, "object"),
        mb(stats.store_used_bytes),
        mb(stats.store_capacity_bytes),
        count(stats.spilled_objects as usize, "object"),
        mb(stats.spilled_bytes)
    );
    println!("  waiting lease requests: {}", stats.pending_lease_requests);
    println!(
        "  transfers: {} ({:.1} MiB) sent to other nodes, {} ({:.1} MiB) copied from them",
        count(stats.transfers_out as usize, "object"),
        mb(stats.transfer_bytes_out),
        stats.transfers_in,
        mb(stats.transfer_bytes_in)
    );
    // This node's view (which its scheduling uses), not the control store's: it lags by a
    // heartbeat, and a cluster is up for this node's jobs once this node sees every node.
    conn.send(&ToNode::ClusterStatus { req: 2 }).map_err(|e| e.to_string())?;
    let nodes = answer(&mut rx, Duration::from_secs(10), |m| match m {
        FromNode::Cluster { nodes, .. } => Some(Some(nodes)),
        FromNode::Ack { error: Some(_), .. } => Some(None),
        _ => None,
    })?;
    if let Some(nodes) = nodes.filter(|n| n.len() > 1) {
        // The control store keeps the cluster's tables and runs no work: not one of its nodes.
        let (control, work): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|n| n.head);
        let alive = work.iter().filter(|n| n.alive).count();
        println!("cluster: {}, {alive} alive", count(work.len(), "node"));
        for n in work {
            let state = if n.alive { "alive" } else { "dead" };
            println!(
                "  node {} at {}: {state}; {} available of {}; {}, {}; {}, {:.1} MiB ({:.1} MiB spilled); \
                 last heard {} ms ago",
                n.node,
                n.addr,
                n.available,
                n.total,
                count(n.workers as usize, "worker"),
                count(n.actors as usize, "actor"),
                count(n.objects as usize, "object"),
                mb(n.object_bytes),
                mb(n.spilled_bytes),
                n.silent_ms
            );
        }
        for c in control {
            println!("control store at {}: {}", c.addr, if c.alive { "alive" } else { "not answering" });
        }
    }
    conn.send(&ToNode::Jobs { req: 3 }).map_err(|e| e.to_string())?;
    let jobs = answer(&mut rx, Duration::from_secs(10), |m| match m {
        FromNode::Jobs { jobs, .. } => Some(jobs),
        _ => None,
    })?;
    if !jobs.is_empty() {
        println!("jobs: {}", jobs.len());
        for j in jobs {
            let state = match (j.ended_ms, j.code) {
                (None, _) => "running".to_string(),
                (Some(_), Some(c)) => format!("exited with {c}"),
                (Some(_), None) => "ended (signal, or the head restarted)".to_string(),
            };
            // What came over the network is printed without its control characters (a
            // terminal escape in a job's arguments must not reach this terminal).
            let clean = |a: &str| a.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>();
            let line = std::iter::once(&j.name).chain(&j.args).map(|a| clean(a)).collect::<Vec<_>>();
            println!(
                "  job {} {} (pid {}, binary {}): {state}",
                j.id,
                line.join(" "),
                j.pid,
                &j.hash[..j.hash.len().min(12)]
            );
        }
    }
    Ok(())
}

/// Asks the node on `conn` to stop and waits (at most `within`) until it has: it closes every
/// connection as it stops, this one included.
fn stop_node(conn: &ferry_proto::Conn, rx: &mut Reader, within: Duration) -> Result<(), String> {
    conn.send(&ToNode::StopNode).map_err(|e| e.to_string())?;
    let end = Instant::now() + within;
    while Instant::now() < end {
        match rx.read::<FromNode>() {
            Ok(_) => continue,
            Err(ferry_proto::FrameError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(_) => return Ok(()),
        }
    }
    Err(format!("it did not stop within {within:?}"))
}

/// `ferry stop`: the other nodes of the cluster first (at once, each waited for), then the
/// node at the address; with `node_only`, that node alone.
fn stop(target: &Target, node_only: bool) -> Result<(), String> {
    let (conn, mut rx, address, token) = node_conn(target)?;
    let mut failed = Vec::new();
    if !node_only {
        let nodes = cluster_nodes(&conn, &mut rx, &token)?.unwrap_or_default();
        // The control store goes with the head; the node asked stops last (it answered).
        let others: Vec<String> =
            nodes.into_iter().filter(|n| !n.head && n.alive && n.addr != address).map(|n| n.addr).collect();
        let stops: Vec<_> = others
            .into_iter()
            .map(|a| {
                let token = token.clone();
                std::thread::spawn(move || {
                    let r = register(&a, &token, ProcKind::Tool)
                        .and_then(|(c, mut rx)| stop_node(&c, &mut rx, Duration::from_secs(20)));
                    (a, r)
                })
            })
            .collect();
        for s in stops {
            match s.join() {
                Ok((a, Ok(()))) => println!("ferry: node at {a} stopped"),
                Ok((a, Err(e))) => failed.push(format!("{a}: {e}")),
                Err(_) => failed.push("a stop thread panicked".into()),
            }
        }
    }
    match stop_node(&conn, &mut rx, Duration::from_secs(20)) {
        Ok(()) => println!("ferry: node at {address} stopped"),
        Err(e) => failed.push(format!("{address}: {e}")),
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!("some nodes did not stop: {}", failed.join("; "))),
    }
}
