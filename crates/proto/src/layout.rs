//! What a node daemon and the processes of its session agree on beyond messages: the
//! environment a worker starts with, and the names in a session's directory.

use crate::WorkerId;
use std::path::{Path, PathBuf};

/// Where process `id` of the session in `session_dir` listens.
pub fn socket_of(session_dir: &Path, id: WorkerId) -> PathBuf {
    session_dir.join(format!("p-{id}.sock"))
}

/// Environment variables a worker process is started with.
pub mod worker_env {
    /// Set (to "1") in worker processes: the binary enters worker mode before `main`.
    pub const WORKER: &str = "FERRY_WORKER";
    pub const WORKER_ID: &str = "FERRY_WORKER_ID";
    pub const NODE_SOCKET: &str = "FERRY_NODE_SOCKET";
    pub const TOKEN: &str = "FERRY_TOKEN";
    pub const STORE_DIR: &str = "FERRY_STORE_DIR";
    pub const SESSION_DIR: &str = "FERRY_SESSION_DIR";
    /// Where the node spills objects (read back from there by any process).
    pub const SPILL_DIR: &str = "FERRY_NODE_SPILL_DIR";
    /// The daemon's process: a worker whose parent is no longer it exits at once.
    pub const PARENT_PID: &str = "FERRY_PARENT_PID";
    /// On a node with a TCP address: the host address the worker listens on too, for
    /// processes of other nodes.
    pub const TCP_HOST: &str = "FERRY_TCP_HOST";
    /// The content hash of the program (when the job was submitted with `ferry submit`).
    pub const EXE_HASH: &str = "FERRY_EXE_HASH";
}

/// The daemon's own socket in its session directory.
pub const NODE_SOCKET: &str = "node.sock";
