//! The store's accounts: seals (answered once the store is under its capacity), room made
//! on its filesystem for writers that found it full, and the spill thread.

use super::*;
use ferry_proto::msg::StorePlace;
use ferry_store::{Holder, Place};
use ferry_types::sync::MutexExt;

impl Node {
    /// Answers the writers waiting for room on the store's filesystem: there is none to make.
    pub(crate) fn no_room(&self, st: &mut State, why: &str) {
        let free = st.store.dir().free_space().unwrap_or(0);
        for (w, bytes, _) in std::mem::take(&mut st.room.writers) {
            let error = format!(
                "object store full: its filesystem ({}) has {} MiB free for {} MiB, and {why}; give it more \
                 room (a larger /dev/shm: `docker run --shm-size`), or drop references to large objects",
                st.store.dir().path().display(),
                free >> 20,
                bytes.div_ceil(1 << 20)
            );
            self.answer_room(st, w, Some(error));
        }
    }

    pub(crate) fn answer_room(&self, st: &State, w: RoomWaiter, error: Option<String>) {
        match w {
            RoomWaiter::Conn(conn, req) => self.send(st, conn, &FromNode::Room { req, error }),
            RoomWaiter::Local(_, tx) => {
                let _ = tx.try_send(error);
            }
        }
    }

    /// For a thread of this daemon that found the store's filesystem full: spills until
    /// `bytes` fit (as `MakeRoom` does for a process), waiting at most 15 s (a transfer's
    /// requester gives up after a minute, and a transfer tries three times).
    pub(crate) fn wait_for_room(&self, bytes: u64) -> Result<(), String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let id = ferry_proto::ids::random_u64();
        {
            let mut st = self.lock();
            let mut free = st.store.dir().free_space().unwrap_or(0);
            if free < bytes {
                // Pages of free extents go back to the filesystem first.
                st.store.trim();
                free = st.store.dir().free_space().unwrap_or(0);
            }
            if free >= bytes {
                return Ok(());
            }
            st.room.writers.push((RoomWaiter::Local(id, tx), bytes, bytes - free));
        }
        let _ = self.spill_tx.locked().send(Some(()));
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            Err(e) => {
                // Not waited for any more: nothing is spilled for it.
                self.lock().room.writers.retain(|(w, ..)| !matches!(w, RoomWaiter::Local(i, _) if *i == id));
                Err(match e {
                    mpsc::RecvTimeoutError::Timeout => "no room was made within 15 s".into(),
                    mpsc::RecvTimeoutError::Disconnected => "the node is stopping".into(),
                })
            }
        }
    }

    /// The store's accounts: objects sealed, freed, listed; room made on its filesystem. Routed here by `handle`.
    pub(crate) fn on_store(&self, st: &mut State, conn: ConnId, msg: ToNode) {
        match msg {
            ToNode::Create { req, size } => {
                let c = st.store.create(size, conn as Holder);
                let epoch = c.map(|c| c.epoch).unwrap_or(0);
                self.send(st, conn, &FromNode::Created { req, at: c.map(|c| c.at), epoch });
            }
            ToNode::Pin { req, object } => {
                let place = st.store.pin(object, conn as Holder).map(|p| match p {
                    Place::Arena { at, size } => StorePlace::Arena { at, size },
                    Place::File => StorePlace::File,
                });
                self.send(st, conn, &FromNode::Pinned { req, place });
            }
            ToNode::Unpin { at } => {
                for a in at {
                    st.store.unpin(a, conn as Holder);
                }
            }
            ToNode::Seal { req, object, size, at } => match st.store.seal_at(object, size, at, conn as Holder) {
                Ok(()) if st.store.over_capacity() => {
                    // Answered once spilling has made room: the writer waits until then.
                    st.room.seals.push((conn, req, object));
                    let _ = self.spill_tx.locked().send(Some(()));
                }
                res => {
                    let error = res.err().map(|e| e.to_string());
                    self.send(st, conn, &FromNode::Sealed { req, error });
                }
            },
            ToNode::MakeRoom { req, bytes } => {
                // Pages of free extents go back to the filesystem first.
                st.store.trim();
                let free = st.store.dir().free_space().unwrap_or(0);
                let size = st.store.dir().fs_size().unwrap_or(u64::MAX);
                if bytes > size {
                    let error = format!(
                        "object store full: the object needs {} MiB and the store's filesystem ({}) holds {} MiB \
                         in all; give it more room (a larger /dev/shm: `docker run --shm-size`)",
                        bytes.div_ceil(1 << 20),
                        st.store.dir().path().display(),
                        size >> 20
                    );
                    self.send(st, conn, &FromNode::Room { req, error: Some(error) });
                } else if free >= bytes {
                    // Room appeared meanwhile (another writer's was freed).
                    self.send(st, conn, &FromNode::Room { req, error: None });
                } else {
                    st.room.writers.push((RoomWaiter::Conn(conn, req), bytes, bytes - free));
                    let _ = self.spill_tx.locked().send(Some(()));
                }
            }
            ToNode::Inventory { req } => {
                let processes = st.conns.values().filter(|c| c.registered).map(|c| c.from).collect();
                let objects = st
                    .store
                    .list()
                    .into_iter()
                    .map(|o| StoredInfo { object: o.id, size: o.size, spilled: o.spilled })
                    .collect();
                self.send(st, conn, &FromNode::Inventory { req, processes, objects });
            }
            ToNode::Free { objects } => {
                for o in &objects {
                    st.store.free(*o);
                }
                self.free_copies(st, &objects);
            }
            ToNode::Stats { req } => {
                let stats = self.stats(st);
                self.send(st, conn, &FromNode::Stats { req, stats });
            }
            // Routed elsewhere by `handle`.
            _ => {}
        }
    }
}

