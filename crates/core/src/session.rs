//! Starting this process's runtime as a driver: of an embedded local cluster (a node daemon on
//! threads of this process, started by the embedder the `ferry` crate provides, see
//! [`Embedded`]), or of a cluster started with `ferry start`, joined by address.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::{try_runtime, Identity, Runtime};
use ferry_proto::ids::random_u64;
use ferry_proto::msg::ProcKind;
use ferry_proto::{Addr, WorkerId};
use std::path::PathBuf;
use std::sync::OnceLock;

/// A node daemon running on threads of this process (the embedded cluster), as the runtime
/// holds it: stopped with the runtime, cleaned up at exit.
pub trait EmbeddedNode: Send {
    /// Stops the daemon and every process it started, and removes its files.
    fn shutdown(self: Box<Self>);
    /// Last-resort cleanup at process exit, taking no lock that could be held.
    fn emergency_cleanup(&self);
    /// Pids of the worker processes alive now.
    fn worker_pids(&self) -> Vec<u32>;
}

/// What starting an embedded node gives the runtime: the node, where it listens, its token
/// and its directories.
pub struct Embedded {
    pub node: Box<dyn EmbeddedNode>,
    pub addr: Addr,
    pub token: String,
    pub store_dir: PathBuf,
    pub session_dir: PathBuf,
    pub spill_dir: Option<PathBuf>,
}

/// Starts an embedded node for a program with these settings.
pub type Embedder = fn(&Config) -> Result<Embedded>;

static EMBEDDER: OnceLock<Embedder> = OnceLock::new();

/// Sets how an embedded node is started (the `ferry` crate does, before anything else).
pub fn set_embedder(e: Embedder) {
    let _ = EMBEDDER.set(e);
}

pub(crate) fn start_embedded(cfg: Config) -> Result<()> {
    // ferry's log lines go to this terminal, unless the program installed a subscriber.
    ferry_os::logging::init(ferry_os::logging::Style::Terminal);
    if let Some(address) = cfg.address.clone() {
        return join(cfg, &address);
    }
    let embed = EMBEDDER.get().ok_or_else(|| Error::NotRunning {
        detail: "no cluster to run on: depend on the `ferry` crate (which starts an embedded one), or set \
                 FERRY_ADDRESS to join one started with `ferry start`"
            .into(),
    })?;
    let e = embed(&cfg)?;
    let id = Identity {
        me: WorkerId(random_u64()),
        kind: ProcKind::Driver,
        token: e.token,
        node_addr: e.addr,
        store_dir: e.store_dir,
        session_dir: e.session_dir,
        spill_dir: e.spill_dir,
        tcp_host: None,
    };
    Runtime::start(id, cfg, Some(e.node), None)?;
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(exit_cleanup) };
    Ok(())
}

fn connection(detail: String) -> Error {
    Error::Connection { detail }
}

/// Joins a node that runs on its own (`ferry start`) at `address` (`host:port`).
fn join(cfg: Config, address: &str) -> Result<()> {
    use ferry_os::local;
    let node_addr = match local::local_socket(address).map_err(connection)? {
        Some(sock) => Addr::Unix(sock),
        None => {
            local::probe(address).map_err(connection)?;
            Addr::Tcp(address.to_string())
        }
    };
    let token = local::cluster_token(address, cfg.token.as_deref()).map_err(connection)?;
    let id = Identity {
        // A job's driver takes the id its head chose, which names the job in the task history.
        me: WorkerId(ferry_types::defaults::job_driver_id().unwrap_or_else(random_u64)),
        kind: ProcKind::Driver,
        token,
        node_addr,
        // Learnt from the node when registering.
        store_dir: PathBuf::new(),
        session_dir: PathBuf::new(),
        spill_dir: None,
        // Processes of other nodes reach this driver at its address on the way to the node.
        tcp_host: local::local_ip_toward(address),
    };
    Runtime::start(id, cfg, None, None)?;
    // Its socket goes when it exits (the node removes it too when its link closes).
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(exit_cleanup) };
    Ok(())
}

extern "C" fn exit_cleanup() {
    if let Some(rt) = try_runtime() {
        rt.emergency_cleanup();
    }
}
