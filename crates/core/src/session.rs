//! Starting an embedded local cluster: directories, token, the node daemon, and this
//! process's runtime as its driver.
//!
//! A session's files live in this user's private directories (`ferry_os::runtime_dir`,
//! `ferry_os::shm_dir`): `s-<pid>-<rand>` in the first (sockets, spilled objects) and in the
//! second (the store). The daemon makes both new and holds a lock on each for its life; they
//! are removed at shutdown, at normal process exit, and otherwise by the next `init` of this
//! user once nobody holds their lock (whatever PID namespace the session ran in).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::{try_runtime, Identity, Runtime};
use ferry_node::{NodeHandle, NodeOptions};
use ferry_proto::ids::{random_bytes, random_u64};
use ferry_proto::msg::{ProcKind, Shape};
use ferry_proto::WorkerId;
use ferry_sched::PoolOptions;
use std::path::{Path, PathBuf};

/// The prefix of session directories (swept once their session is over).
pub(crate) const SESSION_PREFIX: &str = "s-";

fn dirs_error(e: std::io::Error) -> Error {
    Error::Connection { detail: format!("ferry's directories: {e}") }
}

/// Removes the directories of this user's sessions that are over.
fn cleanup_stale(runtime: &Path, shm: &Path) {
    ferry_os::sweep(runtime, SESSION_PREFIX);
    ferry_os::sweep(shm, SESSION_PREFIX);
}

/// A node's options and directories for `cfg`: workers run `program` (`None`: the first
/// driver's), and it also listens on `tcp` if given.
fn node_options(cfg: &Config, program: Option<PathBuf>, tcp: Option<String>) -> Result<NodeOptions> {
    let runtime = ferry_os::runtime_dir().map_err(dirs_error)?;
    let shm = ferry_os::shm_dir().map_err(dirs_error)?;
    cleanup_stale(&runtime, &shm);
    let sid = format!("{SESSION_PREFIX}{}-{:08x}", std::process::id(), random_u64() as u32);
    let session_dir = runtime.join(&sid);
    // A spill directory the user names may be shared: the session spills into a directory
    // of its own there, made new and private.
    let spill_dir = match &cfg.spill_dir {
        Some(d) => d.join(format!("ferry-spill-{sid}")),
        None => session_dir.join("spill"),
    };
    let store_dir = shm.join(&sid);
    let token = match &cfg.token {
        Some(t) => t.clone(),
        None => random_bytes(16).iter().map(|b| format!("{b:02x}")).collect(),
    };
    let cpus = cfg.cpus();
    Ok(NodeOptions {
        session_dir,
        store_dir,
        store_capacity: cfg.store_bytes(&shm),
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
        head_grace: std::time::Duration::from_millis(
            std::env::var("FERRY_HEAD_GRACE_MS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(60_000),
        ),
        state_dir: None,
        worker_env: cfg.to_worker_env(),
        max_frame: cfg.max_frame_bytes,
    })
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
    let mut opts = node_options(&cfg, None, Some(tcp.to_string()))?;
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

/// The token kept in `dir` (made, readable by its user only, the first time). The directory
/// must be this user's and private (or is made so): it is refused otherwise.
fn persistent_token(dir: &Path) -> Result<String> {
    let fail = |e: std::io::Error| Error::Connection { detail: format!("the head's state directory: {e}") };
    let dir = ferry_os::private_dir_all(dir).map_err(fail)?;
    let file = dir.join("token");
    match ferry_os::read_secret(&file) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let token: String = random_bytes(16).iter().map(|b| format!("{b:02x}")).collect();
    ferry_os::write_secret(&file, token.as_bytes()).map_err(fail)?;
    Ok(token)
}

/// Where `ferry start` leaves the token of the node listening on `port`, for drivers of the
/// same user on that host that join without `Config::token` or `FERRY_TOKEN`: in this
/// user's private runtime directory, readable by this user only.
pub fn token_file(port: u16) -> Result<PathBuf> {
    Ok(ferry_os::runtime_dir().map_err(dirs_error)?.join(format!("cluster-{port}.token")))
}

pub(crate) fn start_embedded(cfg: Config) -> Result<()> {
    if let Some(address) = cfg.address.clone() {
        return join(cfg, &address);
    }
    let exe =
        std::env::current_exe().map_err(|e| Error::Connection { detail: format!("cannot find this program: {e}") })?;
    let opts = node_options(&cfg, Some(exe), None)?;
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
/// on the node's host (read only if it is this user's and private).
pub fn cluster_token(address: &str, given: Option<&str>) -> Result<String> {
    if let Some(t) = given {
        return Ok(t.to_string());
    }
    let port = address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).ok_or_else(|| Error::Connection {
        detail: format!("{address:?} is not an address: use HOST:PORT, as `ferry start` printed it"),
    })?;
    if !is_local_address(address) {
        // This host's token files are for this host's nodes only: another host's node on the
        // same port is another cluster.
        return Err(Error::Connection {
            detail: format!(
                "no cluster token for {address}: give the token its `ferry start` printed (Config::token, \
                 FERRY_TOKEN, or --token-file)"
            ),
        });
    }
    let file = token_file(port)?;
    ferry_os::read_secret(&file).map(|t| t.trim().to_string()).map_err(|e| Error::Connection {
        detail: format!(
            "no cluster token for {address}: give the token `ferry start` printed (Config::token, FERRY_TOKEN, \
             or --token-file), or run as the same user on the node's host, where it is in {}: {e}",
            file.display()
        ),
    })
}

/// The name of the link to the Unix socket of this user's node at `sa` on this host.
fn link_name(sa: std::net::SocketAddr) -> String {
    format!("node-{}.sock", std::net::SocketAddr::new(sa.ip().to_canonical(), sa.port()))
}

/// Where `ferry start` links the Unix socket of the node listening at `addr` on this host, for
/// processes of the same user there (see [`local_socket`]): under the address itself, and, for
/// a node on every address or on loopback, under `127.0.0.1` and `::1` too (what `localhost`
/// resolves to).
pub fn local_socket_links(addr: std::net::SocketAddr) -> Result<Vec<PathBuf>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let dir = ferry_os::runtime_dir().map_err(dirs_error)?;
    let mut names = vec![link_name(addr)];
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            names.push(link_name(SocketAddr::new(ip, addr.port())));
        }
    }
    names.sort();
    names.dedup();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The Unix socket of this user's node at `address` if it runs on this host: processes that
