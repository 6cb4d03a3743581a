//! Objects between nodes (DESIGN §5): a node pulls an object another node holds when one
//! of its processes needs it (a task's argument, a `get`).
//!
//! The puller opens a connection of its own to the holder's daemon and asks for the object
//! (`FetchObject`); the holder answers with its size and then streams the file's bytes raw
//! with `sendfile` (from tmpfs, or from the spill file), while the puller `splice`s them from
//! the socket into a file staged in its own store, a pipe's worth (1 MiB) at a time. No request
//! per chunk, no frame around the bytes: the stream is the pipeline, and the only copies are
//! the kernel's (none through user space on either side). Concurrent pulls of one
//! object wait for the one transfer in flight. The copy is sealed in the puller's store; the
//! holder remembers which nodes took copies and tells them when the object is freed.

use crate::{ConnId, Node};
use ferry_proto::conn::{connect, Addr, Conn, Stream};
use ferry_proto::msg::{FromNode, ProcKind, PullError, ToNode};
use ferry_proto::FrameReader;
use ferry_proto::{NodeId, ObjectId, WorkerId};
use ferry_types::sync::MutexExt;
use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long a transfer may stall (no byte arriving) before it fails.
const STALL: Duration = Duration::from_secs(30);

/// Why one attempt at a copy failed.
enum Fetch {
    /// The store's filesystem was full, with the object's size.
    NoSpace(u64, String),
    Failed(String),
}

impl Node {
    /// `Pull`: answer at once if the object is here, join a transfer in flight, or start one.
    pub(crate) fn pull(self: &Arc<Self>, conn: ConnId, req: u64, object: ObjectId, from: NodeId) {
        let mut st = self.lock();
        if st.store.contains(object) {
            self.send(&st, conn, &FromNode::Pulled { req, error: None });
            return;
        }
        if let Some(w) = st.copies.pulls.get_mut(&object) {
            w.push((conn, req));
            return;
        }
        let Some(addr) = self.node_addr(&st, from) else {
            let error = format!("object {object:?} is on node {from}, which is dead or not in the cluster");
            self.send(&st, conn, &FromNode::Pulled { req, error: Some(PullError::Failed(error)) });
            return;
        };
        st.copies.pulls.insert(object, vec![(conn, req)]);
        drop(st);
        let node = self.clone();
        let spawned = std::thread::Builder::new().name("ferry-pull".into()).spawn(move || {
            let r = node.fetch(object, &addr);
            node.pulled(object, r);
        });
        if let Err(e) = spawned {
            self.pulled(object, Err(PullError::Failed(format!("cannot start a transfer: {e}"))));
        }
    }

    /// Copies `object` from the daemon at `addr` into this node's store; returns its size. A
    /// store whose filesystem is full is pressure: room is made (spilling) and the copy tried
    /// again; if none can be made the error says "object store full", never that the object
    /// is lost (its owner would make it again for nothing).
    fn fetch(&self, object: ObjectId, addr: &str) -> Result<(u64, Option<u64>), PullError> {
        let mut tries = 0;
        loop {
            match self.fetch_once(object, addr) {
                Err(Fetch::NoSpace(size, e)) if tries < 3 => {
                    tries += 1;
                    if let Err(why) = self.wait_for_room(size) {
                        return Err(PullError::StoreFull(format!("cannot copy object {object:?} here ({e}): {why}")));
                    }
                }
                Err(Fetch::NoSpace(_, e)) => {
                    return Err(PullError::StoreFull(format!("cannot copy object {object:?} here: {e}")))
                }
                Err(Fetch::Failed(e)) => return Err(PullError::Failed(e)),
                Ok(n) => return Ok(n),
            }
        }
    }

    fn fetch_once(&self, object: ObjectId, addr: &str) -> Result<(u64, Option<u64>), Fetch> {
        let size = std::cell::Cell::new(0);
        let r = self.fetch_inner(object, addr, &size);
        match r {
            Err((Some(e), _)) if ferry_store::is_no_space(&e) => Err(Fetch::NoSpace(size.get(), e.to_string())),
            Err((_, why)) => Err(Fetch::Failed(why)),
            Ok(n) => Ok(n),
        }
    }

