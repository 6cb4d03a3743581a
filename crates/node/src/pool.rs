//! The worker pool and its leases: carrying out the scheduler's decisions, lease requests
//! (granted here, queued, or sent to another node), moving waiting requests to nodes with
//! room, and the spawner thread that starts, kills and reaps worker processes.

use super::*;
use ferry_types::sync::MutexExt;

impl Node {
    /// A node started on its own runs the first job's binary (from the first driver or
    /// client that registers, or the first actor another node asks it to host).
    /// `exe`'s path is already this node's copy (see `serve_conn`).
    pub(crate) fn set_program(&self, st: &mut State, exe: Program) {
        match self.program() {
            Some(p) if p == exe.path || self.opts.worker_program.is_some() => return,
            Some(old) => {
                // A job with another binary: workers of the old one must not run its tasks.
                // Idle ones stop now, leased ones when their lease comes back.
                tracing::warn!(
                    "a job with another binary joined ({}; was {}): its workers replace the old ones",
                    exe.path.display(),
                    old.display()
                );
                st.pool.retired = st.pool.workers.keys().chain(st.pool.expected.iter()).copied().collect();
                *self.program.locked() = Some(exe.path);
                *self.program_hash.locked() = exe.hash;
                let actions = st.pool.sched.retire_idle(Instant::now());
                self.apply(st, actions);
                return;
            }
            None => {}
        }
        *self.program.locked() = Some(exe.path);
        *self.program_hash.locked() = exe.hash;
        let actions = std::mem::take(&mut *self.deferred.locked());
        self.apply(st, actions);
    }