/// can reach it so do, rather than over TCP (faster, and out of reach of strangers, who can
/// reach the TCP port but not the socket's private directory). `Ok(None)`: no node of this
/// user's was started there (TCP, then). An error when one was and is gone: the port may be
/// someone else's by now, so nothing is sent there in its place.
pub fn local_socket(address: &str) -> Result<Option<PathBuf>> {
    use std::net::ToSocketAddrs;
    let Some(sa) = address.to_socket_addrs().ok().and_then(|mut a| a.next()) else { return Ok(None) };
    if !is_local(sa) {
        return Ok(None);
    }
    let link = ferry_os::runtime_dir().map_err(dirs_error)?.join(link_name(sa));
    if std::fs::symlink_metadata(&link).is_err() {
        return Ok(None);
    }
    if std::os::unix::net::UnixStream::connect(&link).is_ok() {
        return Ok(Some(link));
    }
    Err(Error::Connection {
        detail: format!(
            "your node at {address} is not running any more (its socket, linked at {link}, is dead): start it \
             again with `ferry start`, or check the address; nothing was sent to whatever may listen on that \
             port now (remove {link} to reach it over TCP anyway)",
            link = link.display()
        ),
    })
}

/// Whether `sa` is an address of this host: of this network namespace, which namespace hosts
/// do not share though they share a filesystem (one a socket can be bound to here).
fn is_local(sa: std::net::SocketAddr) -> bool {
    std::net::UdpSocket::bind((sa.ip(), 0)).is_ok()
}

/// [`is_local`] for `host:port`.
fn is_local_address(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    address.to_socket_addrs().ok().and_then(|mut a| a.next()).is_some_and(is_local)
}

/// Joins a node that runs on its own (`ferry start`) at `address` (`host:port`).
fn join(cfg: Config, address: &str) -> Result<()> {
    let node_addr = match local_socket(address)? {
        Some(sock) => ferry_proto::Addr::Unix(sock),
        None => {
            probe(address)?;
            ferry_proto::Addr::Tcp(address.to_string())
        }
    };
    let token = cluster_token(address, cfg.token.as_deref())?;
    let id = Identity {
        me: WorkerId(random_u64()),
        kind: ProcKind::Driver,
        token,
        node_addr,
        // Learnt from the node when registering.
        store_dir: PathBuf::new(),
        session_dir: PathBuf::new(),
        spill_dir: None,
        // Processes of other nodes reach this driver at its address on the way to the node.
        tcp_host: local_ip_toward(address),
    };
    Runtime::start(id, cfg, None, None)?;
    // Its socket goes when it exits (the node removes it too when its link closes).
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(exit_cleanup) };
    Ok(())
}

/// Checks that something listens at `address` (`host:port`) before anything else is said
/// about joining it (a missing token is beside the point when no node runs there).
pub fn probe(address: &str) -> Result<()> {
    use std::net::ToSocketAddrs;
    let bad =
        || Error::Connection { detail: format!("{address:?} is not an address: use HOST:PORT (e.g. 127.0.0.1:6380)") };
    let (_, port) = address.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| Error::Connection { detail: format!("cannot resolve {address}: {e}") })?
        .collect();
    let mut last = None;
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Connection {
        detail: format!(
            "nothing is listening at {address} ({}); start a cluster there with `ferry start --head`, or check \
             the address `ferry start` printed",
            last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
        ),
    })
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
