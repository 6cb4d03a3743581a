//! Connections to the daemon: accepting them (see `ferry_proto::listen`), serving each on a
//! thread of its own, registration, and the lines tasks print, passed on to drivers.

use super::*;
use ferry_types::sync::MutexExt;

impl Node {
    pub(crate) fn is_registered(&self, conn: ConnId) -> bool {
        self.lock().conns.get(&conn).is_some_and(|c| c.registered)
    }

    /// The address of a process to give to the peer on `conn`: its TCP one when the peer
    /// came over TCP (it may be on another host) and the process has one.
    pub(crate) fn addr_for(&self, st: &State, conn: ConnId, local: &Addr, tcp: &Option<String>) -> Addr {
        match (st.conns.get(&conn).is_some_and(|c| c.via_tcp), tcp) {
            (true, Some(t)) => Addr::Tcp(t.clone()),
            _ => local.clone(),
        }
    }

    /// Lines tasks printed: to this node's drivers; a member also passes its own workers'
    /// lines to the head, and the head passes members' lines to its drivers and the other
    /// members (so every driver sees every line once).
    pub(crate) fn log(&self, st: &mut State, from: ConnId, origin: Option<NodeId>, stderr: bool, lines: Vec<String>) {
        let node = origin.unwrap_or(self.id);
        let msg = FromNode::Log { node, stderr, lines: lines.clone() };
        let drivers: Vec<ConnId> =
            st.conns.iter().filter(|(_, c)| c.kind == Some(ProcKind::Driver)).map(|(k, _)| *k).collect();
        for d in drivers {
            self.send(st, d, &msg);
        }
        if origin.is_none() {
            // A worker of this node: its own log file keeps the lines too.
            if let Some(worker) = st.conns.get(&from).and_then(|c| c.worker) {
                let at_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(0);
                let _ = self.worker_logs.locked().send(crate::worker_logs::Lines {
                    worker,
                    stderr,
                    lines: lines.clone(),
                    at_us,
                });
            }
            if let Some(head) = self.head_link.locked().as_ref() {
                st.queue(head, &ToNode::Log { stderr, lines, node: Some(self.id) });
            }
        } else if self.opts.head_timeout.is_some() {
            let members: Vec<ConnId> =
                st.cluster.members.values().filter(|m| m.alive).map(|m| m.conn).filter(|c| *c != from).collect();
            for m in members {
                self.send(st, m, &msg);
            }
        }
    }

    /// Lines from another member, passed on by the head: to this node's drivers only.
    pub(crate) fn log_from_head(&self, st: &mut State, origin: NodeId, stderr: bool, lines: Vec<String>) {
        let msg = FromNode::Log { node: origin, stderr, lines };
        let drivers: Vec<ConnId> =
            st.conns.iter().filter(|(_, c)| c.kind == Some(ProcKind::Driver)).map(|(k, _)| *k).collect();
        for d in drivers {
            self.send(st, d, &msg);
        }
    }

    /// `Register`: what registers on `conn` (a worker this node started, a driver, a client
    /// from another node, a tool), answered before anything is asked of it.
    pub(crate) fn on_register(&self, st: &mut State, conn: ConnId, msg: ToNode) -> Result<(), String> {
        let ToNode::Register { kind, pid, listen, tcp, exe, node } = msg else { return Ok(()) };
        let registered = FromNode::Registered {
            node: self.id,
            worker: st.conns.get(&conn).map(|c| c.from).unwrap_or_default(),
            session_dir: self.opts.session_dir.clone(),
            store_dir: self.opts.store_dir.clone(),
            spill_dir: self.opts.spill_dir.clone(),
        };
        let Some(info) = st.conns.get_mut(&conn) else {
            return Ok(());
        };
        info.registered = true;
        info.kind = Some(kind);
        info.node = node;
        info.pid = Some(pid);
        info.listen = match (&tcp, info.via_tcp) {
            (Some(t), true) => Some(Addr::Tcp(t.clone())),
            _ => Some(listen.clone()),
        };
        let w = info.from;
        self.attach_pending_holds(st, conn, w);
        let Some(info) = st.conns.get_mut(&conn) else {
            return Ok(());
        };
        match kind {
            ProcKind::Worker => {
                if !st.pool.expected.remove(&w) {
                    return Err(format!("worker {w:?} was not started by this node"));
                }
                info.worker = Some(w);
                st.pool.workers.insert(w, (conn, listen, tcp));
                // The registration is answered before anything is asked of the worker.
                self.send(st, conn, &registered);
                if st.pool.retired.remove(&w) {
                    // Started from the previous job's binary: another takes its
                    // place (the scheduler still counts it as starting).
                    self.spawn_kill(w);
                    self.spawn_cmd(SpawnCmd::Start);
                    return Ok(());
                }
                let actions = st.pool.sched.worker_registered(w, Instant::now());
                self.apply(st, actions);
            }
            ProcKind::Node | ProcKind::Tool => self.send(st, conn, &registered),
            ProcKind::Driver | ProcKind::Client => {
                self.send(st, conn, &registered);
                if let Some(exe) = exe {
                    self.set_program(st, exe);
                }
            }
        }
        Ok(())
    }
}

/// Accepts connections until the node stops (see `ferry_proto::listen`): each gets a thread
/// that runs its handshake, then serves it.
pub(crate) fn accept_loop(node: Arc<Node>, listener: Listener, wake: WakeRx, gate: Arc<Gate>) {
    accept_loop_on(&listener, &wake, &gate, |stream, adm| {
        let n = node.clone();
        let _ = thread::Builder::new().name("ferry-node-conn".into()).spawn(move || serve_conn(n, stream, adm));
    });
}