    fn fetch_inner(
        &self,
        object: ObjectId,
        addr: &str,
        announced: &std::cell::Cell<u64>,
    ) -> Result<(u64, Option<u64>), (Option<std::io::Error>, String)> {
        let plain = |e: String| (None, e);
        let (conn, mut rx, _) =
            connect(&Addr::Tcp(addr.to_string()), &self.opts.token, WorkerId(self.id.0), self.opts.max_frame)
                .map_err(|e| plain(format!("cannot reach node at {addr}: {e}")))?;
        rx.get_ref().set_read_timeout(Some(STALL)).map_err(|e| plain(e.to_string()))?;
        conn.send(&ToNode::register_tool(ProcKind::Node)).map_err(|e| plain(e.to_string()))?;
        conn.send(&ToNode::FetchObject { object, node: self.id }).map_err(|e| plain(e.to_string()))?;
        let size = loop {
            match rx.read::<FromNode>().map_err(|e| plain(format!("node at {addr}: {e}")))? {
                FromNode::ObjectData { size, error: None, .. } => break size,
                FromNode::ObjectData { error: Some(e), .. } => return Err(plain(e)),
                _ => continue,
            }
        };
        announced.set(size);
        // Into an extent of the arena (pinned by the daemon until sealed), or a file of its own.
        let (store, arena) = {
            let mut st = self.lock();
            let c = st.store.create(size, ferry_store::DAEMON);
            (st.store.dir().clone(), c.and_then(|c| Some((st.store.arena_file()?, c.at))))
        };
        if let Some((file, at)) = arena {
            let r = receive(&mut rx, &file, at, size).map_err(|e| {
                let why = format!("transfer from {addr} broke off: {e}");
                (Some(e), why)
            });
            conn.shutdown();
            if r.is_err() {
                self.lock().store.unpin(at, ferry_store::DAEMON);
            }
            return r.map(|_| (size, Some(at)));
        }
        let (path, file) =
            store.stage_file(ferry_proto::ids::random_u64()).map_err(|e| (None, format!("cannot stage it: {e}")))?;
        // Its room is taken before any byte moves: a full filesystem shows now, not midway.
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a file we own.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
        if r != 0 {
            let _ = std::fs::remove_file(&path);
            let e = std::io::Error::from_raw_os_error(r);
            let why = format!("cannot stage it: {e}");
            return Err((Some(e), why));
        }
        let r = receive(&mut rx, &file, 0, size)
            .map_err(|e| {
                let why = format!("transfer from {addr} broke off: {e}");
                (Some(e), why)
            })
            .and_then(|_| store.adopt(&path, object).map_err(|e| (None, e.to_string())));
        let _ = std::fs::remove_file(&path);
        conn.shutdown();
        r.map(|n| (n, None))
    }

    /// A transfer ended: seal the copy and answer everyone who waited for it.
    fn pulled(&self, object: ObjectId, r: Result<(u64, Option<u64>), PullError>) {
        let mut st = self.lock();
        let sealed = match r {
            Ok((size, at)) => {
                let s = st.store.seal_copy(object, size, at);
                if let Some(at) = at {
                    // Bound to the object now (or refused, and so free again).
                    st.store.unpin(at, ferry_store::DAEMON);
                }
                Ok((size, s))
            }
            Err(e) => Err(e),
        };
        let error = match sealed {
            // A secondary copy: under pressure it is dropped (pulled again when needed).
            Ok((size, sealed)) => match sealed {
                Ok(()) => {
                    st.copies.counts.1 += 1;
                    st.copies.counts.3 += size;
                    if st.store.over_capacity() {
                        let _ = self.spill_tx.locked().send(Some(()));
                    }
                    None
                }
                Err(e @ ferry_store::StoreError::Full { .. }) => Some(PullError::StoreFull(e.to_string())),
                Err(e) => Some(PullError::Failed(e.to_string())),
            },
            Err(e) => Some(e),
        };
        for (conn, req) in st.copies.pulls.remove(&object).unwrap_or_default() {
            self.send(&st, conn, &FromNode::Pulled { req, error: error.clone() });
        }
    }

    /// `FetchObject`, on the fetching node's own connection: the size, then the bytes.
    /// Runs on that connection's thread without the state lock.
    pub(crate) fn serve_fetch(&self, conn: &Conn, object: ObjectId, to: NodeId) {
        // The object's file, or the arena with the extent (pinned by the daemon while it is
        // sent: freed meanwhile, it is not reused under the transfer).
        let found = {
            let mut st = self.lock();
            let f = match st.store.pin(object, ferry_store::DAEMON) {
                Some(ferry_store::Place::Arena { at, size }) => match st.store.arena_file() {
                    Some(f) => Ok((f, Some(at), size)),
                    None => Err("the store has no arena".to_string()),
                },
                Some(ferry_store::Place::File) => {
                    st.store.dir().open_object(object).map_err(|e| e.to_string()).map(|f| (Arc::new(f), None, 0))
                }
                None => Err(format!("node {} does not hold object {object:?} (freed?)", self.id)),
            };
            if f.is_ok() {
                st.copies.taken.entry(object).or_default().push(to);
            }
            f
        };
        let (file, at, size) = match found {
            Ok(f) => f,
            Err(error) => {
                let _ = conn.send(&FromNode::ObjectData { object, size: 0, error: Some(error) });
                return;
            }
        };
        let size = match at {
            Some(_) => size,
            None => file.metadata().map(|m| m.len()).unwrap_or(0),
        };
        let unpin = || {
            if let Some(at) = at {
                self.lock().store.unpin(at, ferry_store::DAEMON);
            }
        };
        {
            // Counted as it starts: the puller may have it (and look) before this thread
            // would get the lock again.
            let mut st = self.lock();
            st.copies.counts.0 += 1;
            st.copies.counts.2 += size;
        }
        if conn.send(&FromNode::ObjectData { object, size, error: None }).is_err() {
            unpin();
            return;
        }
        let from = at.unwrap_or(0);
        if ferry_proto::fail::break_point("transfer-midway") {
            // Half the bytes, then the connection goes: the puller must report, not hang.
            let _ = conn.send_file_at(&file, from, size / 2);
            conn.shutdown();
            unpin();
            return;
        }
        let _ = conn.send_file_at(&file, from, size);
        unpin();
    }

