//! `ferry`: start a node on its own, see its state, stop it. A thin shell over
//! `ferry_core::__private::start_node` and the node's wire protocol.
//!
//! ```text
//! ferry start --head [--host H] [--port P] [--num-cpus N] [--resources k=v,..] [--block]
//! ferry start --address HEAD:PORT [--host H] [--port P] [--token T] ...   (joins the head)
//! ferry status [--address H:P] [--token T]
//! ferry stop   [--address H:P] [--token T]
//! ferry submit [--address H:P] [--token T] -- ./job args...
//! ```
//! Drivers join with `ferry::init(Config::default().address("H:P"))` or `FERRY_ADDRESS`.

use clap::{Parser, Subcommand};
use ferry::__private::NodeRole;
use ferry_proto::conn::connect;
use ferry_proto::msg::{FromNode, ProcKind, ToNode};
use ferry_proto::{Addr, WorkerId};
use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEFAULT_PORT: u16 = 6380;

#[derive(Parser)]
#[command(name = "ferry", version, about = "Start, inspect and stop ferry nodes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
        /// The cluster token, to join a head (default: FERRY_TOKEN, or the head's token file on
        /// its host).
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
        /// Store capacity in bytes (default 30% of RAM).
        #[arg(long)]
        object_store_bytes: Option<u64>,
        /// Stay in the foreground until `ferry stop`.
        #[arg(long)]
        block: bool,
        /// On a head: where its control store (nodes, named actors), its jobs and submitted
        /// binaries persist (default: a directory under $TMPDIR named for the port).
        #[arg(long)]
        state_dir: Option<std::path::PathBuf>,
        /// On a head: a node silent this long is declared dead (default 5000; or
        /// FERRY_NODE_TIMEOUT_MS).
        #[arg(long)]
        node_timeout_ms: Option<u64>,
        /// How often this node sends the control store a heartbeat (default 1000, or a fifth
        /// of the timeout on the head; or FERRY_HEARTBEAT_MS).
        #[arg(long)]
        heartbeat_ms: Option<u64>,
        /// Run the control store alone (the head starts it as a process of its own, and starts
        /// it again if it dies).
        #[arg(long, hide = true)]
        control_store: bool,
    },
    /// Run a job binary on the cluster: it is shipped to the head by content hash (once), runs
    /// there as the job's driver, and its output comes back here.
    Submit {
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        token: Option<String>,
        /// The program and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Show a node's resources, workers, actors and store.
    Status {
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        token: Option<String>,
    },
    /// Stop a node and every worker it started.
    Stop {
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        token: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Submit { address, token, command } => return submit(&address_or_default(address), token, &command),
        Cmd::Start {
            head,
            address,
            token,
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
        } => {
            // Read where they are used, and inherited by the control store's process.
            for (var, v) in [("FERRY_NODE_TIMEOUT_MS", node_timeout_ms), ("FERRY_HEARTBEAT_MS", heartbeat_ms)] {
                if let Some(v) = v {
                    // SAFETY: still one thread: nothing reads the environment concurrently.
                    unsafe { std::env::set_var(var, v.to_string()) };
                }
            }
            let role = match (head, address) {
                _ if control_store => Ok(Role::Control { state_dir }),
                (true, None) => Ok(Role::Head { state_dir }),
                (false, Some(a)) => Ok(Role::Member { head: a, token }),
                _ => Err("give either --head, or --address HEAD:PORT to join a head".to_string()),
            };
            match role {
                Err(e) => Err(e),
                Ok(role) if block => {
                    start_blocking(role, &host, port, num_cpus, resources.as_deref(), object_store_bytes)
                }
                Ok(_) => start_background(),
            }
        }
        Cmd::Status { address, token } => status(&address_or_default(address), token),
        Cmd::Stop { address, token } => stop(&address_or_default(address), token),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn address_or_default(a: Option<String>) -> String {
    a.or_else(|| std::env::var("FERRY_ADDRESS").ok()).unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"))
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
    Control { state_dir: Option<std::path::PathBuf> },
    Head { state_dir: Option<std::path::PathBuf> },
    Member { head: String, token: Option<String> },
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
    let mut cfg = ferry::Config::default();
    if let Some(n) = cpus {
        cfg = cfg.num_cpus(n);
    }
    for (k, v) in parse_resources(resources.unwrap_or(""))? {
        cfg = cfg.resource(&k, v);
    }
    if let Some(b) = store {
        cfg = cfg.object_store_bytes(b);
    }
    let mut control = None;
    let node_role = match &role {
        Role::Control { state_dir } => {
            die_with_parent();
            NodeRole::Control { timeout: env_ms("FERRY_NODE_TIMEOUT_MS", 5000), state_dir: state_dir.clone() }
        }
        Role::Head { state_dir } => {
            // The head's state always persists (a fresh directory when no port is fixed), so
            // that its control store can be started again on it.
            // With no port fixed it is named for this process, so that it goes once the
            // process has (as other nodes' stale directories do).
            let state_dir = state_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(match port {
                    0 => format!("ferry-{}-head-state", std::process::id()),
                    p => format!("ferry-head-{p}"),
                })
            });
            let c = ControlStore::start(host, &state_dir)?;
            let addr = c.addr.clone();
            control = Some(c);
            // Five heartbeats per timeout at least (its control store has the same timeout).
            let timeout = env_ms("FERRY_NODE_TIMEOUT_MS", 5000).as_millis() as u64;
            let heartbeat = env_ms("FERRY_HEARTBEAT_MS", (timeout / 5).clamp(10, 1000));
            NodeRole::Head { control: addr, heartbeat, state_dir: Some(state_dir) }
        }
        Role::Member { head, token } => {
            // A member uses the cluster's token, so drivers reach it with the same one.
            cfg = cfg.token(&cluster_token(head, token.clone())?);
            NodeRole::Member { head: head.clone(), heartbeat: env_ms("FERRY_HEARTBEAT_MS", 1000) }
        }
    };
    let (node, token) =
        ferry::__private::start_node(&cfg, &format!("{host}:{port}"), node_role).map_err(|e| e.to_string())?;
    let addr = node.tcp_addr().ok_or("the node has no TCP address")?;
    if let Role::Control { state_dir } = &role {
        // How the head (and tests) find the running control store's process. Nobody joins it
        // by a token file: it writes none (it may be killed, and could not remove it).
        if let Some(dir) = state_dir {
            let _ = std::fs::write(dir.join("control.pid"), std::process::id().to_string());
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
    let file = ferry::__private::token_file(addr.port());
    write_private(&file, &token).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    println!("ferry: node started (pid {})", std::process::id());
    println!("address: {addr}");
    println!("token: {token}");
    println!("join with: ferry::init(ferry::Config::default().address(\"{addr}\")), or FERRY_ADDRESS={addr}");
    println!("the token is in {} (or give FERRY_TOKEN)", file.display());
    println!("ready");
    node.wait_for_stop_request();
    let _ = std::fs::remove_file(&file);
    if let Some(s) = supervisor {
        s.stop();
    }
    node.shutdown();
    Ok(())
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
    state_dir: std::path::PathBuf,
}

impl ControlStore {
    /// Starts `ferry start --control-store` on `host` (any port the first time) and waits
    /// until it is ready.
    fn start(host: &str, state_dir: &std::path::Path) -> Result<ControlStore, String> {
        let (child, addr) = Self::spawn(host, 0, state_dir)?;
        Ok(ControlStore { child, addr, host: host.to_string(), state_dir: state_dir.to_path_buf() })
    }

    fn spawn(host: &str, port: u16, state_dir: &std::path::Path) -> Result<(std::process::Child, String), String> {
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

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())
}

/// Starts `ferry start ... --block` in the background (its own session) and returns once it
/// is ready, passing on what it printed.
fn start_background() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--block".into());
    // Its log goes to a file: the terminal (or a pipe) it was started from may go away.
    let log = std::env::temp_dir().join(format!("ferry-node-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(log_file);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; the node must outlive this terminal session.
    unsafe {
        cmd.pre_exec(|| {
            if ferry_sys_setsid() < 0 {
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

fn ferry_sys_setsid() -> i32 {
    extern "C" {
        fn setsid() -> i32;
    }
    // SAFETY: plain syscall.
    unsafe { setsid() }
}

/// The token to reach the node at `address`: given, `FERRY_TOKEN`, or its token file.
fn cluster_token(address: &str, token: Option<String>) -> Result<String, String> {
    let given = token.or_else(|| std::env::var("FERRY_TOKEN").ok());
    ferry::__private::cluster_token(address, given.as_deref()).map_err(|e| e.to_string())
}

type Reader = ferry_proto::FrameReader<ferry_proto::Stream>;

/// Connects to the node at `address` and registers as `kind`.
fn register(address: &str, token: &str, kind: ProcKind) -> Result<(ferry_proto::Conn, Reader), String> {
    let me = WorkerId(ferry_proto::ids::random_u64());
    let (conn, mut rx, _) = connect(&Addr::Tcp(address.to_string()), token, me, 1 << 24)
        .map_err(|e| format!("cannot reach the node at {address}: {e}"))?;
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

/// Connects to the node at `address` as a tool.
fn node_conn(address: &str, token: Option<String>) -> Result<(ferry_proto::Conn, Reader), String> {
    register(address, &cluster_token(address, token)?, ProcKind::Tool)
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
fn submit(address: &str, token: Option<String>, command: &[String]) -> ExitCode {
    match submit_inner(address, token, command) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn submit_inner(address: &str, token: Option<String>, command: &[String]) -> Result<i32, String> {
    use std::io::Write;
    let program = std::path::Path::new(&command[0]);
    let size = std::fs::metadata(program).map_err(|e| format!("cannot read {}: {e}", program.display()))?.len();
    let hash = sha256_file(program)?;
    let (conn, mut rx) = node_conn(address, token)?;
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
    conn.send(&ToNode::SubmitJob { req: 3, hash, args: command[1..].to_vec() }).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut last_output = Instant::now();
    let mut job = 0;
    loop {
        match rx.read::<FromNode>() {
            Ok(FromNode::JobStarted { job: j, pid, .. }) => {
                job = j;
                eprintln!("ferry: job {j} running on the head (pid {pid})");
            }
            Ok(FromNode::JobOutput { stderr, data, .. }) => {
                last_output = Instant::now();
                let _ = if stderr { std::io::stderr().write_all(&data) } else { std::io::stdout().write_all(&data) };
            }
            Ok(FromNode::JobEnded { code, detail, .. }) => {
                let _ = std::io::stdout().flush();
                eprintln!("ferry: job {job} ended ({detail}) after {:.1?}", started.elapsed());
                return Ok(code.unwrap_or(1));
            }
            Ok(_) => {}
            Err(ferry_proto::FrameError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                // A long wait shows progress rather than silence.
                if last_output.elapsed() >= Duration::from_secs(30) {
                    eprintln!("ferry: job {job} still running ({:.0?} so far)", started.elapsed());
                    last_output = Instant::now();
                }
            }
            Err(e) => return Err(format!("lost the head while job {job} ran: {e}")),
        }
    }
}

fn status(address: &str, token: Option<String>) -> Result<(), String> {
    let (conn, mut rx) = node_conn(address, token)?;
    conn.send(&ToNode::Stats { req: 1 }).map_err(|e| e.to_string())?;
    let stats = loop {
        match rx.read::<FromNode>() {
            Ok(FromNode::Stats { stats, .. }) => break stats,
            Ok(_) => continue,
            Err(e) => return Err(e.to_string()),
        }
    };
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!("node {} at {address}: alive", stats.node.map(|n| n.to_string()).unwrap_or_default());
    println!("  resources: {} available of {}", stats.available, stats.total);
    println!("  workers:   {} ({} idle, {} leased)", stats.workers, stats.idle_workers, stats.leased_workers);
    println!("  actors:    {}", stats.actors);
    println!(
        "  store:     {} objects, {:.1} of {:.1} MiB in memory; {} objects, {:.1} MiB spilled",
        stats.store_objects,
        mb(stats.store_used_bytes),
        mb(stats.store_capacity_bytes),
        stats.spilled_objects,
        mb(stats.spilled_bytes)
    );
    println!("  waiting lease requests: {}", stats.pending_lease_requests);
    println!(
        "  transfers: {} objects ({:.1} MiB) sent to other nodes, {} ({:.1} MiB) copied from them",
        stats.transfers_out,
        mb(stats.transfer_bytes_out),
        stats.transfers_in,
        mb(stats.transfer_bytes_in)
    );
    conn.send(&ToNode::ClusterStatus { req: 2 }).map_err(|e| e.to_string())?;
    let nodes = loop {
        match rx.read::<FromNode>() {
            Ok(FromNode::Cluster { nodes, .. }) => break Some(nodes),
            Ok(FromNode::Ack { error: Some(_), .. }) => break None,
            Ok(_) => continue,
            Err(e) => return Err(e.to_string()),
        }
    };
    if let Some(nodes) = nodes.filter(|n| n.len() > 1) {
        let work = nodes.iter().filter(|n| !n.head);
        println!("cluster: {} nodes, {} alive", work.clone().count(), work.filter(|n| n.alive).count());
        for n in nodes {
            let state = if n.alive { "alive" } else { "dead" };
            let role = if n.head { " (control store)" } else { "" };
            println!(
                "  node {}{role} at {}: {state}; {} available of {}; {} workers, {} actors; \
                 {} objects, {:.1} MiB ({:.1} MiB spilled); last heard {} ms ago",
                n.node,
                n.addr,
                n.available,
                n.total,
                n.workers,
                n.actors,
                n.objects,
                mb(n.object_bytes),
                mb(n.spilled_bytes),
                n.silent_ms
            );
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
            println!(
                "  job {} (pid {}, binary {}): {state}; {}",
                j.id,
                j.pid,
                &j.hash[..j.hash.len().min(12)],
                j.args.join(" ")
            );
        }
    }
    Ok(())
}

fn stop(address: &str, token: Option<String>) -> Result<(), String> {
    let (conn, mut rx) = node_conn(address, token)?;
    conn.send(&ToNode::StopNode).map_err(|e| e.to_string())?;
    // The node closes every connection as it stops: this one closing means it is gone.
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        match rx.read::<FromNode>() {
            Ok(_) => continue,
            Err(ferry_proto::FrameError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(_) => {
                println!("ferry: node at {address} stopped");
                return Ok(());
            }
        }
    }
    Err(format!("the node at {address} did not stop within 20 s"))
}
