//! Starting an embedded local cluster: directories, token, the node daemon, and this
//! process's runtime as its driver.
//!
//! A session's files live in `$TMPDIR/ferry-<pid>-<rand>` (sockets) and
//! `/dev/shm/ferry-<pid>-<rand>` (the store). Both are removed at shutdown, at normal process
//! exit, and otherwise by the next `init` on the machine once `<pid>` is gone.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::{try_runtime, Identity, Runtime};
use ferry_node::{NodeHandle, NodeOptions};
use ferry_proto::ids::{random_bytes, random_u64};
use ferry_proto::msg::{ProcKind, Shape};
use ferry_proto::WorkerId;
use ferry_sched::PoolOptions;
use std::path::{Path, PathBuf};

fn shm_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes the directories of sessions whose process no longer exists.
fn cleanup_stale() {
    for root in [std::env::temp_dir(), shm_root()] {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ferry-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A node's options and directories for `cfg`: workers run `program` (`None`: the first
/// driver's), and it also listens on `tcp` if given.
fn node_options(cfg: &Config, program: Option<PathBuf>, tcp: Option<String>) -> NodeOptions {
    cleanup_stale();
    let sid = format!("{}-{:08x}", std::process::id(), random_u64() as u32);
    let session_dir = std::env::temp_dir().join(format!("ferry-{sid}"));
    let spill_dir = cfg.spill_dir.clone().unwrap_or_else(|| session_dir.join("spill"));
    let store_dir = shm_root().join(format!("ferry-{sid}-store"));
    let token = match &cfg.token {
        Some(t) => t.clone(),
        None => random_bytes(16).iter().map(|b| format!("{b:02x}")).collect(),
    };
    let cpus = cfg.cpus();
    NodeOptions {
        session_dir,
        store_dir,
        store_capacity: cfg.store_bytes(),
        spill_dir: Some(spill_dir),
        token,
        resources: Shape::with_resources(cpus as f64, &cfg.resources),
        pool: PoolOptions {
            prestart: cfg.prestart_workers.unwrap_or(cpus),
            max_workers: cfg.max_workers,
            idle_timeout: cfg.idle_worker_timeout,
        },
        worker_program: program,
        tcp,
        head_timeout: None,
        control_only: false,
        join: None,
        state_dir: None,
        worker_env: cfg.to_worker_env(),
        max_frame: cfg.max_frame_bytes,
    }
}

/// How a node started on its own takes part in a cluster.
#[derive(Debug, Clone)]
pub enum NodeRole {
    /// The control store: nodes join it; one silent this long is dead. It runs no work; its
    /// tables persist in `state_dir`.
    Control { timeout: std::time::Duration, state_dir: Option<PathBuf> },
    /// The head node: it joins the control store at `control` like any member, and keeps
    /// submitted binaries and the jobs it runs in `state_dir`.
    Head { control: String, heartbeat: std::time::Duration, state_dir: Option<PathBuf> },
    /// It joins the cluster through any node's address (normally the head's), with a
    /// heartbeat every interval.
    Member { head: String, heartbeat: std::time::Duration },
}

/// Starts a node on its own (for `ferry start`): it listens on `tcp` too, and its workers
/// run the binary of the first driver that joins (or that leases a worker from another node).
/// Returns the node and its token.
pub fn start_node(cfg: &Config, tcp: &str, role: NodeRole) -> Result<(NodeHandle, String)> {
    let mut cfg = cfg.clone();
    if let NodeRole::Head { state_dir: Some(dir), .. } | NodeRole::Control { state_dir: Some(dir), .. } = &role {
        // The cluster's token lives with the head's state: a head started again keeps it, so
        // members and drivers that hold it carry on.
        if cfg.token.is_none() {
            cfg.token = Some(persistent_token(dir)?);
        }
    }
    let mut opts = node_options(&cfg, None, Some(tcp.to_string()));
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
    let node = ferry_node::start(opts)
        .map_err(|e| Error::Connection { detail: format!("cannot start the node daemon on {tcp}: {e}") })?;
    Ok((node, token))
}

/// The token kept in `dir` (made, readable by its user only, the first time).
fn persistent_token(dir: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&file) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let fail =
        |e: std::io::Error| Error::Connection { detail: format!("cannot keep the token in {}: {e}", file.display()) };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let token: String = random_bytes(16).iter().map(|b| format!("{b:02x}")).collect();
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&file).map_err(fail)?;
    f.write_all(token.as_bytes()).map_err(fail)?;
    Ok(token)
}

/// Where `ferry start` leaves the token of the node listening on `port` (readable by its user
/// only), for drivers that join without `Config::token` or `FERRY_TOKEN`.
pub fn token_file(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("ferry-cluster-{port}.token"))
}

pub(crate) fn start_embedded(cfg: Config) -> Result<()> {
    if let Some(address) = cfg.address.clone() {
        return join(cfg, &address);
    }
    let exe =
        std::env::current_exe().map_err(|e| Error::Connection { detail: format!("cannot find this program: {e}") })?;
    let opts = node_options(&cfg, Some(exe), None);
    let (token, store_dir, session_dir, spill_dir) =
        (opts.token.clone(), opts.store_dir.clone(), opts.session_dir.clone(), opts.spill_dir.clone());
    let node = ferry_node::start(opts)
        .map_err(|e| Error::Connection { detail: format!("cannot start the node daemon: {e}") })?;
    let id = Identity {
        me: WorkerId(random_u64()),
        kind: ProcKind::Driver,
        token,
        node_addr: node.addr(),
        store_dir,
        session_dir,
        spill_dir,
        tcp_host: None,
    };
    Runtime::start(id, cfg, Some(node), None)?;
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(exit_cleanup) };
    Ok(())
}

/// The token to reach the node at `address`: `given`, or the token file `ferry start` wrote
/// on the node's host.
pub fn cluster_token(address: &str, given: Option<&str>) -> Result<String> {
    if let Some(t) = given {
        return Ok(t.to_string());
    }
    let port = address.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
    let file = token_file(port);
    std::fs::read_to_string(&file).map(|t| t.trim().to_string()).map_err(|e| Error::Connection {
        detail: format!(
            "no cluster token: give the token `ferry start` printed (Config::token, --token or \
             FERRY_TOKEN), or run on the node's host, where it is in {}: {e}",
            file.display()
        ),
    })
}

/// Joins a node that runs on its own (`ferry start`) at `address` (`host:port`).
fn join(cfg: Config, address: &str) -> Result<()> {
    let token = cluster_token(address, cfg.token.as_deref())?;
    let id = Identity {
        me: WorkerId(random_u64()),
        kind: ProcKind::Driver,
        token,
        node_addr: ferry_proto::Addr::Tcp(address.to_string()),
        // Learnt from the node when registering.
        store_dir: PathBuf::new(),
        session_dir: PathBuf::new(),
        spill_dir: None,
        // Processes of other nodes reach this driver at its address on the way to the node.
        tcp_host: local_ip_toward(address),
    };
    Runtime::start(id, cfg, None, None)?;
    Ok(())
}

/// This host's address on the route to `address` (no packet is sent: connecting a UDP
/// socket only picks the route).
fn local_ip_toward(address: &str) -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(address).ok()?;
    Some(s.local_addr().ok()?.ip().to_string())
}

extern "C" fn exit_cleanup() {
    if let Some(rt) = try_runtime() {
        rt.emergency_cleanup();
    }
}
