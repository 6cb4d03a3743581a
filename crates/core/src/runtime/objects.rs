//! Objects in this process: storing a value (inline, or in the node's store), mapping a
//! stored one (copied from another node first), and asking the owner table about one.

use super::*;

impl Runtime {
    /// Stores an encoded value this process owns and returns its id.
    pub(crate) fn put_encoded(&'static self, enc: crate::codec::Encoded<'_>) -> Result<ObjectId> {
        if enc.len() <= self.cfg.inline_max_bytes {
            let v = enc.into_vec();
            return Ok(self.with_state(|st, _| st.new_object(ObjState::Ready(Ready::Inline(Arc::new(v))))));
        }
        // Reserve the id first so the file is named for it.
        let id = self.with_state(|st, _| st.new_object(ObjState::Pending));
        let stored = self.write_and_seal(id, &enc);
        let state = match &stored {
            Ok(size) => Ok(Ready::Stored { size: *size, node: self.node_id, view: self.store.map(id).ok() }),
            Err(e) => Err(e.clone()),
        };
        self.with_state(|st, fx| st.finish_put(id, state, fx));
        stored.map(|_| id)
    }

    /// Writes an object into this node's store and has the daemon account for it.
    /// A value built in the store (`BytesMut`) becomes the object without a copy.
    pub(crate) fn write_and_seal(&self, id: ObjectId, enc: &crate::codec::Encoded<'_>) -> Result<u64> {
        let written = match enc {
            crate::codec::Encoded::Staged { path, .. } => self.store.adopt(path, id),
            _ => self.with_room(enc.len() as u64, || self.store.write_parts(id, &enc.parts())),
        };
        let size = written
            .map_err(|e| Error::ObjectStoreFull { detail: format!("cannot write object {id:?} to the store: {e}") })?;
        match self.node_call(|req| ToNode::Seal { req, object: id, size })? {
            FromNode::Sealed { error: None, .. } => Ok(size),
            FromNode::Sealed { error: Some(e), .. } => Err(Error::ObjectStoreFull { detail: e }),
            other => Err(Error::Connection { detail: format!("unexpected reply to seal: {other:?}") }),
        }
    }

    /// Runs a write to the store; if its filesystem is full (`ENOSPC`), asks the daemon to
    /// spill until `bytes` fit and tries again, for as long as the daemon can make room
    /// (other writers compete for it; bounded at 60 s). A filesystem smaller than the store's
    /// capacity is pressure, as the capacity is.
    pub(crate) fn with_room<T>(&self, bytes: u64, mut write: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
        let end = Instant::now() + Duration::from_secs(60);
        let mut tries: u32 = 0;
        loop {
            match write() {
                Err(e) if ferry_store::is_no_space(&e) && Instant::now() < end => {
                    if tries > 0 {
                        // Room was made and another writer took it: give them a moment.
                        thread::sleep(Duration::from_millis(5 * u64::from(tries.min(20))));
                    }
                    tries += 1;
                    match self.node_call(|req| ToNode::MakeRoom { req, bytes }) {
                        Ok(FromNode::Room { error: None, .. }) => continue,
                        Ok(FromNode::Room { error: Some(why), .. }) => return Err(std::io::Error::other(why)),
                        Ok(other) => return Err(std::io::Error::other(format!("unexpected reply: {other:?}"))),
                        Err(err) => return Err(std::io::Error::other(format!("{e}, and the node: {err}"))),
                    }
                }
                r => return r,
            }
        }
    }

    /// Maps `id`, stored on `node`: first copied here if `node` is another node (the daemon
    /// pulls it; a copy already here is used as it is).
    pub(crate) fn map_from(&self, id: ObjectId, node: NodeId) -> Result<ObjectView> {
        if node != self.node_id {
            if let Ok(v) = self.store.map(id) {
                return Ok(v);
            }
            match self.node_call(|req| ToNode::Pull { req, object: id, from: node })? {
                FromNode::Pulled { error: None, .. } => {}
                // The store here is full: not a loss (its owner must not make it again).
                FromNode::Pulled { error: Some(e @ PullError::StoreFull(_)), .. } => {
                    return Err(Error::ObjectStoreFull { detail: e.to_string() })
                }
                FromNode::Pulled { error: Some(e), .. } => {
                    return Err(Error::ObjectLost {
                        object: id,
                        reason: format!("cannot copy it from node {node}: {e}"),
                    })
                }
                other => return Err(Error::Connection { detail: format!("unexpected reply to pull: {other:?}") }),
            }
        }
        self.map_object(id)
    }

    pub(crate) fn map_object(&self, id: ObjectId) -> Result<ObjectView> {
        self.store
            .map(id)
            .map_err(|e| Error::ObjectLost { object: id, reason: format!("its store file could not be read: {e}") })
    }

    /// Polls `id`: ready, failed, or pending (then `waker` is registered, and a borrowed
    /// object is asked of its owner).
    pub(crate) fn poll_object(&'static self, id: ObjectId, waker: &Waker) -> Poll<Result<Ready>> {
        self.with_state(|st, fx| st.poll_object(id, waker, fx))
    }

    pub(crate) fn submit(
        &'static self,
        function: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        class: (&Shape, &ferry_proto::msg::Placement),
        retries: (u32, bool),
        exported: crate::owner::Exports,
    ) -> ObjectId {
        self.with_state(|st, fx| st.submit(function, name, args, class, retries, exported, fx))
    }

    /// An object whose value is an error (for calls that fail before a task exists).
    pub(crate) fn failed_object(&'static self, err: Error) -> ObjectId {
        self.with_state(|st, _| st.new_object(ObjState::Failed(err)))
    }
}
