//! The head's processes (DESIGN §9): its state directory, locked for its life; the control
//! store, which runs as a process of its own so that it can die and start again while every
//! node, task and actor goes on; and the supervisor that starts it again on the same address
//! and state whenever it dies.
//!
//! The head starts the control store with a command its caller gives (the `ferry` binary
//! runs itself with `start --control-store`); the child runs [`serve_control_store`], which
//! prints `address: HOST:PORT` and then `ready` on its standard output, the two lines
//! [`ControlStore::start`] waits for.

use crate::launch::{LaunchConfig, LaunchError, NodeRole};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A head's state directory, locked for the head's life: a second head on it is refused.
#[derive(Debug)]
pub struct HeadState {
    dir: PathBuf,
    /// For a head on a port picked by the system: a directory of its own, removed with it.
    _session: Option<ferry_os::SessionDir>,
    _lock: Option<ferry_os::Lock>,
}

impl HeadState {
    /// Opens (and locks) the state of a head listening on `host:port`: `given`, else
    /// `head-PORT` in this user's runtime directory, else (port 0) a session directory of its
    /// own. The directory is made private or refused if others can reach it.
    pub fn open(given: Option<&Path>, host: &str, port: u16) -> Result<HeadState, LaunchError> {
        let runtime = || ferry_os::runtime_dir().map_err(LaunchError::Dirs);
        if given.is_none() && port == 0 {
            let name = format!("s-head-{}-{:08x}", std::process::id(), ferry_types::random_u64() as u32);
            let session = ferry_os::SessionDir::create(&runtime()?, &name).map_err(LaunchError::Dirs)?;
            return Ok(HeadState { dir: session.path().to_path_buf(), _session: Some(session), _lock: None });
        }
        let dir = match given {
            Some(d) => d.to_path_buf(),
            None => runtime()?.join(format!("head-{port}")),
        };
        let state_dir = |source| LaunchError::StateDir { dir: dir.clone(), source };
        let dir = ferry_os::private_dir_all(&dir).map_err(state_dir)?;
        let pid_file = dir.join("head.pid");
        let lock = ferry_os::Lock::try_acquire(&dir.join("head.lock")).map_err(state_dir)?;
        let Some(lock) = lock else {
            let pid = std::fs::read_to_string(&pid_file).map(|p| p.trim().to_string()).unwrap_or_default();
            return Err(LaunchError::HeadRunning { dir, pid });
        };
        if port != 0 {
            if let Err(source) = std::net::TcpListener::bind((host, port)) {
                return Err(match source.kind() {
                    std::io::ErrorKind::AddrInUse => LaunchError::PortInUse { host: host.to_string(), port },
                    _ => LaunchError::Listen { addr: format!("{host}:{port}"), source },
                });
            }
        }
        ferry_os::write_secret(&pid_file, std::process::id().to_string().as_bytes()).map_err(state_dir)?;
        Ok(HeadState { dir, _session: None, _lock: Some(lock) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Dies with the process that started this one (the head, for its control store), if
/// `FERRY_PARENT_PID` names it.
fn die_with_parent() {
    if let Some(parent) = std::env::var("FERRY_PARENT_PID").ok().and_then(|p| p.parse().ok()) {
        ferry_os::die_with_parent(Some(parent));
    }
}

/// Runs the control store in this process (the child [`ControlStore::start`] starts) until
/// it is asked to stop: it dies with its parent, records its pid in `state_dir`, and prints
/// `address: ...` and `ready` once it listens.
pub fn serve_control_store(
    cfg: &LaunchConfig,
    host: &str,
    port: u16,
    state_dir: Option<PathBuf>,
) -> Result<(), LaunchError> {
    die_with_parent();
    let role = NodeRole::Control { timeout: crate::launch::node_timeout(), state_dir: state_dir.clone() };
    let (node, _token) = crate::launch::start(cfg, &format!("{host}:{port}"), role)?;
    let addr = node.tcp_addr().ok_or(LaunchError::NoTcpAddress)?;
    // How the head (and tests) find the running control store's process. Nobody joins it by
    // a token file: it writes none (it may be killed, and could not remove it).
    if let Some(dir) = &state_dir {
        let _ = ferry_os::write_secret(&dir.join("control.pid"), std::process::id().to_string().as_bytes());
    }
    println!("address: {addr}");
    println!("ready");
    node.wait_for_stop_request();
    node.shutdown();
    Ok(())
}

/// Makes the command that starts the control store's process listening on a port (0: any),
/// with its tables in a state directory (the head's).
pub type ControlCommand = Box<dyn Fn(u16, &Path) -> Command + Send>;

/// The control store's process, started by the head.
pub struct ControlStore {
    child: Child,
    addr: String,
    command: ControlCommand,
    state_dir: PathBuf,
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStore").field("pid", &self.child.id()).field("addr", &self.addr).finish()
    }
}

impl ControlStore {
    /// Starts the control store with `command` (on any port, its tables in `state_dir`) and
    /// waits until it is ready.
    pub fn start(command: ControlCommand, state_dir: &Path) -> Result<ControlStore, LaunchError> {
        let (child, addr) = spawn(&command, 0, state_dir)?;
        Ok(ControlStore { child, addr, command, state_dir: state_dir.to_path_buf() })
    }

    /// Where it listens.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (the head could not start after all).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Watches the control store from a thread of its own (its death signal is tied to that
    /// thread) and starts it again, on the same address and state, whenever it dies.
    pub fn supervise(self) -> Supervisor {
        let stopping = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU32::new(self.child.id()));
        let restarts = Arc::new(AtomicU64::new(0));
        let (s, p, r) = (stopping.clone(), pid.clone(), restarts.clone());
        let thread = std::thread::spawn(move || {
            let ControlStore { mut child, addr, command, state_dir } = self;
            let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let mut started = Instant::now();
            loop {
                let status = child.wait();
                if s.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!(?status, %addr, "the control store exited; starting it again");
                // Only for drills and tests that need the outage to last.
                std::thread::sleep(ferry_types::defaults::env_ms("FERRY_CONTROL_RESTART_DELAY_MS", Duration::ZERO));
                if started.elapsed() < Duration::from_secs(1) {
                    // It died as soon as it started: not in a tight loop.
                    std::thread::sleep(Duration::from_secs(1));
                }
                // Its port may take a moment to be free again; bounded, then the head gives up.
                let mut tries = 0;
                child = loop {
                    match spawn(&command, port, &state_dir) {
                        Ok((c, _)) => break c,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            tracing::warn!("cannot start the control store yet: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => {
                            tracing::error!("giving up on the control store: {e}");
                            return;
                        }
                    }
                };
                p.store(child.id(), Ordering::SeqCst);
                r.fetch_add(1, Ordering::Relaxed);
                started = Instant::now();
                if s.load(Ordering::SeqCst) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        });
        Supervisor { stopping, pid, restarts, thread }
    }
}

/// Starts the control store's process and waits for its `address:` and `ready` lines.
fn spawn(command: &ControlCommand, port: u16, state_dir: &Path) -> Result<(Child, String), LaunchError> {
    let failed = |why: String| LaunchError::ControlStore(why);
    let mut child = command(port, state_dir)
        .env("FERRY_PARENT_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let out = child.stdout.take().ok_or_else(|| failed("it has no standard output".into()))?;
    let mut lines = BufReader::new(out).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.map_err(|e| failed(e.to_string()))?;
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
            Err(failed(format!("it exited before it was ready ({:?})", child.wait().ok())))
        }
    }
}

/// The thread that starts the control store again; [`Supervisor::stop`] stops both.
#[derive(Debug)]
pub struct Supervisor {
    stopping: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Supervisor {
    /// A count of the times it started the control store again (shared, live).
    pub fn restarts(&self) -> Arc<AtomicU64> {
        self.restarts.clone()
    }

    /// Stops the control store for good.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        let pid = self.pid.load(Ordering::SeqCst);
        // SAFETY: a signal to the child this head started (and has not reaped: the thread
        // above reaps it).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let _ = self.thread.join();
    }
}