    /// Where node `n`'s daemon listens, if it is alive.
    pub(crate) fn node_addr(&self, st: &crate::State, n: NodeId) -> Option<String> {
        self.full_view(st).into_iter().find(|v| v.node == n && v.alive && !v.addr.is_empty()).map(|v| v.addr)
    }

    /// The primary copy of these objects was freed: so are the copies other nodes took.
    pub(crate) fn free_copies(&self, st: &mut crate::State, objects: &[ObjectId]) {
        let mut by_node: HashMap<NodeId, Vec<ObjectId>> = HashMap::new();
        for o in objects {
            for n in st.copies.taken.remove(o).unwrap_or_default() {
                by_node.entry(n).or_default().push(*o);
            }
        }
        for (n, objects) in by_node {
            if let Some(addr) = self.node_addr(st, n) {
                let _ = self.links_tx.locked().send((n, addr, ToNode::Free { objects }));
            }
        }
    }
}

/// Reads `size` raw bytes from the connection into `file`: what the reader already buffered
/// first, then the rest with `splice` (socket to pipe to file), so the bytes go from the
/// socket's buffers to the store's pages with one copy, made by the kernel.
fn receive(rx: &mut FrameReader<Stream>, file: &std::fs::File, at: u64, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let head = (rx.buffered() as u64).min(size) as usize;
    let mut first = vec![0u8; head];
    rx.read_exact_raw(&mut first)?;
    std::os::unix::fs::FileExt::write_all_at(file, &first, at)?;
    let sock = match rx.get_ref() {
        Stream::Tcp(s) => s.as_raw_fd(),
        Stream::Unix(s) => s.as_raw_fd(),
    };
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: plain syscalls on descriptors we own; the pipe is closed below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (pr, pw) = (fds[0], fds[1]);
    // SAFETY: as above.
    let pipe_size = unsafe { libc::fcntl(pw, libc::F_SETPIPE_SZ, 1 << 20) }.max(64 << 10) as usize;
    let mut off: libc::loff_t = (at + head as u64) as libc::loff_t;
    let end = at + size;
    let r = (|| {
        while (off as u64) < end {
            let want = ((end - off as u64) as usize).min(pipe_size);
            // SAFETY: valid descriptors; null offsets mean "current position" for the socket.
            let n = retry(|| unsafe {
                libc::splice(sock, std::ptr::null_mut(), pw, std::ptr::null_mut(), want, libc::SPLICE_F_MOVE)
            })?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the sender closed early"));
            }
            let mut left = n;
            while left > 0 {
                // SAFETY: as above; `off` is ours and advanced by the kernel.
                left -= retry(|| unsafe {
                    libc::splice(pr, std::ptr::null_mut(), file.as_raw_fd(), &mut off, left, libc::SPLICE_F_MOVE)
                })?;
            }
        }
        Ok(())
    })();
    // SAFETY: closing the pipe we opened.
    unsafe {
        libc::close(pr);
        libc::close(pw);
    }
    r
}

/// Runs a syscall again while it is interrupted; its result as a count or an error.
fn retry(mut call: impl FnMut() -> isize) -> std::io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends messages to other nodes' daemons (freed copies), connecting on first use, off the
/// state lock.
pub(crate) fn links(token: String, me: NodeId, max_frame: u32, rx: mpsc::Receiver<(NodeId, String, ToNode)>) {
    let mut conns: HashMap<NodeId, Conn> = HashMap::new();
    while let Ok((n, addr, msg)) = rx.recv() {
        let conn = match conns.entry(n) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let Ok((c, rd, _)) = connect(&Addr::Tcp(addr.clone()), &token, WorkerId(me.0), max_frame) else {
                    continue;
                };
                if c.send(&ToNode::register_tool(ProcKind::Node)).is_err() {
                    continue;
                }
                let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                // Nothing comes back on a link but the registration; read so the socket drains.
                std::thread::spawn(move || {
                    let mut rd = rd;
                    while rd.read_raw().is_ok() {}
                });
                v.insert(c)
            }
        };
        if conn.send(&msg).is_err() {
            conns.remove(&n);
        }
    }
}