/// `bytes` left the store's memory: they go to the writers waiting for room, first come first
/// served (each byte made room for one of them, not for all).
pub(crate) fn made_room(st: &mut State, bytes: u64) {
    let mut left = bytes;
    for (_, _, need) in st.room.writers.iter_mut() {
        let take = (*need).min(left);
        *need -= take;
        left -= take;
        if left == 0 {
            break;
        }
    }
}

/// Spills the oldest objects to disk while the store is over its capacity, then answers the
/// seals that waited for room. Copies run without the state lock.
pub(crate) fn spiller(node: Arc<Node>, rx: mpsc::Receiver<Option<()>>) {
    spill_while_asked(&node, rx);
    // Stopping: nobody waits for room that will not come.
    node.no_room(&mut node.lock(), "the node is stopping");
}

pub(crate) fn spill_while_asked(node: &Arc<Node>, rx: mpsc::Receiver<Option<()>>) {
    while let Ok(Some(())) = rx.recv() {
        loop {
            let next = {
                let mut st = node.lock();
                // Room asked for on the filesystem (beyond the store's own accounting): a
                // writer is answered once its shortfall is spilled (its pages go when their
                // last mapping does, which may lag) or its bytes fit; it tries again then.
                if !st.room.writers.is_empty() {
                    // What spilling freed in the arena goes back to the filesystem.
                    st.store.trim();
                    let free = st.store.dir().free_space().unwrap_or(u64::MAX);
                    let (done, left): (Vec<_>, Vec<_>) = std::mem::take(&mut st.room.writers)
                        .into_iter()
                        .partition(|(_, bytes, need)| *need == 0 || free >= *bytes);
                    st.room.writers = left;
                    for (w, _, _) in done {
                        node.answer_room(&st, w, None);
                    }
                }
                let fs_short = !st.room.writers.is_empty();
                if !st.store.over_capacity() && !fs_short {
                    let waiting = std::mem::take(&mut st.room.seals);
                    for (conn, req, _) in waiting {
                        node.send(&st, conn, &FromNode::Sealed { req, error: None });
                    }
                    break;
                }
                // Secondary copies go first: their nodes can give them again.
                if let Some((_, size)) = st.store.drop_copy() {
                    made_room(&mut st, size);
                    continue;
                }
                match st.store.next_to_spill() {
                    Some((id, size, at)) => {
                        (id, st.store.dir().clone(), at.and_then(|at| Some((st.store.arena_file()?, at, size))))
                    }
                    None => {
                        // Nothing left to spill: a writer must never wait for room that will
                        // not come.
                        let waiting = std::mem::take(&mut st.room.seals);
                        for (conn, req, object) in waiting {
                            st.store.free(object);
                            let error = "object store full and nothing left to spill".to_string();
                            node.send(&st, conn, &FromNode::Sealed { req, error: Some(error) });
                        }
                        node.no_room(&mut st, "nothing of this node's is left in memory to spill");
                        break;
                    }
                }
            };
            let (id, dir, from) = next;
            let t = Instant::now();
            let copied = dir.spill_from(id, from.as_ref().map(|(f, at, size)| (&**f, *at, *size)));
            let took = t.elapsed();
            let mut st = node.lock();
            if let Some((_, at, _)) = from {
                // The daemon's pin for the copy.
                st.store.unpin(at, ferry_store::DAEMON);
            }
            match copied {
                Ok(n) => {
                    st.room.spilled.0 += n;
                    st.room.spilled.1 += took;
                    made_room(&mut st, n);
                    if st.store.mark_spilled(id) {
                        // Its owner drops its mapping, or the memory would stay in use.
                        let owner =
                            st.conns.iter().find(|(_, c)| c.registered && c.from == id.owner()).map(|(k, _)| *k);
                        if let Some(c) = owner {
                            node.send(&st, c, &FromNode::Spilled { objects: vec![id] });
                        }
                    }
                }
                Err(e) => {
                    // The disk is full (or the spill directory unusable): the writers
                    // waiting for room get a clear error and their objects are dropped.
                    st.store.spill_failed(id);
                    node.no_room(&mut st, &format!("spilling failed: {e}"));
                    let waiting = std::mem::take(&mut st.room.seals);
                    let spill = dir.spill_dir().map(|p| p.display().to_string()).unwrap_or_default();
                    for (conn, req, object) in waiting {
                        st.store.free(object);
                        let error = format!(
                            "object store full: {} of {} bytes in memory, and spilling to {spill} failed: {e}; \
                             free space there, drop references to large objects, or raise \
                             Config::object_store_bytes",
                            st.store.used_bytes(),
                            st.store.capacity_bytes()
                        );
                        node.send(&st, conn, &FromNode::Sealed { req, error: Some(error) });
                    }
                    break;
                }
            }
        }
    }
}
