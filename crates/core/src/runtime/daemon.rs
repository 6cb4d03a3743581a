//! The links to node daemons: this node's (registration, requests and their answers, what it
//! tells this process) and other nodes' (leases spilled to them, actors homed there, the
//! control store), and what happens when one is lost.

use super::*;
use ferry_types::sync::MutexExt;

/// How long a lease request waits before it is placed again after the node it was sent on to
/// could not be reached (that node is being declared dead, within the node timeout).
const SPILL_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

impl Runtime {
    /// Sends a request to the daemon and waits for its answer.
    pub(crate) fn node_call(&self, make: impl FnOnce(u64) -> ToNode) -> Result<FromNode> {
        self.call_at(&self.node, make)
    }

    /// Sends a request to the daemon on `conn` (this node's or another's) and waits for its
    /// answer.
    pub(crate) fn call_at(&self, conn: &Conn, make: impl FnOnce(u64) -> ToNode) -> Result<FromNode> {
        let req = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        self.node_calls.locked().insert(req, (conn as *const Conn as usize, tx));
        if let Err(e) = conn.send(&make(req)) {
            self.node_calls.locked().remove(&req);
            return Err(Error::Connection { detail: format!("node daemon: {e}") });
        }
        rx.recv_timeout(Duration::from_secs(60)).map_err(|e| {
            self.node_calls.locked().remove(&req);
            let detail = match e {
                mpsc::RecvTimeoutError::Timeout => "the node daemon did not answer within 60 s",
                mpsc::RecvTimeoutError::Disconnected => "the daemon's connection closed before it answered",
            };
            Error::Connection { detail: detail.into() }
        })
    }

    pub(crate) fn send_node(&self, m: &ToNode) {
        let _ = self.node.send(m);
    }

    pub(crate) fn node_stats(&self) -> Result<NodeStats> {
        match self.node_call(|req| ToNode::Stats { req })? {
            FromNode::Stats { stats, .. } => Ok(stats),
            other => Err(Error::Connection { detail: format!("unexpected reply to stats: {other:?}") }),
        }
    }