pub(crate) fn serve_conn(node: Arc<Node>, stream: Stream, adm: Admission) {
    let via_tcp = matches!(stream, Stream::Tcp(_));
    let (source, gate) = (adm.source(), adm.gate().clone());
    let (conn, mut reader, hello, _slot) = match accept(stream, &node.opts.token, node.id, node.opts.max_frame, adm) {
        Ok(x) => x,
        // A peer that left (a port probe, a process that ended) is not worth a line.
        Err(e) if !e.worth_logging(source) => return,
        Err(e) => {
            if !node.stopping.load(Ordering::SeqCst) {
                gate.log.log(|| format!("ferry-node: refused a connection from {source}: {e}"));
            }
            return;
        }
    };
    // A peer that stops reading must not hold a writing thread for ever.
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let conn = Arc::new(conn);
    let id = {
        let mut st = node.lock();
        let id = st.next_conn;
        st.next_conn += 1;
        let info = ConnInfo {
            conn: conn.clone(),
            from: hello.from,
            worker: None,
            registered: false,
            kind: None,
            via_tcp,
            node: None,
            listen: None,
            pid: None,
        };
        st.conns.insert(id, info);
        id
    };
    let reason = loop {
        match reader.read::<ToNode>() {
            Ok(ToNode::FetchObject { object, node: to }) if node.is_registered(id) => {
                node.serve_fetch(&conn, object, to)
            }
            Ok(ToNode::Pull { req, object, from }) if node.is_registered(id) => node.pull(id, req, object, from),
            Ok(ToNode::PutBinary { req, hash, size }) if node.is_registered(id) => {
                node.put_binary(&conn, &mut reader, req, &hash, size)
            }
            Ok(ToNode::FetchBinary { hash }) if node.is_registered(id) => node.serve_binary(&conn, &hash),
            Ok(ToNode::SubmitJob { req, hash, name, args, weight }) if node.is_registered(id) => {
                node.submit_job(conn.clone(), req, (&hash, &name, weight), args)
            }
            Ok(ToNode::StopJob { req, job }) if node.is_registered(id) => node.stop_job(&conn, req, job),
            Ok(
                m @ (ToNode::TaskEvents { .. }
                | ToNode::ListTasks { .. }
                | ToNode::SummarizeTasks { .. }
                | ToNode::ListSpans { .. }),
            ) if node.is_registered(id) => node.on_history(&conn, m),
            Ok(ToNode::JobLogs { req, job, offset }) if node.is_registered(id) => {
                node.job_logs(&conn, req, job, offset)
            }
            Ok(m @ (ToNode::ListWorkerLogs { .. } | ToNode::ReadWorkerLog { .. })) if node.is_registered(id) => {
                node.on_worker_logs(&conn, m)
            }
            Ok(mut msg) => {
                // A program named by hash is fetched (from the head) before the state is
                // locked, so the daemon never waits on the network while holding it.
                if let ToNode::Register { exe: Some(p), .. } | ToNode::HostActor { exe: Some(p), .. } = &mut msg {
                    if p.hash.is_some() {
                        p.path = node.local_program(p);
                    }
                }
                if let Err(e) = node.handle(id, msg) {
                    break format!("protocol error: {e}");
                }
            }
            Err(FrameError::Closed) => break "connection closed".to_string(),
            Err(FrameError::Io(e)) => break format!("connection failed: {e}"),
            Err(e) => {
                // Malformed or oversized: this connection is done; the daemon goes on.
                tracing::warn!("closing connection from {:?}: {e}", hello.from);
                break e.to_string();
            }
        }
    };
    conn.shutdown();
    let mut st = node.lock();
    let st = &mut *st;
    let info = st.conns.remove(&id);
    // What it pinned in the store, and extents it created and never sealed, go.
    st.store.release(id as ferry_store::Holder);
    if let Some(i) =
        info.as_ref().filter(|i| matches!(i.kind, Some(ProcKind::Driver | ProcKind::Worker | ProcKind::Client)))
    {
        // A process is gone (of this node; or of another, whose link here closes when it
        // exits, gives this node up for dead, or its node is declared dead): what it owned
        // here will never be asked for again (its borrowers get `OwnerDied`), so its stored
        // objects and their copies go.
        let owned: Vec<ObjectId> = st.store.list().into_iter().map(|o| o.id).filter(|o| o.owner() == i.from).collect();
        for o in &owned {
            st.store.free(*o);
        }
        node.free_copies(st, &owned);
        // Its socket, if it listened in this node's session directory.
        node.remove_socket(i.from);
    }
    if let Some(w) = info.and_then(|i| i.worker) {
        node.worker_gone(st, w, &format!("worker's connection to its node ended ({reason})"));
        node.spawn_cmd(SpawnCmd::Kill(w));
    }
    node.actors_conn_closed(st, id);
    node.member_conn_closed(st, id);
    st.placing.movable.retain(|(c, _), _| *c != id);
    st.placing.infeasible.retain(|(c, ..)| *c != id);
    st.room.writers.retain(|(w, ..)| !matches!(w, RoomWaiter::Conn(c, _) if *c == id));
    let actions = st.pool.sched.conn_closed(id);
    node.apply(st, actions);
}
