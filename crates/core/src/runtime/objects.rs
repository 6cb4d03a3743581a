//! Objects in this process: `get` (wait in the owner table, map the value from the store,
//! decode it, count the refs inside), `put`, `wait`, and storing a value (inline, or in the
//! node's store).
//!
//! The path of a `get`, one way down: `ferry::get` → [`Runtime::get`] → the owner table
//! (`poll_object`, waiting in `wait`), the store (`map_from`, which may ask the daemon to copy
//! the object here), `codec` (decoding, with `refs` recording the refs inside), then the owner
//! table again to count them and the owners of borrowed ones to register.

use super::*;
use crate::codec::{self, Backing};
use crate::owner::AllWait;
use crate::refs::{self, Decoded};
use ferry_proto::msg::{Return, StorePlace, TaskError};
use ferry_proto::state::SpanKind;
use ferry_store::Held;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The error of a wait that ended because the task waiting was cancelled.
pub(crate) fn cancelled_here() -> Error {
    let task = crate::executor::running().map(|r| format!("{:?}", r.task)).unwrap_or_else(|| "this task".into());
    Error::Cancelled { task }
}

impl Runtime {
    /// Whether an encoded value of `len` bytes travels inline (in messages, in the owner's
    /// memory) rather than through the store: the one place this is decided.
    pub(crate) fn travels_inline(&self, len: usize) -> bool {
        len <= self.cfg.inline_max_bytes
    }

