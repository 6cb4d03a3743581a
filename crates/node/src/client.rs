//! A typed client of a node's wire protocol, for tools (`ferry status`, `stop`, `submit`):
//! it connects as a tool (through the node's Unix socket when the node is this user's on this
//! host), asks, and waits a bounded time for each answer, ignoring what else the node sends.

use ferry_os::local;
use ferry_proto::conn::{connect, ConnectError};
/// A job as the head keeps it (`Client::jobs`).
pub use ferry_proto::msg::JobView;
/// A node as it reports itself, and as its cluster sees it; its actors, processes and
/// objects as it lists them.
pub use ferry_proto::msg::{ActorId, ActorView, NodeStats, NodeView, ProcKind, ProcView, RefInfo, StoredInfo};
use ferry_proto::msg::{FromNode, ToNode};
/// The task history's types (`ferry list tasks`).
pub use ferry_proto::state::{
    HistoryStats, Latency, TaskFilter, TaskRecord, TaskState, TaskSummaryRow, LATENCY_BOUNDS_US,
};
use ferry_proto::{Addr, Conn, FrameError, FrameReader, Stream, WorkerId};
pub use ferry_proto::{NodeId, TaskId, WorkerId as JobId};
pub use ferry_proto::{Shape, MEMORY};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a tool waits for an answer before it reports the node as not answering.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// An actor as tools show it in JSON (`ferry list actors --format json`, the dashboard): ids
/// as hex strings (a u64 does not fit a JavaScript number).
pub fn actor_json(a: &ActorView) -> serde_json::Value {
    serde_json::json!({
        "actor": format!("{:016x}", a.actor.0),
        "class": a.class,
        "state": a.state,
        "name": a.name,
        "namespace": a.namespace,
        "job": a.job.to_string(),
        "detached": a.detached,
        "home": a.home.to_string(),
        "node": a.node.map(|n| n.to_string()),
        "worker": a.worker.map(|w| w.to_string()),
        "restarts": a.restarts,
        "restarts_left": a.restarts_left,
        "death": a.death,
    })
}

/// A node of the cluster and a client of it (or why none could be made).
pub type EachNode = (NodeView, Result<Client, ClientError>);

/// What [`Client::memory`] returns for one node.
#[derive(Debug, Clone)]
pub struct NodeMemory {
    /// Every process's table entries (an object's owner's says where it is and how big).
    pub refs: Vec<RefInfo>,
    pub pending_tasks: u64,
    /// The node's store.
    pub stored: Vec<StoredInfo>,
    /// Processes that did not answer.
    pub unreachable: Vec<WorkerId>,
}

/// Why a tool's request to a node failed; each names the node and what went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address, the token or this user's local files (the message says which and why).
    #[error("{0}")]
    Local(String),
    #[error("cannot reach the node at {addr}: {source}")]
    Unreachable { addr: String, source: ConnectError },
    #[error("the node at {addr} closed the connection: {source}")]
    Closed { addr: String, source: FrameError },
    #[error("the node at {addr} did not answer within {within:?}: is it overloaded, or stopping?")]
    NoAnswer { addr: String, within: Duration },
    #[error("the node at {addr} refused: {reason}")]
    Refused { addr: String, reason: String },
    #[error("cannot read {}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("lost the node at {addr} while job {job} ({name}) ran: {source}")]
    LostJob { addr: String, job: u64, name: String, source: FrameError },
    #[error("the node at {addr} did not stop within {within:?}")]
    DidNotStop { addr: String, within: Duration },
}

type Reader = FrameReader<Stream>;

/// A tool's connection to one node.
pub struct Client {
    conn: Conn,
    rx: Reader,
    addr: String,
    next_req: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// What a submitted job does, as [`Client::run_job`] reports it.
#[derive(Debug)]
pub enum JobEvent<'a> {
    /// It waits for its turn (the head runs as many jobs as it allows), `ahead` before it.
    Queued {
        job: u64,
        ahead: u32,
    },
    Started {
        job: u64,
        pid: u32,
    },
    Output {
        stderr: bool,
        data: &'a [u8],
    },
    /// Nothing came for this long.
    Quiet {
        job: u64,
        running_for: Duration,
    },
}

