//! A cluster of several nodes inside one test, without root (Ray's `cluster_utils.Cluster`):
//! a control store, a head and any number of nodes, each a daemon of its own (own store,
//! resources, id and session) listening on loopback, on threads of the test process; their
//! workers are processes started from the test binary. Add nodes, remove them (their
//! workers are killed and their connections cut, as when a host dies), and connect the test
//! as a driver. For testing your own fault handling:
//!
//! ```no_run
//! use ferry::testing::{Cluster, NodeConfig};
//! # fn main() -> Result<(), ferry::Error> {
//! let mut cluster = Cluster::new(NodeConfig::cpus(1))?;
//! let worker_node = cluster.add_node(NodeConfig::cpus(2).resource("gpu", 1.0))?;
//! cluster.connect()?;
//! // ... run tasks; then:
//! cluster.remove_node(worker_node);
//! # Ok(()) }
//! ```

use ferry_core::{Error, NodeId, Result};
use ferry_node::launch::{self, LaunchConfig, NodeRole};
use ferry_node::NodeHandle;
use std::time::{Duration, Instant};

/// One node's resources.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    cpus: usize,
    resources: Vec<(String, f64)>,
}

impl NodeConfig {
    /// A node of `n` CPUs.
    pub fn cpus(n: usize) -> NodeConfig {
        NodeConfig { cpus: n.max(1), resources: Vec::new() }
    }
    /// A custom resource it has, e.g. `("gpu", 1.0)`.
    pub fn resource(mut self, name: &str, amount: f64) -> NodeConfig {
        self.resources.push((name.to_string(), amount));
        self
    }
}

/// A control store, a head and the nodes added; all stopped when it is dropped.
pub struct Cluster {
    token: String,
    heartbeat: Duration,
    control: Option<NodeHandle>,
    head: String,
    nodes: Vec<(NodeId, NodeHandle)>,
    /// This user's links to the head's Unix socket (as `ferry start` makes), by which a
    /// driver of this host reaches it.
    links: Vec<std::path::PathBuf>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("head", &self.head).field("nodes", &self.node_ids()).finish_non_exhaustive()
    }
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Connection { detail: format!("cannot start a test cluster's node: {e}") }
}

impl Cluster {
    /// A control store and a head node with `head`'s resources. A node silent for one
    /// second is declared dead (see [`Self::with_node_timeout`] for another).
    pub fn new(head: NodeConfig) -> Result<Cluster> {
        Self::with_node_timeout(head, Duration::from_secs(1))
    }

    /// [`Self::new`], declaring a silent node dead after `timeout`.
    pub fn with_node_timeout(head: NodeConfig, timeout: Duration) -> Result<Cluster> {
        let base = Self::config(&NodeConfig::default(), None);
        let role = NodeRole::Control { timeout, state_dir: None };
        let (control, token) = launch::start(&base, "127.0.0.1:0", role).map_err(failed)?;
        let control_addr = control.tcp_addr().ok_or_else(|| failed("the control store has no address"))?;
        let heartbeat = (timeout / 5).max(Duration::from_millis(10));
        let mut cluster = Cluster {
            token,
            heartbeat,
            control: Some(control),
            head: String::new(),
            nodes: Vec::new(),
            links: Vec::new(),
        };
        let role = NodeRole::Head { control: control_addr.to_string(), heartbeat, state_dir: None };
        let node = cluster.start_node(&head, role)?;
        let addr = node.tcp_addr().ok_or_else(|| failed("the head has no address"))?;
        cluster.head = addr.to_string();
        // A link left by an earlier head on this port would be taken for a dead node.
        cluster.links = ferry_os::local::local_socket_links(addr).map_err(failed)?;
        let sock = node.session_dir().join(ferry_node::NODE_SOCKET);
        for link in &cluster.links {
            let _ = std::fs::remove_file(link);
            std::os::unix::fs::symlink(&sock, link).map_err(failed)?;
        }
        cluster.nodes.push((node.id(), node));
        Ok(cluster)
    }

    fn config(node: &NodeConfig, token: Option<String>) -> LaunchConfig {
        LaunchConfig {
            token,
            cpus: node.cpus,
            resources: node.resources.clone(),
            store_bytes: Some(256 << 20),
            spill_dir: None,
            prestart: Some(0),
            max_workers: 64,
            idle_timeout: Duration::from_secs(5),
            max_frame: ferry_core::Config::default().max_frame_bytes,
            worker_env: Vec::new(),
        }
    }

    /// Starts a node in `role` and waits (bounded) until the control store lists it.
    fn start_node(&self, cfg: &NodeConfig, role: NodeRole) -> Result<NodeHandle> {
        let (node, _) =
            launch::start(&Self::config(cfg, Some(self.token.clone())), "127.0.0.1:0", role).map_err(failed)?;
        let end = Instant::now() + Duration::from_secs(10);
        while !node.joined() {
            if Instant::now() > end {
                node.shutdown();
                return Err(failed("it did not join the control store within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(node)
    }

    /// Adds a node with `cfg`'s resources; returns its id once the cluster knows it.
    pub fn add_node(&mut self, cfg: NodeConfig) -> Result<NodeId> {
        let role = NodeRole::Member { head: self.head.clone(), heartbeat: self.heartbeat };
        let node = self.start_node(&cfg, role)?;
        let id = node.id();
        self.nodes.push((id, node));
        Ok(id)
    }

    /// Removes node `id` at once, as if its host died: its workers are killed and its
    /// connections cut; the rest of the cluster declares it dead. (The head can be removed
    /// too.) False if no node of this cluster has that id.
    pub fn remove_node(&mut self, id: NodeId) -> bool {
        match self.nodes.iter().position(|(n, _)| *n == id) {
            Some(i) => {
                self.nodes.remove(i).1.shutdown();
                true
            }
            None => false,
        }
    }

    /// Joins this process to the cluster as a driver (`ferry::init` with the head's address
    /// and the cluster's token).
    pub fn connect(&self) -> Result<()> {
        crate::init(ferry_core::Config::default().address(&self.head).token(&self.token))
    }

    /// The head's address (`host:port`) and the cluster's token, for other processes.
    pub fn address(&self) -> &str {
        &self.head
    }
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The nodes running now, the head first.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|(n, _)| *n).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, node) in self.nodes.drain(..).rev() {
            node.shutdown();
        }
        if let Some(c) = self.control.take() {
            c.shutdown();
        }
        for link in &self.links {
            let _ = std::fs::remove_file(link);
        }
    }
}