    /// Reads what a daemon sends: this node's (`node == self.node_id`), or another node's
    /// that this process holds leases of.
    pub(super) fn daemon_reader(&'static self, node: NodeId, mut reader: FrameReader<Stream>) {
        loop {
            let msg = match reader.read::<FromNode>() {
                Ok(m) => m,
                Err(e) if node == self.node_id => {
                    self.node_lost(e);
                    return;
                }
                Err(_) => {
                    self.daemon_lost(node);
                    return;
                }
            };
            match msg {
                FromNode::LeaseGranted { req, lease: theirs, worker, addr } => match self.worker_conn(worker, &addr) {
                    Ok(_) => {
                        let _span = tracing::debug_span!("lease", req, lease = theirs, ?node, ?worker).entered();
                        tracing::debug!("granted");
                        let now = Instant::now();
                        self.with_state(|st, fx| {
                            // Its loss may have been reported already, before the lease was
                            // known here: then nothing would ever report it again.
                            if self.connected(worker) {
                                st.on_lease_granted(req, (node, theirs), worker, now, fx)
                            } else {
                                st.on_lease_unreachable(req, (node, theirs), fx)
                            }
                        })
                    }
                    Err(e) => {
                        tracing::warn!("cannot reach leased worker {worker:?} at {addr}: {e}");
                        self.with_state(|st, fx| st.on_lease_unreachable(req, (node, theirs), fx))
                    }
                },
                FromNode::LeaseSpillback { req, node: to, addr } => self.spill_back(req, to, &addr),
                FromNode::LeaseInfeasible { req, reason } => {
                    self.with_state(|st, fx| st.on_lease_infeasible(req, reason, fx))
                }
                FromNode::Pulled { req, .. } => self.answer_call(req, msg),
                FromNode::RecallIdleLeases => self.with_state(|st, fx| st.on_recall(fx)),
                FromNode::EndRecall => self.with_state(|st, _| st.on_end_recall()),
                FromNode::RetireIfIdle if self.executor.is_some() => {
                    // A worker that owns objects or tasks in use is not idle (as in Ray): its
                    // objects would fail with `OwnerDied` under those who hold them.
                    if self.lock().owns_anything() {
                        let _ = self.node.send(&ToNode::StillInUse);
                    } else {
                        std::process::exit(0);
                    }
                }
                FromNode::RetireIfIdle | FromNode::ClusterChanges { .. } => {}
                FromNode::WorkerDied { worker, reason } => self.worker_lost(worker, &reason),
                FromNode::GiveBackLease { lease } => self.with_state(|st, fx| st.on_give_back(node, lease, fx)),
                FromNode::Preempted { worker, memory, detail } => {
                    self.with_state(|st, fx| st.on_preempted(node, worker, memory, detail, fx))
                }
                FromNode::Sealed { req, .. }
                | FromNode::Created { req, .. }
                | FromNode::Pinned { req, .. }
                | FromNode::Room { req, .. }
                | FromNode::Stats { req, .. }
                | FromNode::Ack { req, .. }
                | FromNode::NamedActor { req, .. }
                | FromNode::Groups { req, .. } => self.answer_call(req, msg),
                FromNode::ActorState { req, actor, location } => {
                    let resolving = self.lock().take_resolve(req);
                    match resolving {
                        // Connecting to its worker may take up to a handshake's timeout: not
                        // on this thread, which must keep reading (the daemon gives up on a
                        // reader that stalls, and ten thousand actors resolve at once).
                        Some(actor) => self.in_background(Box::new(move || self.actor_located(actor, location))),
                        None => self.answer_call(req, FromNode::ActorState { req, actor, location }),
                    }
                }
                FromNode::Spilled { objects } => self.with_state(|st, _| {
                    for id in objects {
                        st.drop_view(id);
                    }
                }),
                FromNode::Inventory { req, .. }
                | FromNode::Actors { req, .. }
                | FromNode::WorkerLogs { req, .. }
                | FromNode::Spans { req, .. }
                | FromNode::WorkerLog { req, .. }
                | FromNode::Procs { req, .. }
                | FromNode::Memory { req, .. }
                | FromNode::Cluster { req, .. }
                | FromNode::Tasks { req, .. }
                | FromNode::TaskSummary { req, .. }
                | FromNode::ControlAt { req, .. } => self.answer_call(req, msg),
                // Nothing runs on other nodes yet (issue 5's scheduling).
                FromNode::NodeDied { node: dead, .. } => self.node_died(dead),
                FromNode::Log { node, stderr, lines } => print_log(node != self.node_id, node, stderr, &lines),
                FromNode::ActorDied { actor, reason, restarting } => {
                    self.with_state(|st, fx| st.on_actor_died(actor, &reason, restarting, fx))
                }
                FromNode::BecomeActor { actor, spec, incarnation } => match &self.executor {
                    Some(x) => x.become_actor(actor, spec, incarnation),
                    None => tracing::warn!("a driver was asked to host an actor; ignored"),
                },
                // Creation failures also reach callers through `ActorState` (dead).
                FromNode::ActorCreated { .. }
                | FromNode::Registered { .. }
                | FromNode::ObjectData { .. }
                | FromNode::BinaryData { .. }
                | FromNode::JobStarted { .. }
                | FromNode::JobQueued { .. }
                | FromNode::JobOutput { .. }
                | FromNode::JobEnded { .. }
                | FromNode::Jobs { .. }
                | FromNode::JobLog { .. } => {}
            }
        }
    }

    pub(super) fn answer_call(&self, req: u64, msg: FromNode) {
        if let Some((_, tx)) = self.node_calls.locked().remove(&req) {
            let _ = tx.send(msg);
        }
    }

    /// A daemon sent a lease request on to node `to`: ask that node, which grants or queues it
    /// (`Placement::Here`). If it cannot be reached, this node queues it after all.
    pub(super) fn spill_back(&'static self, req: u64, to: NodeId, addr: &str) {
        match self.daemon_conn(to, addr) {
            Ok(_) => self.with_state(|st, fx| st.on_lease_spilled(req, to, fx)),
            Err(e) => {
                // Most likely dead, and not yet declared so: this node is asked again in a
                // moment, placing it as at first (elsewhere once that node is known dead;
                // here, it may not even fit).
                tracing::warn!("cannot reach node {to} at {addr} ({e}); asking this node again to place the task");
                let spawned = thread::Builder::new().name("ferry-spill-retry".into()).spawn(move || {
                    thread::sleep(SPILL_RETRY);
                    self.with_state(|st, fx| st.on_spill_unreachable(req, fx));
                });
                if spawned.is_err() {
                    self.with_state(|st, fx| st.on_spill_unreachable(req, fx));
                }
            }
        }
    }