    /// Waits for `id` (at most `timeout`) and decodes it. An owned object whose every copy was
    /// lost (its node died) is made again from its lineage, and waited for again; a borrowed
    /// one is asked of its owner again.
    pub(crate) fn get<T: DeserializeOwned + 'static>(
        &'static self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let start = self.span_start();
        let r = self.get_now(id, timeout);
        self.span(SpanKind::Get, id, start);
        r
    }

    fn get_now<T: DeserializeOwned + 'static>(&'static self, id: ObjectId, timeout: Option<Duration>) -> Result<T> {
        let _span = tracing::debug_span!("get", object = %id).entered();
        let deadline = timeout.map(|d| Instant::now() + d);
        let mut remade = 0;
        loop {
            let ready = match self.block_until(deadline, |w| self.poll_object(id, w)) {
                Some(r) => r?,
                None if crate::executor::cancelled_now() => return Err(cancelled_here()),
                None => return Err(Error::Timeout { waited: timeout.unwrap_or_default() }),
            };
            match self.decode(id, ready) {
                // Bounded: each round re-runs the task, which has retries of its own.
                Err(Error::ObjectLost { .. }) if id.owner() == self.me && remade < 16 => {
                    remade += 1;
                    self.with_state(|st, fx| st.reconstruct(id, fx))?;
                }
                Err(e @ Error::ObjectLost { .. }) if remade < 16 => {
                    remade += 1;
                    if !self.with_state(|st, fx| st.ask_remake(id, fx)) {
                        return Err(e);
                    }
                }
                r => return r,
            }
        }
    }

    /// `get` without blocking: the value if `id` is final, else pending (`waker` is woken
    /// when it is).
    pub(crate) fn poll_get<T: DeserializeOwned + 'static>(
        &'static self,
        id: ObjectId,
        waker: &Waker,
    ) -> Poll<Result<T>> {
        match self.poll_object(id, waker) {
            Poll::Ready(Ok(r)) => Poll::Ready(self.decode(id, r)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Every one of `ids`, in order; the first error known is returned as soon as it is known
    /// (as Ray's `get` does), without waiting for the others. The wait is one wait for the
    /// whole list (see `OwnerState::poll_all`): a task waiting on thousands of refs lends its
    /// CPU once, not once per ref.
    pub(crate) fn get_all<T: DeserializeOwned + 'static>(&'static self, ids: &[ObjectId]) -> Result<Vec<T>> {
        let start = self.span_start();
        let r = self.get_all_now(ids);
        if let Some(first) = ids.first() {
            self.span(SpanKind::Get, *first, start);
        }
        r
    }

    fn get_all_now<T: DeserializeOwned + 'static>(&'static self, ids: &[ObjectId]) -> Result<Vec<T>> {
        let mut w8 = AllWait::default();
        let mut bar = super::progress::Progress::new(self, "get_all", ids.len());
        let failed = self.block_until(None, |w| {
            let p = self.with_state(|st, fx| st.poll_all(ids, &mut w8, w, fx));
            if let Some(b) = bar.as_mut() {
                b.at(w8.done());
            }
            p
        });
        drop(bar);
        self.with_state(|st, _| st.end_all_wait(w8));
        if failed.is_none() {
            return Err(cancelled_here());
        }
        if let Some(Some(id)) = failed {
            self.get_now::<T>(id, None)?;
        }
        ids.iter().map(|id| self.get_now(*id, None)).collect()
    }

    /// Decodes a ready value; the handles inside it are counted, and the borrowed refs among
    /// them registered with their owners, before it is returned (the value's own hold on them
    /// may end at any time after).
    fn decode<T: DeserializeOwned + 'static>(&'static self, id: ObjectId, ready: Ready) -> Result<T> {
        let view = match &ready {
            Ready::Stored { view: None, node, .. } => {
                let view = self.map_from(id, *node)?;
                self.lock().cache_view(id, view.clone());
                Some(view)
            }
            _ => None,
        };
        let (v, made) = refs::decoding(|| match (&ready, &view) {
            (Ready::Inline(b), _) => codec::decode_backed(b, Backing::Inline(b)),
            (Ready::Stored { view: Some(v), .. }, _) | (_, Some(v)) => codec::decode_backed(v, Backing::Mapped(v)),
            (Ready::Stored { view: None, .. }, None) => unreachable!("mapped above"),
        });
        if !made.is_empty() {
            let new = self.adopt(made);
            self.register_decoded(new);
        }
        v.map_err(|e| match e {
            Error::Serialization { detail } => Error::Serialization { detail: format!("object {id:?}: {detail}") },
            e => e,
        })
    }

    /// Counts the handles a decode made (see `refs`): refs, learning the addresses of their
    /// owners, and actor handles. Returns the borrowed refs new in this process, which must
    /// be registered with their owners before whatever carried them lets them go.
    pub(crate) fn adopt(&'static self, made: Decoded) -> Vec<ObjectId> {
        for (id, a) in &made.refs {
            if let Some(a) = a {
                self.addrs.learn(id.owner(), *a);
            }
        }
        let new = match made.refs.is_empty() {
            true => Vec::new(),
            false => {
                let mut st = self.lock();
                made.refs.iter().filter(|(id, _)| st.decode_ref(*id)).map(|(id, _)| *id).collect()
            }
        };
        for (actor, label) in made.actors {
            self.hold_actor_handle(actor, &label);
        }
        new
    }

    /// Stores `value` as a new object this process owns; the refs and actor handles inside
    /// it are held by the object while it lives.
    pub(crate) fn put<T: Serialize + 'static>(&'static self, value: &T) -> Result<ObjectId> {
        let _span = tracing::debug_span!("put").entered();
        let (enc, found) = refs::encoding(self.addrs(), || codec::encode(value));
        // Held from now on, before the caller's own handles can go.
        let inner = match found.is_empty() {
            true => Default::default(),
            false => self.with_state(|st, _| st.hold_exports(found.refs, found.actors, false)),
        };
        let put = enc.and_then(|enc| self.put_encoded(enc));
        if !inner.refs.is_empty() || !inner.actors.is_empty() {
            // Held by the new object while it lives (or let go at once if there is none).
            let outer = put.as_ref().copied().unwrap_or_default();
            self.with_state(|st, fx| {
                st.set_contains(outer, inner.refs, fx);
                st.hold_actors_for(outer, inner.actors, fx);
            });
        }
        put
    }

    /// Waits until `n` of `ids` are final or the deadline passes; returns the indices of
    /// those that are (at most `n`, in order), having taken one more handle of every one of
    /// `ids` under one lock, for the caller to wrap.
    /// With `fetch_local`, the values of the ready ones stored on other nodes are copied to
    /// this node before it returns (as Ray's `fetch_local`), so that their `get` costs no
    /// transfer.
    pub(crate) fn wait(
        &'static self,
        ids: &[ObjectId],
        n: usize,
        deadline: Option<Instant>,
        fetch_local: bool,
    ) -> Vec<usize> {
        // On a timeout, what is final then is returned.
        let mut bar = super::progress::Progress::new(self, "wait", n);
        let _ = self.block_until(deadline, |w| {
            self.with_state(|st, fx| {
                let ready = st.first_final(ids, n).len();
                if let Some(b) = bar.as_mut() {
                    b.at(ready);
                }
                if ready == n {
                    return Poll::Ready(());
                }
                st.watch(ids, w, fx);
                Poll::Pending
            })
        });
        drop(bar);
        let (found, elsewhere) = {
            let mut st = self.lock();
            for id in ids {
                st.add_local_ref(*id);
            }
            let found = st.first_final(ids, n);
            let elsewhere: Vec<(ObjectId, NodeId)> = match fetch_local {
                true => found.iter().filter_map(|i| Some((ids[*i], st.stored_unmapped(ids[*i])?))).collect(),
                false => Vec::new(),
            };
            (found, elsewhere)
        };
        for (id, node) in elsewhere {
            // A copy that cannot be made now is not an error of `wait`: `get` says why.
            if let Ok(view) = self.map_from(id, node) {
                self.lock().cache_view(id, view);
            }
        }
        found
    }

    /// Stores an encoded value this process owns and returns its id.
    pub(crate) fn put_encoded(&'static self, enc: crate::codec::Encoded<'_>) -> Result<ObjectId> {
        if self.travels_inline(enc.len()) {
            let v = enc.into_vec();
            return Ok(self.with_state(|st, _| st.new_object(ObjState::Ready(Ready::Inline(Arc::new(v))))));
        }
        // Reserve the id first so the file is named for it.
        let id = self.with_state(|st, _| st.new_object(ObjState::Pending));
        let start = self.span_start();
        let stored = self.write_and_seal(id, &enc);
        self.span(SpanKind::Put, id, start);
        let state = match &stored {
            Ok((size, view)) => Ok(Ready::Stored {
                size: *size,
                node: self.node_id,
                view: view.clone().or_else(|| self.store.map(id).ok()),
            }),
            Err(e) => Err(e.clone()),
        };
        self.with_state(|st, fx| st.finish_put(id, state, fx));
        stored.map(|_| id)
    }

    /// Writes an object into this node's store (an extent of its arena, else a file of its
    /// own) and has the daemon account for it. Returns its size, and the writer's view of it
    /// in the arena. A value built in the store (`BytesMut`) becomes the object without a copy.
    pub(crate) fn write_and_seal(
        &self,
        id: ObjectId,
        enc: &crate::codec::Encoded<'_>,
    ) -> Result<(u64, Option<ObjectView>)> {
        use crate::bytes::StagedSrc;
        use crate::codec::Encoded;
        if let Encoded::Staged { src: StagedSrc::Arena(held), all } = enc {
            // Sealed as it is, unless it is some object already (then it is copied below).
            if held.object().is_none() && self.seal(id, all.len() as u64, Some(held.at())).is_ok() {
                held.name(id);
                return Ok((all.len() as u64, Some(ObjectView::arena((*held).clone()))));
            }
        }
        if let Some(r) = self.write_arena(id, enc) {
            return r;
        }
        let written = match enc {
            Encoded::Staged { src: StagedSrc::File(path), .. } => self.store.adopt(path, id),
            _ => self.with_room(enc.len() as u64, || self.store.write_parts(id, &enc.parts())),
        };
        let size = written
            .map_err(|e| Error::ObjectStoreFull { detail: format!("cannot write object {id:?} to the store: {e}") })?;
        self.seal(id, size, None)?;
        Ok((size, None))
    }

    fn seal(&self, id: ObjectId, size: u64, at: Option<u64>) -> Result<()> {
        match self.node_call(|req| ToNode::Seal { req, object: id, size, at })? {
            FromNode::Sealed { error: None, .. } => Ok(()),
            FromNode::Sealed { error: Some(e), .. } => Err(Error::ObjectStoreFull { detail: e }),
            other => Err(Error::Connection { detail: format!("unexpected reply to seal: {other:?}") }),
        }
    }

    /// Copies an encoded value into a new extent of the arena and seals it. `None`: there is
    /// no arena here or no extent for it, and the caller writes a file of its own.
    fn write_arena(&self, id: ObjectId, enc: &crate::codec::Encoded<'_>) -> Option<Result<(u64, Option<ObjectView>)>> {
        let size = enc.len() as u64;
        let held = match self.create_extent(size, Some(id)) {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        // SAFETY: the extent was created for this process just now and is not sealed; this is
        // the only reference to its bytes.
        let dst = unsafe { held.bytes_mut() };
        let mut off = 0;
        for p in enc.parts() {
            ferry_store::arena::copy_in(&mut dst[off..off + p.len()], p);
            off += p.len();
            // A writer killed here has written part of the object: it must never be sealed.
            ferry_proto::fail::crash_point("store-mid-write");
        }
        Some(self.seal(id, size, Some(held.at())).map(|_| (size, Some(ObjectView::arena(held)))))
    }

    /// A new extent of `len` bytes in the arena, pinned by this process and readied for
    /// writing. `None`: no arena here, no free extent large enough, or no pages for it (the
    /// caller writes a file of its own instead, which makes room if the filesystem is full).
    fn create_extent(&self, len: u64, id: Option<ObjectId>) -> Result<Option<Arc<Held>>> {
        let Some(arena) = &self.arena else { return Ok(None) };
        let (at, epoch) = match self.node_call(|req| ToNode::Create { req, size: len })? {
            FromNode::Created { at: Some(at), epoch, .. } => (at, epoch),
            FromNode::Created { at: None, .. } => return Ok(None),
            other => return Err(Error::Connection { detail: format!("unexpected reply to create: {other:?}") }),
        };
        let held = arena
            .hold(at, len, id)
            .map_err(|e| Error::Connection { detail: format!("the node's answer to create: {e}") })?;
        if let Err(e) = held.prepare(epoch) {
            // Its pin goes with `held`.
            tracing::debug!("no pages for {len} bytes in the arena ({e}): writing a file");
            return Ok(None);
        }
        Ok(Some(held))
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
            // A copy may be here already.
            if let Ok(v) = self.map_object(id) {
                return Ok(v);
            }
            let start = self.span_start();
            let pulled = self.node_call(|req| ToNode::Pull { req, object: id, from: node });
            self.span(SpanKind::Transfer, id, start);
            match pulled? {
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

    /// Maps `id` from this node's store: a view this process holds already, an extent of the
    /// arena (pinned for this process while any view of it lives), or a file.
    pub(crate) fn map_object(&self, id: ObjectId) -> Result<ObjectView> {
        let lost = |reason: String| Error::ObjectLost { object: id, reason };
        if let Some(arena) = &self.arena {
            if let Some(v) = arena.cached(id) {
                return Ok(v);
            }
            match self.node_call(|req| ToNode::Pin { req, object: id })? {
                FromNode::Pinned { place: Some(StorePlace::Arena { at, size }), .. } => {
                    return arena.hold(at, size, Some(id)).map(ObjectView::arena).map_err(|e| lost(e.to_string()))
                }
                FromNode::Pinned { place: Some(StorePlace::File), .. } => {}
                FromNode::Pinned { place: None, .. } => {
                    return Err(lost(format!("it is not in the store of node {} (freed, or lost)", self.node_id)))
                }
                other => return Err(Error::Connection { detail: format!("unexpected reply to pin: {other:?}") }),
            }
        }
        self.store.map(id).map_err(|e| lost(format!("its store file could not be read: {e}")))
    }

    /// Polls `id`: ready, failed, or pending (then `waker` is registered, and a borrowed
    /// object is asked of its owner).
    pub(crate) fn poll_object(&'static self, id: ObjectId, waker: &Waker) -> Poll<Result<Ready>> {
        self.with_state(|st, fx| st.poll_object(id, waker, fx))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &'static self,
        function: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        class: (&Shape, &ferry_proto::msg::Placement, ferry_proto::Priority),
        retries: (u32, bool, u32),
        returns: crate::owner::Rets,
        exported: crate::owner::Exports,
    ) -> ObjectId {
        let job = self.job();
        self.with_state(|st, fx| st.submit(function, name, args, class, retries, (returns, job), exported, fx))
    }

    /// An object with no value yet and no task to make it: [`Self::settle_object`] gives it
    /// one (a placement group's `ready`).
    pub(crate) fn pending_object(&'static self) -> ObjectId {
        self.with_state(|st, _| st.new_object(ObjState::Pending))
    }

    pub(crate) fn settle_object(&'static self, id: ObjectId, value: std::result::Result<Vec<u8>, Error>) {
        self.with_state(|st, fx| st.settle(id, value, fx))
    }

    /// An object whose value is an error (for calls that fail before a task exists).
    pub(crate) fn failed_object(&'static self, err: Error) -> ObjectId {
        self.with_state(|st, _| st.new_object(ObjState::Failed(err)))
    }

    /// Stores a task's return value, as object `id`: inline if small, else in this node's
    /// store (a value a retried task stored before its worker died stands).
    pub(crate) fn store_return(
        &'static self,
        id: ObjectId,
        enc: crate::codec::Encoded<'_>,
        function: &str,
    ) -> std::result::Result<Return, TaskError> {
        let bad = |detail: String| TaskError::BadReturn { function: function.to_string(), detail };
        if self.travels_inline(enc.len()) {
            return Ok(Return::Inline(enc.into_vec()));
        }
        match self.write_and_seal(id, &enc) {
            Ok((size, _)) => {
                // Stored and sealed, its location not yet reported to the owner.
                ferry_proto::fail::crash_point("worker-after-store");
                Ok(Return::Stored { size, node: self.node_id })
            }
            Err(Error::ObjectStoreFull { detail }) if detail.contains("exists") => {
                // A retry of a task whose earlier run stored its value before dying: tasks are
                // idempotent, so the stored value stands.
                let size =
                    std::fs::metadata(self.store.path_of(id)).map(|m| m.len()).map_err(|e| bad(e.to_string()))?;
                match self.node_call(|req| ToNode::Seal { req, object: id, size, at: None }) {
                    Ok(_) => Ok(Return::Stored { size, node: self.node_id }),
                    Err(e) => Err(bad(e.to_string())),
                }
            }
            Err(Error::ObjectStoreFull { detail }) => {
                Err(TaskError::ReturnNotStored { function: function.to_string(), detail, store_full: true })
            }
            Err(e) => Err(TaskError::ReturnNotStored {
                function: function.to_string(),
                detail: e.to_string(),
                store_full: false,
            }),
        }
    }

    /// `size` bytes in this node's store, to be filled and then made an object (`BytesMut`):
    /// an extent of the arena, else a file of its own (room is made for it as for any write).
    pub(crate) fn stage(&self, size: u64) -> Result<Staged> {
        if let Some(h) = self.create_extent(size, None)? {
            return Ok(Staged::Arena(h));
        }
        let tag = ferry_proto::ids::random_u64();
        self.with_room(size, || self.store.stage(size, tag))
            .map(Staged::File)
            .map_err(|e| Error::ObjectStoreFull { detail: format!("cannot allocate {size} bytes in the store: {e}") })
    }
}

/// Room for a value built in place.
pub(crate) enum Staged {
    Arena(Arc<Held>),
    File(ferry_store::StagedFile),
}