    /// Carries out the scheduler's decisions.
    pub(crate) fn apply(&self, st: &mut State, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Grant { conn: ACTOR_CONN, req, worker, .. } => {
                    st.placing.movable.remove(&(ACTOR_CONN, req));
                    self.on_actor_grant(st, req, worker)
                }
                Action::Grant { conn, req, lease, worker } => {
                    st.placing.movable.remove(&(conn, req));
                    let addr = st.pool.workers.get(&worker).map(|(_, a, tcp)| self.addr_for(st, conn, a, tcp));
                    match addr {
                        Some(addr) => self.send(st, conn, &FromNode::LeaseGranted { req, lease, worker, addr }),
                        None => {
                            // Cannot happen: the scheduler only grants registered workers.
                            tracing::warn!("granted unknown worker {worker:?}");
                        }
                    }
                }
                Action::Infeasible { conn: ACTOR_CONN, req, reason } => self.actor_infeasible(st, req, reason),
                Action::Infeasible { conn, req, reason } => {
                    st.placing.movable.remove(&(conn, req));
                    self.send(st, conn, &FromNode::LeaseInfeasible { req, reason })
                }
                Action::StartWorker => self.spawn_cmd(SpawnCmd::Start),
                Action::KillWorker { worker } => self.spawn_cmd(SpawnCmd::Kill(worker)),
                Action::Retire { worker } => match st.pool.workers.get(&worker) {
                    Some((conn, _, _)) => self.send(st, *conn, &FromNode::RetireIfIdle),
                    None => self.spawn_cmd(SpawnCmd::Kill(worker)),
                },
                Action::Suspend { worker } => self.signal_worker(worker, libc::SIGSTOP),
                Action::Resume { worker } => self.signal_worker(worker, libc::SIGCONT),
                Action::Lower { worker } => self.lower_worker(worker),
                Action::Recall { conn } => self.send(st, conn, &FromNode::RecallIdleLeases),
                Action::EndRecall { conn } => self.send(st, conn, &FromNode::EndRecall),
                Action::Reclaim { conn, lease } => self.send(st, conn, &FromNode::GiveBackLease { lease }),
                Action::Preempt { conn, worker, memory } => {
                    let detail = if memory {
                        format!("node {} was short of memory: {}", self.id, st.pool.pressure)
                    } else {
                        format!("node {} needed its resources for real-time work", self.id)
                    };
                    if conn == ACTOR_CONN {
                        // An actor's reset is its restart (if it has none left, it dies with
                        // this reason).
                        st.pool.kill_reasons.insert(worker, format!("its process was killed: {detail}"));
                        self.spawn_cmd(SpawnCmd::Kill(worker));
                    } else {
                        // Stopped now, so it frees its CPUs (and stops growing) at once;
                        // killed when its holder gives the lease back.
                        self.signal_worker(worker, libc::SIGSTOP);
                        self.send(st, conn, &FromNode::Preempted { worker, memory, detail });
                    }
                }
            }
        }
    }

    /// A lease request: granted or queued here, sent to another node (`LeaseSpillback`), or
    /// waiting for a node that can fit it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn request_lease(
        &self,
        st: &mut State,
        conn: ConnId,
        req: u64,
        shape: Shape,
        depth: u32,
        placement: Placement,
        prefer: Option<NodeId>,
        (priority, share): (ferry_types::Priority, ferry_sched::Share),
    ) {
        use ferry_sched::place::{place, Decision};
        if let Some(reason) = self.ended_group_of(st, &shape) {
            return self.send(st, conn, &FromNode::LeaseInfeasible { req, reason });
        }
        let others = members::rooms(&self.others(st));
        let me = members::room(&self.my_view(st));
        if placement == Placement::Spread {
            st.placing.rr += 1;
        }
        // xorshift: cheap draws for the power of two choices.
        st.placing.rand ^= st.placing.rand << 13;
        st.placing.rand ^= st.placing.rand >> 7;
        st.placing.rand ^= st.placing.rand << 17;
        match place(&shape, &placement, prefer, &me, &others, st.placing.rr, st.placing.rand) {
            Decision::Local => {
                if placement == Placement::Default {
                    st.placing.movable.insert((conn, req), Instant::now());
                }
                let actions = st.pool.sched.request_for(conn, req, shape, depth, priority, share);
                self.apply(st, actions);
            }
            Decision::Spill { node, addr } => self.send(st, conn, &FromNode::LeaseSpillback { req, node, addr }),
            Decision::Fail(reason) => self.send(st, conn, &FromNode::LeaseInfeasible { req, reason }),
            Decision::Wait(why) if !self.in_cluster() => {
                // One node on its own: nothing can join, so it can never run.
                let _ = why;
                let actions = st.pool.sched.request_for(conn, req, shape, depth, priority, share);
                self.apply(st, actions);
            }
            Decision::Wait(why) => {
                let first = !st.placing.infeasible.iter().any(|(c, _, s, ..)| *c == conn && *s == shape);
                // A placement group's bundle not yet in this node's view (a heartbeat behind)
                // is not worth a warning: it is there, or the group says why not.
                if first && !shape.0.iter().any(|(n, _)| n.contains("_group_")) {
                    tracing::warn!("warning: tasks needing {shape} wait: {why}");
                    let line = format!("ferry: warning: tasks needing {shape} wait: {why}");
                    self.send(st, conn, &FromNode::Log { node: self.id, stderr: true, lines: vec![line] });
                }
                st.placing.infeasible.push((conn, req, shape, depth, placement, (priority, share)));
            }
        }
    }

    /// Requests waiting here for resources another node has free go there, as a raylet spills
    /// back queued work: leases by `LeaseSpillback`, actors by `HostActor`. Every 50 ms (from
    /// the spawner's tick), for requests that waited at least [`MOVE_AFTER`], against the
    /// last view of the cluster.
    pub(crate) fn rebalance(&self, st: &mut State) {
        use ferry_sched::place::{fits, take};
        if !self.in_cluster() || st.pool.sched.num_queued() == 0 || Instant::now() < st.placing.next_rebalance {
            return;
        }
        st.placing.next_rebalance = Instant::now() + Duration::from_millis(50);
        // Only to nodes clearly underused: nothing waits there and at least half their CPUs
        // were free at their last heartbeat. When every node is busy, the CPUs a heartbeat
        // caught free are gone by the time a request gets there, and the leases moved keep
        // pulling tasks across nodes (20 busy nodes moving requests among themselves ran at
        // half the throughput of keeping them).
        let underused = |v: &ferry_proto::msg::NodeView| {
            v.queued == 0 && 2 * v.available.get_milli(CPU_NAME) >= v.total.get_milli(CPU_NAME)
        };
        let mut others: Vec<ferry_proto::msg::NodeView> =
            self.others_free(st).into_iter().filter(|v| v.alive && !v.addr.is_empty() && underused(v)).collect();
        if others.is_empty() {
            return;
        }
        let mut chosen = Vec::new();
        let (moved, actions) = st.pool.sched.take_short(|conn, req, shape| {
            // Only what has waited a while: a CPU here usually frees sooner than that.
            if st.placing.movable.get(&(conn, req)).is_none_or(|t| t.elapsed() < MOVE_AFTER) {
                return false;
            }
            let best =
                others.iter_mut().filter(|v| fits(shape, &v.available)).max_by_key(|v| v.available.get_milli(CPU_NAME));
            match best {
                Some(v) => {
                    take(&mut v.available, shape);
                    chosen.push((v.node, v.addr.clone()));
                    true
                }
                None => false,
            }
        });
        self.apply(st, actions);
        for ((conn, req, _, _), (node, addr)) in moved.into_iter().zip(chosen) {
            st.placing.movable.remove(&(conn, req));
            if conn == ACTOR_CONN {
                self.actor_moved(st, req, node, addr);
            } else {
                self.send(st, conn, &FromNode::LeaseSpillback { req, node, addr });
            }
        }
    }

    /// The cluster's view changed: requests that waited for a node that can fit them try again.
    pub(crate) fn retry_infeasible(&self, st: &mut State) {
        for actor in std::mem::take(&mut st.book.waiting) {
            if st.actors.get(&actor).is_some_and(|r| r.is_placing()) {
                self.place_actor(st, actor);
            }
        }
        if st.placing.infeasible.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut st.placing.infeasible);
        for (conn, req, shape, depth, placement, priority) in waiting {
            if st.conns.contains_key(&conn) {
                self.request_lease(st, conn, req, shape, depth, placement, None, priority);
            }
        }
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) a worker this node started: suspension
    /// of best-effort work for real-time work. A process stopped keeps its memory and
    /// sockets; what is sent to it waits in them.
    fn signal_worker(&self, worker: WorkerId, sig: i32) {
        match self.pids.locked().get(&worker) {
            // SAFETY: a plain syscall to a child this node started and has not reaped (its
            // entry goes when it is reaped).
            Some(pid) => unsafe {
                libc::kill(*pid as i32, sig);
            },
            None => tracing::warn!("no process for worker {worker} to signal"),
        }
    }

    /// Drops every thread of a worker to nice 19 (niceness is per thread on Linux; threads
    /// it makes later inherit it from their maker). For good: raising it again needs a
    /// privilege the node does not assume.
    fn lower_worker(&self, worker: WorkerId) {
        let Some(pid) = self.pids.locked().get(&worker).copied() else { return };
        let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        for tid in tids {
            // SAFETY: a plain syscall on a thread of a child of this node.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) };
        }
    }

    pub(crate) fn spawn_kill(&self, worker: WorkerId) {
        self.spawn_cmd(SpawnCmd::Kill(worker));
    }

    pub(crate) fn spawn_cmd(&self, cmd: SpawnCmd) {
        let _ = self.spawn_tx.locked().send(cmd);
    }

    /// Removes the socket a process of this node listened on (it is gone). The path is made
    /// here from its id, never taken from what a peer said.
    pub(crate) fn remove_socket(&self, process: WorkerId) {
        let _ = std::fs::remove_file(socket_of(&self.opts.session_dir, process));
    }

    /// A worker is gone: tell every owner, free its resources, keep the pool's size.
    pub(crate) fn worker_gone(&self, st: &mut State, worker: WorkerId, reason: &str) {
        let why = st.pool.kill_reasons.remove(&worker);
        let reason = why.as_deref().unwrap_or(reason);
        if st.pool.memory_victim == Some(worker) {
            st.pool.memory_victim = None;
        }
        self.remove_socket(worker);
        st.pool.expected.remove(&worker);
        st.pool.retired.remove(&worker);
        if let Some((conn, _, _)) = st.pool.workers.remove(&worker) {
            if let Some(c) = st.conns.get_mut(&conn) {
                c.worker = None;
            }
            // Only the owner holding its lease needs to know (an actor's callers hear of
            // the actor instead); telling every process would cost n² messages when many
            // workers go at once.
            if let Some(holder) = st.pool.sched.lease_holder(worker).filter(|h| *h != ACTOR_CONN) {
                self.send(st, holder, &FromNode::WorkerDied { worker, reason: reason.to_string() });
            }
        }
        let actions = st.pool.sched.worker_died(worker);
        self.apply(st, actions);
        self.actor_worker_gone(st, worker, reason);
    }

    /// Leases on this node's workers, and what their holders say of them. Routed here by `handle`.
    pub(crate) fn on_pool(&self, st: &mut State, conn: ConnId, msg: ToNode) {
        match msg {
            ToNode::RequestLease { req, shape, depth, placement, prefer, priority, job, weight } => {
                let share = ferry_sched::Share { job: job.0, weight };
                self.request_lease(st, conn, req, shape, depth, placement, prefer, (priority, share))
            }
            ToNode::ReturnLease { lease, kill } => {
                let retired = st.pool.sched.lease_worker(lease).is_some_and(|w| st.pool.retired.contains(&w));
                let actions = st.pool.sched.return_lease(conn, lease, kill || retired, Instant::now());
                self.apply(st, actions);
            }
            ToNode::Blocked => {
                if let Some(w) = st.conns.get(&conn).and_then(|c| c.worker) {
                    let actions = st.pool.sched.blocked(w);
                    self.apply(st, actions);
                }
            }
            ToNode::Unblocked => {
                if let Some(w) = st.conns.get(&conn).and_then(|c| c.worker) {
                    st.pool.sched.unblocked(w);
                }
            }
            ToNode::StillInUse => {
                if let Some(w) = st.conns.get(&conn).and_then(|c| c.worker) {
                    let actions = st.pool.sched.keep(w, Instant::now());
                    self.apply(st, actions);
                }
            }
            // Routed elsewhere by `handle`.
            _ => {}
        }
    }
}