/// How a submitted job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub job: u64,
    /// `None` if a signal ended it.
    pub code: Option<i32>,
    pub detail: String,
}

impl Client {
    /// Connects to the node at `address` (`HOST:PORT`) with `token`, as a tool.
    pub fn connect(address: &str, token: &str) -> Result<Client, ClientError> {
        // A node of this user on this host is reached through its Unix socket.
        let to = match local::local_socket(address).map_err(ClientError::Local)? {
            Some(sock) => Addr::Unix(sock),
            None => Addr::Tcp(address.to_string()),
        };
        Self::connect_to(to, address, token)
    }

    /// Connects over TCP whatever this host's links say: for an address a node named (its
    /// control store's), where a link left by an earlier process on the same port must not
    /// stand in the way. The handshake proves the token without sending it.
    pub fn connect_tcp(address: &str, token: &str) -> Result<Client, ClientError> {
        Self::connect_to(Addr::Tcp(address.to_string()), address, token)
    }

    fn connect_to(to: Addr, address: &str, token: &str) -> Result<Client, ClientError> {
        let me = WorkerId(ferry_types::random_u64());
        let addr = address.to_string();
        let (conn, rx, _) = connect(&to, token, me, ferry_proto::DEFAULT_MAX_FRAME)
            .map_err(|source| ClientError::Unreachable { addr: addr.clone(), source })?;
        let mut c = Client { conn, rx, addr, next_req: 1 };
        c.send(&ToNode::register_tool(ProcKind::Tool))?;
        // A tool never waits for long: a node that does not answer is reported.
        c.rx.get_ref()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| ClientError::Local(format!("cannot set a timeout: {e}")))?;
        c.answer(ANSWER_WITHIN, |m| matches!(m, FromNode::Registered { .. }).then_some(()))?;
        Ok(c)
    }

    /// Connects after checking, with a plain TCP connection, that something listens there
    /// (a clear "nothing listens" before any token is looked for): what `ferry` does.
    pub fn probe_and_connect(
        address: &str,
        token: impl FnOnce() -> Result<String, String>,
    ) -> Result<Client, ClientError> {
        if local::local_socket(address).map_err(ClientError::Local)?.is_none() {
            local::probe(address).map_err(ClientError::Local)?;
        }
        Client::connect(address, &token().map_err(ClientError::Local)?)
    }

    /// The node's address, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    fn send(&self, m: &ToNode) -> Result<(), ClientError> {
        self.conn.send(m).map_err(|e| ClientError::Closed { addr: self.addr.clone(), source: FrameError::Io(e) })
    }

    /// Waits for the answer `want` picks out, ignoring other messages.
    fn answer<T>(&mut self, within: Duration, mut want: impl FnMut(FromNode) -> Option<T>) -> Result<T, ClientError> {
        let end = Instant::now() + within;
        loop {
            match self.rx.read::<FromNode>() {
                Ok(m) => {
                    if let Some(v) = want(m) {
                        return Ok(v);
                    }
                }
                Err(e) if timed_out(&e) && Instant::now() < end => {}
                Err(e) if timed_out(&e) => return Err(ClientError::NoAnswer { addr: self.addr.clone(), within }),
                Err(source) => return Err(ClientError::Closed { addr: self.addr.clone(), source }),
            }
        }
    }

    /// The node's resources, workers, store and transfers.
    pub fn stats(&mut self) -> Result<NodeStats, ClientError> {
        let req = self.req();
        self.send(&ToNode::Stats { req })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Stats { req: r, stats } if r == req => Some(stats),
            _ => None,
        })
    }

    /// The nodes of its cluster as this node sees them (the view its scheduling uses, a
    /// heartbeat behind the control store's); `None` if it is in no cluster.
    pub fn cluster(&mut self) -> Result<Option<Vec<NodeView>>, ClientError> {
        let req = self.req();
        self.send(&ToNode::ClusterStatus { req })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Cluster { req: r, nodes } if r == req => Some(Some(nodes)),
            FromNode::Ack { req: r, error: Some(_) } if r == req => Some(None),
            _ => None,
        })
    }

    /// The address of its cluster's control store, if it is in one.
    pub fn control_address(&mut self) -> Result<Option<String>, ClientError> {
        let req = self.req();
        self.send(&ToNode::ControlAddress { req })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::ControlAt { req: r, addr } if r == req => Some(addr),
            _ => None,
        })
    }

    /// The nodes of its cluster as the control store knows them (this node's own view while
    /// the control store is restarting); `None` if it is in no cluster.
    pub fn control_view(&mut self, token: &str) -> Result<Option<Vec<NodeView>>, ClientError> {
        if let Some(addr) = self.control_address()? {
            if let Ok(Some(nodes)) = Client::connect(&addr, token).and_then(|mut c| c.cluster()) {
                return Ok(Some(nodes));
            }
        }
        self.cluster()
    }

    /// The jobs `ferry submit` ran on it.
    pub fn jobs(&mut self) -> Result<Vec<JobView>, ClientError> {
        let req = self.req();
        self.send(&ToNode::Jobs { req })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Jobs { req: r, jobs } if r == req => Some(jobs),
            _ => None,
        })
    }

    /// The cluster's placement groups, from their home: the control store (this node when it
    /// is in no cluster).
    pub fn groups(&mut self, token: &str) -> Result<Vec<ferry_proto::msg::GroupView>, ClientError> {
        if let Some(addr) = self.control_address()? {
            return Client::connect(&addr, token)?.groups_here();
        }
        self.groups_here()
    }

    fn groups_here(&mut self) -> Result<Vec<ferry_proto::msg::GroupView>, ClientError> {
        let req = self.req();
        self.send(&ToNode::ListGroups { req, group: None })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Groups { req: r, groups } if r == req => Some(groups),
            _ => None,
        })
    }

    /// Whether the node keeps a binary of this content hash.
    pub fn has_binary(&mut self, hash: &str) -> Result<bool, ClientError> {
        let req = self.req();
        self.send(&ToNode::HaveBinary { req, hash: hash.to_string() })?;
        self.answer(Duration::from_secs(30), |m| match m {
            FromNode::Ack { req: r, error } if r == req => Some(error.is_none()),
            _ => None,
        })
    }

    /// Uploads the binary `path` (of `size` bytes and content hash `hash`).
    pub fn put_binary(&mut self, path: &Path, hash: &str, size: u64) -> Result<(), ClientError> {
        let file =
            std::fs::File::open(path).map_err(|source| ClientError::File { path: path.to_path_buf(), source })?;
        let req = self.req();
        self.send(&ToNode::PutBinary { req, hash: hash.to_string(), size })?;
        self.conn
            .send_file(&file, size)
            .map_err(|e| ClientError::Closed { addr: self.addr.clone(), source: FrameError::Io(e) })?;
        let refused = self.answer(Duration::from_secs(120), |m| match m {
            FromNode::Ack { req: r, error } if r == req => Some(error),
            _ => None,
        })?;
        match refused {
            None => Ok(()),
            Some(reason) => Err(ClientError::Refused { addr: self.addr.clone(), reason }),
        }
    }

    /// Runs the binary of content hash `hash` (which the node has) as a job named `name`,
    /// reporting what it does to `on` until it ends; a job quiet for 30 s is reported as such.
    pub fn run_job(
        &mut self,
        hash: &str,
        name: &str,
        args: &[String],
        weight: Option<u32>,
        mut on: impl FnMut(JobEvent<'_>),
    ) -> Result<JobEnd, ClientError> {
        let req = self.req();
        let (hash, name, args) = (hash.to_string(), name.to_string(), args.to_vec());
        self.send(&ToNode::SubmitJob { req, hash, name: name.clone(), args, weight })?;
        let started = Instant::now();
        let mut last_heard = Instant::now();
        let mut job = 0;
        loop {
            match self.rx.read::<FromNode>() {
                Ok(FromNode::JobStarted { job: j, pid, .. }) => {
                    job = j;
                    on(JobEvent::Started { job, pid });
                }
                Ok(FromNode::JobQueued { job: j, ahead, .. }) => {
                    job = j;
                    on(JobEvent::Queued { job, ahead });
                }
                Ok(FromNode::JobOutput { stderr, data, .. }) => {
                    last_heard = Instant::now();
                    on(JobEvent::Output { stderr, data: &data });
                }
                Ok(FromNode::JobEnded { code, detail, .. }) => return Ok(JobEnd { job, code, detail }),
                Ok(FromNode::Ack { req: r, error: Some(reason) }) if r == req => {
                    return Err(ClientError::Refused { addr: self.addr.clone(), reason })
                }
                Ok(_) => {}
                Err(e) if timed_out(&e) => {
                    if last_heard.elapsed() >= Duration::from_secs(30) {
                        on(JobEvent::Quiet { job, running_for: started.elapsed() });
                        last_heard = Instant::now();
                    }
                }
                Err(source) => {
                    return Err(ClientError::LostJob { addr: self.addr.clone(), job, name: name.to_string(), source })
                }
            }
        }
    }

    /// Starts the binary of content hash `hash` as a job named `name` and returns once it
    /// runs (its id and pid), leaving it running: what it prints goes to its log only.
    pub fn start_job(
        &mut self,
        hash: &str,
        name: &str,
        args: &[String],
        weight: Option<u32>,
    ) -> Result<(u64, u32), ClientError> {
        let req = self.req();
        let (hash, name, args) = (hash.to_string(), name.to_string(), args.to_vec());
        self.send(&ToNode::SubmitJob { req, hash, name, args, weight })?;
        self.answer(Duration::from_secs(30), |m| match m {
            FromNode::JobStarted { req: r, job, pid } if r == req => Some(Ok((job, pid))),
            // Waiting for its turn: pid 0 until it starts.
            FromNode::JobQueued { req: r, job, .. } if r == req => Some(Ok((job, 0))),
            // It could not start (no such binary, or spawning failed).
            FromNode::JobEnded { job: 0, detail, .. } => Some(Err(detail)),
            _ => None,
        })?
        .map_err(|reason| ClientError::Refused { addr: self.addr.clone(), reason })
    }

    /// Stops job `job` (`ferry job stop`): its process group gets SIGTERM, then SIGKILL.
    pub fn stop_job(&mut self, job: u64) -> Result<(), ClientError> {
        let req = self.req();
        self.send(&ToNode::StopJob { req, job })?;
        let refused = self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Ack { req: r, error } if r == req => Some(error),
            _ => None,
        })?;
        match refused {
            None => Ok(()),
            Some(reason) => Err(ClientError::Refused { addr: self.addr.clone(), reason }),
        }
    }

    /// Job `job`'s log from byte `offset`: the bytes, the offset after them, and whether
    /// the job has ended (so that nothing more will come).
    pub fn job_log(&mut self, job: u64, offset: u64) -> Result<(Vec<u8>, u64, bool), ClientError> {
        let req = self.req();
        self.send(&ToNode::JobLogs { req, job, offset })?;
        let got = self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::JobLog { req: r, data, next, ended, error } if r == req => Some((data, next, ended, error)),
            _ => None,
        })?;
        match got {
            (_, _, _, Some(reason)) => Err(ClientError::Refused { addr: self.addr.clone(), reason }),
            (data, next, ended, None) => Ok((data, next, ended)),
        }
    }

    /// The tasks of the history this node keeps that match (`None`: it keeps none, its
    /// control store does).
    pub fn list_tasks(
        &mut self,
        filter: &ferry_proto::state::TaskFilter,
        limit: u32,
    ) -> Result<Option<(Vec<ferry_proto::state::TaskRecord>, u64, ferry_proto::state::HistoryStats)>, ClientError> {
        let req = self.req();
        self.send(&ToNode::ListTasks { req, filter: filter.clone(), limit })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Tasks { req: r, tasks, matched, stats } if r == req => Some(stats.map(|s| (tasks, matched, s))),
            _ => None,
        })
    }

    /// Tasks by function and state, from the history this node keeps (`None`: it keeps none).
    #[allow(clippy::type_complexity)]
    pub fn summarize_tasks(
        &mut self,
        job: Option<WorkerId>,
    ) -> Result<Option<(Vec<ferry_proto::state::TaskSummaryRow>, ferry_proto::state::HistoryStats)>, ClientError> {
        let req = self.req();
        self.send(&ToNode::SummarizeTasks { req, job })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::TaskSummary { req: r, rows, stats } if r == req => Some(stats.map(|s| (rows, s))),
            _ => None,
        })
    }

    /// The nodes of this node's cluster that run work (dead ones too), as its control store
    /// sees them; this node alone, as it reports itself, when it is in no cluster.
    pub fn nodes(&mut self, token: &str) -> Result<Vec<NodeView>, ClientError> {
        let nodes: Vec<NodeView> = match self.control_view(token)? {
            Some(n) => n.into_iter().filter(|n| !n.head).collect(),
            None => Vec::new(),
        };
        if !nodes.is_empty() {
            return Ok(nodes);
        }
        let s = self.stats()?;
        Ok(vec![NodeView {
            node: s.node.unwrap_or(NodeId(0)),
            addr: self.addr.clone(),
            head: false,
            alive: true,
            total: s.total,
            available: s.available,
            queued: s.pending_lease_requests,
            workers: s.workers,
            silent_ms: 0,
            actors: s.actors,
            objects: s.store_objects,
            object_bytes: s.store_used_bytes,
            spilled_bytes: s.spilled_bytes,
        }])
    }

    /// The actors whose records this node keeps, dead ones included.
    pub fn list_actors(&mut self) -> Result<Vec<ActorView>, ClientError> {
        let req = self.req();
        self.send(&ToNode::ListActors { req })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Actors { req: r, actors } if r == req => Some(actors),
            _ => None,
        })
    }

    /// `job`'s get, put and transfer spans, from the history this node keeps (`None`: it
    /// keeps none).
    pub fn list_spans(&mut self, job: WorkerId) -> Result<Option<Vec<ferry_proto::state::Span>>, ClientError> {
        let req = self.req();
        self.send(&ToNode::ListSpans { req, job })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Spans { req: r, spans } if r == req => Some(spans),
            _ => None,
        })
    }

    /// The workers' logs this node keeps: each worker, its bytes, and whether it still runs.
    pub fn worker_logs(&mut self) -> Result<Vec<(WorkerId, u64, bool)>, ClientError> {
        let req = self.req();
        self.send(&ToNode::ListWorkerLogs { req })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::WorkerLogs { req: r, logs } if r == req => Some(logs),
            _ => None,
        })
    }

    /// A chunk of `worker`'s log from `offset`: its bytes, the next offset, and whether the
    /// worker is gone (nothing more will come).
    pub fn read_worker_log(&mut self, worker: WorkerId, offset: u64) -> Result<(Vec<u8>, u64, bool), ClientError> {
        let req = self.req();
        self.send(&ToNode::ReadWorkerLog { req, worker, offset })?;
        match self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::WorkerLog { req: r, data, next, ended, error } if r == req => Some((data, next, ended, error)),
            _ => None,
        })? {
            (_, _, _, Some(e)) => Err(ClientError::Refused { addr: self.addr.clone(), reason: e }),
            (data, next, ended, None) => Ok((data, next, ended)),
        }
    }

    /// The processes connected to this node.
    pub fn list_procs(&mut self) -> Result<Vec<ProcView>, ClientError> {
        let req = self.req();
        self.send(&ToNode::ListProcs { req })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Procs { req: r, procs } if r == req => Some(procs),
            _ => None,
        })
    }

    /// The objects in this node's store (in memory or spilled).
    pub fn stored_objects(&mut self) -> Result<Vec<StoredInfo>, ClientError> {
        let req = self.req();
        self.send(&ToNode::Inventory { req })?;
        self.answer(ANSWER_WITHIN, |m| match m {
            FromNode::Inventory { req: r, objects, .. } if r == req => Some(objects),
            _ => None,
        })
    }

    /// Every object in the tables of this node's processes and in its store, and why each
    /// is alive (the node asks each process; one that does not answer is listed).
    pub fn memory(&mut self) -> Result<NodeMemory, ClientError> {
        let req = self.req();
        self.send(&ToNode::Memory { req })?;
        self.answer(ANSWER_WITHIN * 3, |m| match m {
            FromNode::Memory { req: r, refs, pending_tasks, stored, unreachable } if r == req => {
                Some(NodeMemory { refs, pending_tasks, stored, unreachable })
            }
            _ => None,
        })
    }

    /// A client of every node of this node's cluster that is alive (this node itself when it
    /// is in none), with how the cluster sees it.
    pub fn each_node(mut self, token: &str) -> Result<Vec<EachNode>, ClientError> {
        let nodes: Vec<NodeView> = self.nodes(token)?.into_iter().filter(|n| n.alive).collect();
        let mine = self.addr.clone();
        let mut me = Some(self);
        Ok(nodes
            .into_iter()
            .map(|n| {
                let c = match me.take_if(|_| n.addr == mine) {
                    Some(c) => Ok(c),
                    None => Client::connect(&n.addr, token).or_else(|_| Client::connect_tcp(&n.addr, token)),
                };
                (n, c)
            })
            .collect())
    }

    /// The client of whatever keeps this node's task history: the node itself (outside a
    /// cluster), or its cluster's control store.
    pub fn into_history(mut self, token: &str) -> Result<Client, ClientError> {
        if self.list_tasks(&ferry_proto::state::TaskFilter::default(), 0)?.is_some() {
            return Ok(self);
        }
        let control = self.control_address()?.ok_or_else(|| {
            ClientError::Local(format!("the node at {} keeps no task history and names no control store", self.addr))
        })?;
        Client::connect(&control, token).or_else(|_| Client::connect_tcp(&control, token))
    }

    /// Asks the node to stop and waits (at most `within`) until it has: it closes every
    /// connection as it stops, this one included.
    pub fn stop_node(mut self, within: Duration) -> Result<(), ClientError> {
        self.send(&ToNode::StopNode)?;
        let end = Instant::now() + within;
        while Instant::now() < end {
            match self.rx.read::<FromNode>() {
                Ok(_) => continue,
                Err(e) if timed_out(&e) => continue,
                Err(_) => return Ok(()),
            }
        }
        Err(ClientError::DidNotStop { addr: self.addr, within })
    }
}

