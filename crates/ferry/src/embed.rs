//! The embedded cluster: a node daemon on threads of this process (`ferry_node::launch`),
//! wired into the runtime (`ferry_core`), which knows nothing of the daemon beyond
//! [`EmbeddedNode`]. Every entry point of this crate that may start the runtime calls
//! [`ready`] first, so the runtime always finds the embedder it needs.

use ferry_core::__private::{set_embedder, Embedded, EmbeddedNode};
use ferry_core::{Config, Error, Result};
use ferry_node::launch::LaunchConfig;
use ferry_node::NodeHandle;

struct Handle(NodeHandle);

impl EmbeddedNode for Handle {
    fn shutdown(self: Box<Self>) {
        self.0.shutdown()
    }
    fn emergency_cleanup(&self) {
        self.0.emergency_cleanup()
    }
    fn worker_pids(&self) -> Vec<u32> {
        self.0.worker_pids()
    }
}

/// Starts the embedded node for a program with settings `cfg`; its workers run this program.
fn embed(cfg: &Config) -> Result<Embedded> {
    let exe =
        std::env::current_exe().map_err(|e| Error::Connection { detail: format!("cannot find this program: {e}") })?;
    let launch = LaunchConfig {
        token: cfg.token.clone(),
        cpus: cfg.cpus(),
        resources: cfg.resources.clone(),
        store_bytes: cfg.object_store_bytes,
        spill_dir: cfg.spill_dir.clone(),
        prestart: cfg.prestart_workers,
        max_workers: cfg.max_workers,
        idle_timeout: cfg.idle_worker_timeout,
        max_frame: cfg.max_frame_bytes,
        worker_env: cfg.to_worker_env(),
    };
    let node =
        ferry_node::launch::start_embedded(&launch, exe).map_err(|e| Error::Connection { detail: e.to_string() })?;
    Ok(Embedded {
        addr: node.addr(),
        token: node.token().to_string(),
        store_dir: node.store_dir().to_path_buf(),
        session_dir: node.session_dir().to_path_buf(),
        spill_dir: node.spill_dir().map(|p| p.to_path_buf()),
        node: Box::new(Handle(node)),
    })
}

/// Makes sure the runtime can start an embedded node (idempotent, and cheap).
#[inline(never)]
pub(crate) fn ready() {
    set_embedder(embed);
}