pub(crate) fn spawner(node: Arc<Node>, rx: mpsc::Receiver<SpawnCmd>) {
    let mut children: HashMap<WorkerId, Child> = HashMap::new();
    // Killed workers are reaped on the next tick; all children are checked once a second
    // (for one that died on its own before registering), not every tick: a node may have a
    // thousand actor processes.
    let mut dying: Vec<WorkerId> = Vec::new();
    let mut last_scan = Instant::now();
    let mut last_memory = Instant::now();
    let cgroup = crate::pressure::cgroup_dir();
    loop {
        // Take every command waiting, then reap once.
        let mut cmds = vec![rx.recv_timeout(Duration::from_millis(50))];
        while let Ok(c) = rx.try_recv() {
            cmds.push(Ok(c));
        }
        for cmd in cmds {
            match cmd {
                Ok(SpawnCmd::Start) => match spawn_worker(&node) {
                    Ok((w, child)) => {
                        node.pids.locked().insert(w, child.id());
                        children.insert(w, child);
                    }
                    Err(e) => {
                        let program = node.program().map(|p| p.display().to_string()).unwrap_or_default();
                        tracing::error!("cannot start a worker ({program}): {e}");
                        let mut st = node.lock();
                        let actions = st.pool.sched.worker_start_failed();
                        node.apply(&mut st, actions);
                    }
                },
                Ok(SpawnCmd::Kill(w)) => {
                    if let Some(c) = children.get_mut(&w) {
                        let _ = c.kill();
                        dying.push(w);
                    }
                }
                Ok(SpawnCmd::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    for c in children.values_mut() {
                        let _ = c.kill();
                    }
                    for (_, mut c) in children.drain() {
                        let _ = c.wait();
                    }
                    node.pids.locked().clear();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        // Reap exited workers and tick the pool's clock.
        let scan_all = last_scan.elapsed() >= Duration::from_secs(1);
        if scan_all {
            last_scan = Instant::now();
        }
        let candidates: Vec<WorkerId> = if scan_all { children.keys().copied().collect() } else { dying.clone() };
        let mut exited: Vec<(WorkerId, String)> = Vec::new();
        for w in candidates {
            if let Some(c) = children.get_mut(&w) {
                if let Ok(Some(status)) = c.try_wait() {
                    exited.push((w, format!("worker process exited ({status})")));
                }
            }
        }
        dying.retain(|w| children.contains_key(w) && !exited.iter().any(|(x, _)| x == w));
        let mut st = node.lock();
        for (w, reason) in exited {
            children.remove(&w);
            node.pids.locked().remove(&w);
            let was_expected = st.pool.expected.contains(&w);
            node.worker_gone(&mut st, w, &reason);
            if was_expected {
                let actions = st.pool.sched.worker_start_failed();
                node.apply(&mut st, actions);
            }
        }
        let actions = st.pool.sched.tick(Instant::now());
        node.apply(&mut st, actions);
        node.rebalance(&mut st);
        node.tick_groups(&mut st);
        node.answer_parked(&mut st);
        drop(st);
        let watch = &node.opts.memory_watch;
        if !watch.every.is_zero() && last_memory.elapsed() >= watch.every {
            last_memory = Instant::now();
            node.check_memory(cgroup.as_deref());
        }
    }
}

impl Node {
    /// Measures memory (see [`crate::pressure`]) and, past the threshold, resets one lease
    /// to free some, unless the last one reset for memory is not gone yet.
    fn check_memory(&self, cgroup: Option<&std::path::Path>) {
        use crate::pressure::{self, Usage};
        let watch = &self.opts.memory_watch;
        let pids: Vec<(WorkerId, u32)> = self.pids.locked().iter().map(|(w, p)| (*w, *p)).collect();
        let mut scopes: Vec<Usage> = pressure::host().into_iter().chain(cgroup.and_then(pressure::cgroup)).collect();
        if let Some(limit) = watch.limit {
            let used = pids.iter().filter_map(|(_, p)| pressure::private_rss(*p)).sum();
            scopes.push(Usage { used, total: limit, scope: "the node's workers'" });
        }
        let Some(worst) = scopes.into_iter().max_by(|a, b| a.fraction().total_cmp(&b.fraction())) else { return };
        if worst.fraction() < watch.threshold {
            return;
        }
        let mut st = self.lock();
        if st.pool.memory_victim.is_some() {
            return;
        }
        st.pool.pressure = format!("{worst}, over the {:.0}% threshold", watch.threshold * 100.0);
        let (victim, actions) = st.pool.sched.preempt_for_memory();
        let Some(v) = victim else { return };
        let rss = pids.iter().find(|(w, _)| *w == v).and_then(|(_, p)| pressure::private_rss(*p)).unwrap_or(0);
        st.pool.pressure.push_str(&format!("; the task's process used {} MiB", rss >> 20));
        tracing::warn!("memory pressure: resetting worker {v:?}: {}", st.pool.pressure);
        st.pool.memory_victim = Some(v);
        st.pool.memory_resets += 1;
        self.apply(&mut st, actions);
    }
}

pub(crate) fn spawn_worker(node: &Node) -> io::Result<(WorkerId, Child)> {
    use worker_env::*;
    let w = WorkerId(ferry_proto::ids::random_u64());
    node.lock().pool.expected.insert(w);
    let o = &node.opts;
    let program = node.program().ok_or_else(|| io::Error::other("no job has joined: no worker program yet"))?;
    let mut cmd = Command::new(program);
    cmd.env(WORKER, "1")
        .env(WORKER_ID, w.0.to_string())
        .env(NODE_SOCKET, o.session_dir.join("node.sock"))
        .env(TOKEN, &o.token)
        .env(STORE_DIR, &o.store_dir)
        .env(SESSION_DIR, &o.session_dir)
        .env(PARENT_PID, std::process::id().to_string())
        .env(SPILL_DIR, o.spill_dir.as_deref().unwrap_or(std::path::Path::new("")))
        .env(TCP_HOST, node.tcp_addr.map(|a| a.ip().to_string()).unwrap_or_default())
        .env(EXE_HASH, node.program_hash.locked().clone().unwrap_or_default())
        .envs(o.worker_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    match cmd.spawn() {
        Ok(c) => Ok((w, c)),
        Err(e) => {
            node.lock().pool.expected.remove(&w);
            Err(e)
        }
    }
}