fn timed_out(e: &FrameError) -> bool {
    matches!(e, FrameError::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// What [`stop_cluster`] stopped, and what it could not.
#[derive(Debug, Default)]
pub struct Stopped {
    pub stopped: Vec<String>,
    pub failed: Vec<ClientError>,
}

/// Stops the cluster of the node `client` is connected to: the other nodes first (at once,
/// each waited for at most `within`; the control store goes with the head), then that node;
/// with `node_only`, that node alone.
pub fn stop_cluster(mut client: Client, token: &str, node_only: bool, within: Duration) -> Stopped {
    let mut out = Stopped::default();
    if !node_only {
        let nodes = match client.control_view(token) {
            Ok(n) => n.unwrap_or_default(),
            Err(e) => {
                out.failed.push(e);
                return out;
            }
        };
        let me = client.addr().to_string();
        let others = nodes.into_iter().filter(|n| !n.head && n.alive && n.addr != me).map(|n| n.addr);
        let stops: Vec<_> = others
            .map(|a| {
                let token = token.to_string();
                std::thread::spawn(move || {
                    let r = Client::connect(&a, &token).and_then(|c| c.stop_node(within));
                    (a, r)
                })
            })
            .collect();
        for s in stops {
            match s.join() {
                Ok((a, Ok(()))) => out.stopped.push(a),
                Ok((_, Err(e))) => out.failed.push(e),
                Err(_) => out.failed.push(ClientError::Local("a stop thread panicked".into())),
            }
        }
    }
    let me = client.addr().to_string();
    match client.stop_node(within) {
        Ok(()) => out.stopped.push(me),
        Err(e) => out.failed.push(e),
    }
    out
}