    /// Sends `m` to node `n`'s daemon (dropped if that node is unknown or gone: then what it
    /// would have done, freeing or returning, no longer matters).
    pub(super) fn send_to_node(&'static self, n: NodeId, m: &ToNode) {
        if n == self.node_id {
            let _ = self.node.send(m);
            return;
        }
        let known = self.daemons.locked().conns.get(&n).cloned();
        let conn = match known {
            Some(c) => Some(c),
            None => {
                let addr = self.daemons.locked().about.get(&n).cloned();
                addr.and_then(|a| self.daemon_conn(n, &a).ok())
            }
        };
        if let Some(c) = conn {
            let _ = c.send(m);
        }
    }

    /// The connection to node `n`'s daemon at `addr`, opened (and registered as a client)
    /// on first use.
    pub(super) fn daemon_conn(&'static self, n: NodeId, addr: &str) -> Result<Arc<Conn>> {
        let mut daemons = self.daemons.locked();
        if let Some(c) = daemons.conns.get(&n) {
            return Ok(c.clone());
        }
        daemons.about.insert(n, addr.to_string());
        let err = |e: String| Error::Connection { detail: format!("node {n} at {addr}: {e}") };
        let (conn, mut reader, _) =
            connect(&Addr::Tcp(addr.to_string()), &self.token, self.me, self.cfg.max_frame_bytes)
                .map_err(|e| err(e.to_string()))?;
        let register = ToNode::Register {
            kind: ProcKind::Client,
            pid: std::process::id(),
            listen: Addr::Unix(peer_socket(&self.session_dir, self.me)),
            tcp: self.addrs.mine().map(|a| a.to_string()),
            exe: this_program(),
            node: Some(self.node_id),
        };
        conn.send(&register).map_err(|e| err(e.to_string()))?;
        reader.get_ref().set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| err(e.to_string()))?;
        loop {
            match reader.read::<FromNode>() {
                Ok(FromNode::Registered { .. }) => break,
                Ok(_) => continue,
                Err(e) => return Err(err(format!("registration failed: {e}"))),
            }
        }
        reader.get_ref().set_read_timeout(None).map_err(|e| err(e.to_string()))?;
        let conn = Arc::new(conn);
        daemons.conns.insert(n, conn.clone());
        drop(daemons);
        thread::Builder::new()
            .name("ferry-daemon-rx".into())
            .spawn(move || self.daemon_reader(n, reader))
            .map_err(|e| err(e.to_string()))?;
        Ok(conn)
    }

    /// The head declared node `n` dead (its heartbeats stopped: it may be frozen or cut off, its
    /// sockets still open). Its workers are lost now rather than when (if) their connections
    /// break: their tasks are retried or fail, and requests waiting there are asked again.
    pub(super) fn node_died(&'static self, n: NodeId) {
        if n == self.node_id {
            return;
        }
        let workers = self.with_state(|st, _| {
            st.node_dead(n);
            st.workers_leased_at(n)
        });
        // And every other process there this one talks to: owners it borrows from (their
        // objects fail with `OwnerDied`), actors it calls.
        let others: Vec<WorkerId> = {
            let mut peers = self.peers.locked();
            let death = self.deaths.fetch_add(1, Ordering::SeqCst) + 1;
            self.dead_nodes.locked().insert(n, death);
            let w = peers.about.iter().filter(|(_, node)| **node == n).map(|(w, _)| *w).collect();
            peers.about.retain(|_, node| *node != n);
            w
        };
        for w in workers.into_iter().chain(others) {
            self.worker_lost(w, &format!("its node {n} was declared dead (no heartbeat)"));
        }
        // Processes there that connected to this one: closing their links ends their borrows
        // (and, for a worker, the tasks of owners there) as if they had exited.
        for (_, (node, c)) in self.inbound_conns.locked().iter() {
            if *node == n {
                c.shutdown();
            }
        }
        self.daemon_lost(n);
    }

    /// Another node's daemon is gone: requests waiting there are asked of this node again
    /// (its workers, and so the leases, go with it and are reported by their connections).
    pub(super) fn daemon_lost(&'static self, n: NodeId) {
        let gone = self.daemons.locked().conns.remove(&n);
        if let Some(c) = gone {
            c.shutdown();
            // Calls waiting for its answer fail now (their senders go).
            let at = Arc::as_ptr(&c) as usize;
            self.node_calls.locked().retain(|_, (c, _)| *c != at);
        }
        // The view as last asked, never asked now: this runs on a daemon's reader thread, which
        // must not wait for an answer only it can read.
        let control = self.cluster.locked().iter().any(|v| v.head && v.node == n);
        // Requests for actors' addresses sent there will not be answered: asked again below,
        // once the control store is back (or of whatever answers for a node that is gone).
        let stalled = self.lock().forget_resolves_at(ActorId::tag_of(n));
        if self.running.load(Ordering::Acquire) {
            // The control store is gone, and is started again without knowing who held the
            // actors homed at it: this process holds its again, once it is back.
            let holds = if control { self.lock().held_actors_at(ActorId::tag_of(n)) } else { Vec::new() };
            if !holds.is_empty() || !stalled.is_empty() {
                let _ = thread::Builder::new().name("ferry-rehold".into()).spawn(move || {
                    if control {
                        // The head restarts it within moments; a head gone for good takes this
                        // node with it (after its grace), which fails every call. Bounded anyway.
                        let end = Instant::now() + Duration::from_secs(300);
                        let c = loop {
                            match self.control_conn() {
                                Ok(c) => break c,
                                Err(_) if Instant::now() < end && self.running.load(Ordering::Acquire) => {}
                                Err(e) => {
                                    let why = format!("its home, the control store, did not come back: {e}");
                                    self.with_state(|st, fx| st.home_gone(&stalled, &why, fx));
                                    return;
                                }
                            }
                        };
                        for (actor, count) in holds {
                            let _ = self.call_at(&c, |req| ToNode::HoldActorAgain { req, actor, count });
                        }
                    }
                    self.with_state(|st, fx| st.resolve_again(&stalled, fx));
                });
            }
        }
        self.with_state(|st, fx| st.on_daemon_lost(n, fx));
    }

    pub(super) fn node_lost(&'static self, e: FrameError) {
        if self.executor.is_some() {
            // A worker without its daemon has no purpose: its node is gone or stopping.
            std::process::exit(0);
        }
        if self.running.load(Ordering::Acquire) {
            tracing::error!("lost the connection to the node daemon: {e}");
            self.with_state(|st, fx| {
                st.fail_all(Error::Connection { detail: format!("lost the node daemon: {e}") }, fx)
            });
        }
    }

    /// The cluster's nodes, asked of this node's daemon (`refresh`) or as last asked.
    pub(super) fn cluster_view(&self, refresh: bool) -> Vec<ferry_proto::msg::NodeView> {
        if !refresh {
            let known = self.cluster.locked().clone();
            if !known.is_empty() {
                return known;
            }
        }
        match self.node_call(|req| ToNode::ClusterStatus { req }) {
            Ok(FromNode::Cluster { nodes, .. }) => {
                *self.cluster.locked() = nodes.clone();
                nodes
            }
            _ => Vec::new(),
        }
    }

    /// Asks every live node daemon of the cluster (not its control store, which runs no
    /// work) and collects their answers, each node's in turn: one that cannot be reached or
    /// does not answer gives its error, and the others still answer.
    pub(crate) fn ask_each_node(
        &'static self,
        make: impl Fn(u64) -> ToNode,
    ) -> Vec<(ferry_proto::msg::NodeView, Result<FromNode>)> {
        let all = self.cluster_view(true);
        let workers: Vec<_> = all.iter().filter(|n| n.alive && !n.head).cloned().collect();
        // Outside a cluster the view is this node alone.
        let nodes = if workers.is_empty() { all } else { workers };
        nodes
            .into_iter()
            .map(|n| {
                let answer = if n.node == self.node_id {
                    self.node_call(&make)
                } else {
                    self.daemon_conn(n.node, &n.addr).and_then(|c| self.call_at(&c, &make))
                };
                (n, answer)
            })
            .collect()
    }

    /// One more handle of `actor` in this process; the first one here makes the actor's home
    /// count this process as a holder. A dead or unknown actor is not held: its calls fail
    /// when they resolve it.
    pub(crate) fn hold_actor_handle(&'static self, actor: ActorId, label: &str) {
        if self.lock().actor_attach(actor, label) {
            let held = matches!(
                self.call_at(&self.actor_home(actor), |req| ToNode::HoldActor { req, actor }),
                Ok(FromNode::Ack { error: None, .. })
            );
            if held {
                self.lock().actor_set_held(actor);
            }
        }
    }

    /// The daemon keeping `actor`'s entry: its home node, whose tag the id carries (this
    /// node's daemon if that node is unknown: it answers that there is no such actor).
    pub(crate) fn actor_home(&'static self, actor: ActorId) -> Arc<Conn> {
        let tag = actor.home_tag();
        if tag == ActorId::tag_of(self.node_id) {
            return self.node.clone();
        }
        let control = self.cluster_view(false).iter().any(|v| v.head && ActorId::tag_of(v.node) == tag);
        if control {
            return self.control_conn().unwrap_or_else(|_| self.node.clone());
        }
        for refresh in [false, true] {
            let view = self.cluster_view(refresh);
            if let Some(v) = view.iter().find(|v| ActorId::tag_of(v.node) == tag && v.alive) {
                if let Ok(c) = self.daemon_conn(v.node, &v.addr) {
                    return c;
                }
            }
        }
        self.node.clone()
    }

    /// A new actor id. Named and detached actors live at the head (the cluster's directory
    /// of names); others at this node, which also places them.
    pub(crate) fn new_actor_id(&'static self, at_head: bool) -> ActorId {
        let home = match at_head {
            true => self.cluster_view(false).iter().find(|v| v.head).map(|v| v.node).unwrap_or(self.node_id),
            false => self.node_id,
        };
        ActorId::new(home, ferry_proto::ids::random_u64())
    }

    /// The control store (this node's daemon when there is no cluster, which then plays its
    /// part). While it restarts (the head starts it again within milliseconds) this waits for
    /// it, up to 10 s.
    pub(crate) fn control_conn(&'static self) -> Result<Arc<Conn>> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(v) = self.cluster_view(false).into_iter().find(|v| v.head && v.node != self.node_id) else {
                return Ok(self.node.clone());
            };
            match self.daemon_conn(v.node, &v.addr) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= end => {
                    return Err(Error::Connection {
                        detail: format!(
                            "the control store at {} did not answer for 10 s ({e}); the head node starts it \
                             again when it dies: see `ferry status` on the head",
                            v.addr
                        ),
                    })
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Connects to a resolved actor's worker (outside the owner lock) and lets its calls go.
    pub(super) fn actor_located(
        &'static self,
        actor: ferry_proto::msg::ActorId,
        location: ferry_proto::msg::ActorLocation,
    ) {
        use crate::owner::Located;
        use ferry_proto::msg::ActorLocation;
        let at = match location {
            ActorLocation::Alive { worker, addr, .. } => match self.worker_conn(worker, &addr) {
                Ok(_) => Located::At(worker),
                Err(e) => {
                    tracing::warn!("cannot reach actor {actor:?} at worker {worker:?} ({addr}): {e}");
                    Located::Unreachable(worker, format!("at {addr}: {e}"))
                }
            },
            ActorLocation::Dead { reason } => Located::Dead(reason),
        };
        self.with_state(|st, fx| {
            // Checked under the owner's lock: a loss reported before this was not the actor's
            // yet (and is not reported again); one reported after finds it.
            let at = match at {
                Located::At(w) if !self.connected(w) => {
                    Located::Unreachable(w, "its connection closed as soon as it opened".into())
                }
                at => at,
            };
            st.actor_resolved(actor, at, fx)
        });
    }
}

/// Shows lines that tasks printed, as they came (each starts with `(task pid=N)`); lines from
/// another node also name it.
fn print_log(remote: bool, node: NodeId, stderr: bool, lines: &[String]) {
    use std::io::Write;
    let mut text = String::new();
    for l in lines {
        match (remote, l.strip_prefix('(')) {
            (true, Some(rest)) => text.push_str(&format!("(node={} {rest}\n", &node.to_string()[..8])),
            _ => {
                text.push_str(l);
                text.push('\n');
            }
        }
    }
    let _ = if stderr {
        std::io::stderr().write_all(text.as_bytes())
    } else {
        std::io::stdout().write_all(text.as_bytes())
    };
}
