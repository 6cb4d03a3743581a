//! Connections between processes: to leased workers, actors and the owners of borrowed refs
//! (opened on first use, one per process), and from other processes (borrowers, owners that
//! push tasks); their reader threads, and what the loss of one means.

use super::*;
use ferry_types::sync::MutexExt;

impl Runtime {
    /// Where process `w` listens on TCP (learnt from a ref it owns), for processes of other
    /// nodes; this process's own address for itself.
    pub(crate) fn tcp_addr_of(&self, w: WorkerId) -> Option<SocketAddr> {
        self.addrs.of(w)
    }

    /// Where this process and others listen on TCP: what refs encoded here carry.
    pub(crate) fn addrs(&'static self) -> &'static Addrs {
        &self.addrs
    }

    /// The connection to another process by id: at its well-known socket if it is on this
    /// node, else at the TCP address its refs carried.
    pub(crate) fn peer_conn(&'static self, peer: WorkerId) -> Result<Arc<Conn>> {
        if let Some(c) = self.peers.locked().conns.get(&peer) {
            return Ok(c.clone());
        }
        let unix = peer_socket(&self.session_dir, peer);
        let addr = match self.tcp_addr_of(peer).filter(|_| !unix.exists()) {
            Some(a) => Addr::Tcp(a.to_string()),
            None => Addr::Unix(unix),
        };
        self.worker_conn(peer, &addr)
    }

    /// Whether this process has a connection to `worker` now (the owner's lock may be held:
    /// the order is owner state, then peers).
    pub(super) fn connected(&self, worker: WorkerId) -> bool {
        self.peers.locked().conns.contains_key(&worker)
    }

    /// The connection to `worker`, opened (with its reader thread) on first use.
    pub(super) fn worker_conn(&'static self, worker: WorkerId, addr: &Addr) -> Result<Arc<Conn>> {
        // Two threads never open two connections to one process (its replies must come back
        // on one ordered stream): the second waits for the first. Connections to different
        // processes open at once, outside the lock (a handshake may wait on a busy peer).
        let mut peers = self.peers.locked();
        loop {
            if let Some(c) = peers.conns.get(&worker) {
                return Ok(c.clone());
            }
            if peers.connecting.insert(worker) {
                break;
            }
            peers = self.peers_cv.wait_locked(peers);
        }
        drop(peers);
        // Unmarked if connecting panics too, or later callers would wait for ever.
        struct Connecting(&'static Runtime, WorkerId);
        impl Drop for Connecting {
            fn drop(&mut self) {
                self.0.peers.locked().connecting.remove(&self.1);
                self.0.peers_cv.notify_all();
            }
        }
        let marked = Connecting(self, worker);
        let deaths = self.deaths.load(Ordering::SeqCst);
        let opened = connect_from(addr, &self.token, self.me, self.node_id, self.cfg.max_frame_bytes);
        let mut peers = self.peers.locked();
        // Unmarked under the lock, with the outcome in place: a waiter wakes to find it.
        std::mem::forget(marked);
        peers.connecting.remove(&worker);
        self.peers_cv.notify_all();
        let (conn, reader, node) = opened.map_err(|e| Error::Connection { detail: e.to_string() })?;
        if self.dead_nodes.locked().get(&node).is_some_and(|d| *d > deaths) {
            // Its node was declared dead while we connected (`node_died` did not see this
            // connection): as lost as the others there.
            conn.shutdown();
            return Err(Error::Connection { detail: format!("its node {node} was declared dead") });
        }
        let conn = Arc::new(conn);
        peers.conns.insert(worker, conn.clone());
        // Its node (from its handshake): when that node is declared dead, its processes are
        // lost at once, even if their sockets stay open.
        peers.about.insert(worker, node);
        drop(peers);
        let spawned =
            thread::Builder::new().name("ferry-peer-rx".into()).spawn(move || self.worker_reader(worker, reader));
        if let Err(e) = spawned {
            // No reader: nothing sent on it would ever be answered, so it must not stay.
            let mut peers = self.peers.locked();
            peers.conns.remove(&worker);
            peers.about.remove(&worker);
            conn.shutdown();
            return Err(Error::Connection { detail: format!("cannot start a thread to read worker {worker:?}: {e}") });
        }
        Ok(conn)
    }

    pub(super) fn worker_reader(&'static self, worker: WorkerId, mut reader: FrameReader<Stream>) {
        let reason = loop {
            match reader.read::<FromWorker>() {
                Ok(FromWorker::Done { task, returns, contained, actors, ran }) => {
                    let inside = crate::owner::Inside { refs: contained, actors, ran };
                    let now = Instant::now();
                    self.with_state(|st, fx| st.on_done(task, returns, inside, now, fx))
                }
                Ok(FromWorker::Streamed { task, index, value, contained, actors }) => {
                    let inside = crate::owner::Inside { refs: contained, actors, ran: None };
                    self.with_state(|st, fx| st.on_streamed(task, index, value, inside, fx))
                }
                Ok(FromWorker::Failed { task, error }) => {
                    let now = Instant::now();
                    self.with_state(|st, fx| st.on_failed(task, error, now, fx))
                }
                Ok(FromWorker::Requeued { tasks }) => self.with_state(|st, fx| st.on_requeued(tasks, fx)),
                Ok(FromWorker::Stolen { tasks }) => self.with_state(|st, fx| st.on_stolen(worker, tasks, fx)),
                Ok(FromWorker::Retained { objects }) => {
                    self.with_state(|st, fx| st.add_borrowers(worker, &objects, fx))
                }
                Ok(FromWorker::Object { object, answer }) => {
                    self.with_state(|st, fx| st.on_object_answer(object, answer, fx))
                }
                Ok(m @ (FromWorker::Ack { .. } | FromWorker::Summary { .. })) => {
                    let req = match &m {
                        FromWorker::Ack { req } | FromWorker::Summary { req, .. } => *req,
                        _ => unreachable!("matched above"),
                    };
                    if let Some((_, tx)) = self.peer_calls.locked().remove(&req) {
                        let _ = tx.send(m);
                    }
                }
                Err(FrameError::Closed) => break "its connection closed".to_string(),
                Err(e) => {
                    tracing::warn!("closing connection to process {worker:?}: {e}");
                    break e.to_string();
                }
            }
        };
        self.worker_lost(worker, &reason);
    }

    pub(super) fn worker_lost(&'static self, worker: WorkerId, reason: &str) {
        let gone = {
            let mut peers = self.peers.locked();
            peers.about.remove(&worker);
            peers.conns.remove(&worker)
        };
        if let Some(c) = gone {
            c.shutdown();
        }
        // Its unanswered requests fail (their senders are dropped).
        self.peer_calls.locked().retain(|_, (p, _)| *p != worker);
        self.with_state(|st, fx| {
            st.on_worker_lost(worker, reason, fx);
            st.peer_lost(worker, reason, fx);
        });
    }

    /// Sends a request to another process and waits for its answer.
    pub(crate) fn peer_call(&'static self, peer: WorkerId, make: impl FnOnce(u64) -> ToWorker) -> Result<FromWorker> {
        let conn = self.peer_conn(peer)?;
        let req = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        self.peer_calls.locked().insert(req, (peer, tx));
        if let Err(e) = conn.send(&make(req)) {
            self.peer_calls.locked().remove(&req);
            return Err(Error::Connection { detail: format!("process {peer:?}: {e}") });
        }
        rx.recv_timeout(Duration::from_secs(60)).map_err(|e| {
            self.peer_calls.locked().remove(&req);
            Error::Connection { detail: format!("process {peer:?} did not answer: {e}") }
        })
    }

    /// Registers this process (or `borrower`) with the owners of `ids` as holding them,
    /// one request per owner, and waits for every answer.
    pub(crate) fn register_borrows(&'static self, ids: Vec<ObjectId>, borrower: WorkerId) {
        let mut ids = ids;
        ids.sort_unstable_by_key(|id| id.owner());
        for chunk in ids.chunk_by(|a, b| a.owner() == b.owner()) {
            let owner = chunk[0].owner();
            let objects = chunk.to_vec();
            // An owner that cannot be reached is dead: its objects fail with OwnerDied on
            // their next `get`, so there is nothing to hold.
            let _ = self.peer_call(owner, |req| ToWorker::AddBorrower { req, objects, borrower });
        }
    }

    /// After `get` decoded a value: registers the borrowed refs it held.
    pub(crate) fn register_decoded(&'static self, new: Vec<ObjectId>) {
        if new.is_empty() {
            return;
        }
        let ids = self.lock().take_unregistered(Some(&new));
        self.register_borrows(ids, self.me);
    }

    /// At the end of a task for `caller`: every borrowed ref still held here and not yet
    /// registered is registered now, before the caller's hold on it (the task's arguments)
    /// ends. Returns those owned by the caller: it counts them when it reads `Retained`.
    pub(crate) fn register_at_task_end(&'static self, caller: WorkerId) -> Vec<ObjectId> {
        let ids = {
            let mut st = self.lock();
            if !st.has_unregistered() {
                return Vec::new();
            }
            st.take_unregistered(None)
        };
        let (callers, others): (Vec<ObjectId>, Vec<ObjectId>) = ids.into_iter().partition(|id| id.owner() == caller);
        self.register_borrows(others, self.me);
        callers
    }

    /// Accepts other processes' connections (see `ferry_proto::listen`): each gets a thread
    /// that runs its handshake, then reads what it sends.
    pub(super) fn accept_loop(&'static self, listener: Listener, wake: WakeRx, gate: Arc<Gate>) {
        accept_loop_on(&listener, &wake, &gate, |stream, adm| {
            // Failpoint: an actor alive but unreachable (a partition, a stopped process).
            let hosts_actor = self.executor.as_ref().is_some_and(|x| x.hosting().is_some());
            if hosts_actor && ferry_proto::fail::break_point("actor-refuses-callers") {
                drop((stream, adm));
                return;
            }
            let _ = thread::Builder::new().name("ferry-inbound".into()).spawn(move || {
                let (source, gate) = (adm.source(), adm.gate().clone());
                match accept(stream, &self.token, self.node_id, self.cfg.max_frame_bytes, adm) {
                    Ok((conn, reader, hello, _slot)) => {
                        let conn = Arc::new(conn);
                        let mut inb = self.inbound_conns.locked();
                        inb.insert(hello.from, (hello.node, conn.clone()));
                        drop(inb);
                        self.inbound(hello.from, conn, reader)
                    }
                    Err(e) if !e.worth_logging(source) => {}
                    Err(e) => {
                        gate.log.log(|| format!("ferry: refused a connection from {source}: {e}"));
                    }
                }
            });
        });
    }

    /// Reads what another process sends us: tasks to run (workers only) and requests about
    /// objects we own.
    pub(super) fn inbound(&'static self, from: WorkerId, conn: Arc<Conn>, mut reader: FrameReader<Stream>) {
        loop {
            match reader.read::<ToWorker>() {
                Ok(
                    m @ (ToWorker::Push(_)
                    | ToWorker::Cancel { .. }
                    | ToWorker::Steal { .. }
                    | ToWorker::StreamTaken { .. }),
                ) => match &self.executor {
                    Some(x) => x.on_message(&conn, m),
                    None => {
                        tracing::warn!("process {from:?} sent tasks to a driver; closing its connection");
                        break;
                    }
                },
                Ok(ToWorker::GetObject { object }) => self.with_state(|st, fx| st.on_get_request(from, object, fx)),
                Ok(ToWorker::Remake { object, node }) => {
                    self.with_state(|st, fx| st.on_remake_request(from, object, node, fx))
                }
                Ok(ToWorker::CancelObject { object, force, recursive }) => {
                    // Only this process's own tasks.
                    if object.owner() == self.me() {
                        self.with_state(|st, fx| st.cancel(object, force, recursive, fx))
                    }
                }
                Ok(ToWorker::FreeObjects { objects, by }) => {
                    // Only this process's own objects: a peer cannot free others' through it.
                    let mine: Vec<ObjectId> = objects.into_iter().filter(|o| o.owner() == self.me()).collect();
                    self.with_state(|st, fx| st.free_values(&mine, by, fx))
                }
                Ok(ToWorker::AddBorrower { req, objects, borrower }) => {
                    self.with_state(|st, fx| st.add_borrowers(borrower, &objects, fx));
                    let _ = conn.send(&FromWorker::Ack { req });
                }
                Ok(ToWorker::ReleaseBorrows { objects }) => {
                    self.with_state(|st, fx| st.release_borrows(from, &objects, fx))
                }
                Ok(ToWorker::Summary { req }) => {
                    let (refs, tasks) = {
                        let st = self.lock();
                        (st.summary(), st.table_sizes().1 as u64)
                    };
                    let _ = conn.send(&FromWorker::Summary { req, refs, tasks });
                }
                Err(FrameError::Closed) => break,
                Err(e) => {
                    // Malformed or oversized: drop this connection, keep running.
                    tracing::warn!("closing the connection of process {from:?}: {e}");
                    break;
                }
            }
        }
        conn.shutdown();
        {
            let mut inb = self.inbound_conns.locked();
            if inb.get(&from).is_some_and(|(_, c)| Arc::ptr_eq(c, &conn)) {
                inb.remove(&from);
            }
        }
        if let Some(x) = &self.executor {
            x.owner_gone(&conn);
        }
        self.with_state(|st, fx| st.peer_lost(from, "its connection closed", fx));
    }
}

/// Jobs waiting for a helper thread, and the helpers (see [`Runtime::in_background`]).
#[derive(Default)]
pub(super) struct Helpers {
    jobs: std::collections::VecDeque<Box<dyn FnOnce() + Send>>,
    threads: usize,
    idle: usize,
}

/// At most this many helpers: enough to open connections to several slow peers at once.
const MAX_HELPERS: usize = 8;
/// A helper with nothing to do this long ends (an actor's process keeps no idle threads).
const HELPER_IDLE: Duration = Duration::from_secs(5);

impl Runtime {
    /// Runs `job` on a helper thread: for work that may wait on another process (opening a
    /// connection to it), which must not hold up a thread that reads a connection. Helpers
    /// start as jobs come, up to [`MAX_HELPERS`], and end when idle; jobs run in the order
    /// given when one helper runs them.
    pub(super) fn in_background(&'static self, job: Box<dyn FnOnce() + Send>) {
        let mut h = self.helpers.locked();
        h.jobs.push_back(job);
        if h.idle > 0 {
            self.helpers_cv.notify_one();
        }
        if h.jobs.len() <= h.idle || h.threads >= MAX_HELPERS {
            return;
        }
        h.threads += 1;
        drop(h);
        if thread::Builder::new().name("ferry-helper".into()).spawn(move || self.helper()).is_err() {
            let mut h = self.helpers.locked();
            h.threads -= 1;
            if h.threads == 0 {
                // No helper will run them: this thread does, rather than lose them.
                let jobs: Vec<_> = h.jobs.drain(..).collect();
                drop(h);
                for job in jobs {
                    job();
                }
            }
        }
    }

    fn helper(&'static self) {
        let mut h = self.helpers.locked();
        loop {
            if let Some(job) = h.jobs.pop_front() {
                drop(h);
                // A job that panics must not take the helper (and its count) with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a background job of this process panicked");
                }
                h = self.helpers.locked();
                continue;
            }
            h.idle += 1;
            let since = Instant::now();
            h = self.helpers_cv.wait_timeout_locked(h, HELPER_IDLE);
            h.idle -= 1;
            if h.jobs.is_empty() && since.elapsed() >= HELPER_IDLE {
                h.threads -= 1;
                return;
            }
        }
    }
}
