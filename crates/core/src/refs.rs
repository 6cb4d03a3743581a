//! Refs and actor handles inside values. Encoding and decoding one only records it, in a
//! context the caller sets up around that one encode or decode ([`encoding`], [`decoding`]);
//! the caller then does what holding them means (pins, handles, registrations with owners)
//! under the owner table's lock, after the encode or decode. Nothing here reaches the runtime:
//! a serde impl has no way to say which runtime it works for, so it must not need one.
//!
//! Why values are encoded decides what their refs hold: in a task's arguments the task holds
//! each until it is over (the generated code encodes the arguments one by one between
//! [`begin_args`] and [`end_args`]); in a `put` value the new object pins them; in a task's
//! return value the worker registers the caller as a borrower before replying. Outside any
//! context (a user encoding a ref with their own serde format) a ref is only its id.
//!
//! A decoded ref is a new handle, but the table counts it only once the decode is over
//! ([`decoding`] returns what to count). Meanwhile the invariant is: live handles of an
//! object = the table's count + those decoded and not yet counted; so a handle dropped during
//! the decode (a decode that fails half way) takes one off the not-yet-counted first
//! ([`dropped_while_decoding`]). A handle decoded outside any context counts itself, as a
//! clone does.

use crate::owner::Exports;
use ferry_proto::msg::ActorId;
use ferry_proto::{ObjectId, WorkerId};
use ferry_types::sync::RwLockExt;
use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::RwLock;

/// Where processes listen on TCP, learnt from the refs they own, so that a ref can carry
/// its owner's address to processes of other nodes (as Ray's refs do).
#[derive(Debug)]
pub(crate) struct Addrs {
    me: WorkerId,
    /// This process's own; `None` when it is on no cluster (its refs then carry none).
    mine: Option<SocketAddr>,
    book: RwLock<HashMap<WorkerId, SocketAddr>>,
}

impl Addrs {
    pub fn new(me: WorkerId, mine: Option<SocketAddr>) -> Addrs {
        Addrs { me, mine, book: RwLock::new(HashMap::default()) }
    }

    /// This process's TCP address, if it has one.
    pub fn mine(&self) -> Option<SocketAddr> {
        self.mine
    }

    /// Where `w` listens on TCP, if known.
    pub fn of(&self, w: WorkerId) -> Option<SocketAddr> {
        if w == self.me {
            return self.mine;
        }
        self.book.read_locked().get(&w).copied()
    }

    /// What a ref owned by `owner` should carry: its owner's address, in a cluster.
    fn for_ref(&self, owner: WorkerId) -> Option<SocketAddr> {
        self.mine?;
        self.of(owner)
    }

    pub fn learn(&self, w: WorkerId, a: SocketAddr) {
        if w == self.me {
            return;
        }
        let known = self.book.read_locked().get(&w) == Some(&a);
        if !known {
            self.book.write_locked().insert(w, a);
        }
    }
}

/// The refs and actor handles an encode met, in order (with repeats).
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub refs: Vec<ObjectId>,
    pub actors: Vec<(ActorId, String)>,
}

impl Found {
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty() && self.actors.is_empty()
    }
}

/// The refs (with the owner addresses they carried) and actor handles a decode made, not yet
/// counted by the table.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub refs: Vec<(ObjectId, Option<SocketAddr>)>,
    pub actors: Vec<(ActorId, String)>,
}

impl Decoded {
    /// Nothing to count: the value held no ref and no handle.
    pub(crate) fn is_empty(&self) -> bool {
        self.refs.is_empty() && self.actors.is_empty()
    }
}

struct Encoding {
    addrs: &'static Addrs,
    found: Found,
}

thread_local! {
    static ENCODING: RefCell<Option<Encoding>> = const { RefCell::new(None) };
    /// What a task's arguments hold so far (between `begin_args` and `end_args`).
    static ARGS: RefCell<Option<Exports>> = const { RefCell::new(None) };
    static DECODING: RefCell<Option<Decoded>> = const { RefCell::new(None) };
}

/// Runs `f` (an encode) and returns what it met; refs carry their owners' addresses from
/// `addrs`. An outer context (a `put` inside a `Serialize` impl, say) is restored after.
pub(crate) fn encoding<R>(addrs: &'static Addrs, f: impl FnOnce() -> R) -> (R, Found) {
    let outer = ENCODING.with(|e| e.borrow_mut().replace(Encoding { addrs, found: Found::default() }));
    let r = f();
    let mine = ENCODING.with(|e| std::mem::replace(&mut *e.borrow_mut(), outer));
    (r, mine.map(|e| e.found).unwrap_or_default())
}

/// A ref is being encoded: recorded, and the owner address it carries returned.
pub(crate) fn encoding_ref(id: ObjectId) -> Option<SocketAddr> {
    ENCODING.with(|e| {
        let mut e = e.borrow_mut();
        let e = e.as_mut()?;
        e.found.refs.push(id);
        e.addrs.for_ref(id.owner())
    })
}

/// An actor handle is being encoded: recorded.
pub(crate) fn encoding_actor(id: ActorId, label: &str) {
    ENCODING.with(|e| {
        if let Some(e) = e.borrow_mut().as_mut() {
            e.found.actors.push((id, label.to_string()));
        }
    })
}

/// Starts collecting what a task's arguments hold (generated code, before it encodes them).
pub(crate) fn begin_args() {
    ARGS.with(|a| *a.borrow_mut() = Some(Exports::default()));
}

/// Whether a task's arguments are being collected on this thread.
pub(crate) fn args_open() -> bool {
    ARGS.with(|a| a.borrow().is_some())
}

/// Adds what one argument holds (already held for the task).
pub(crate) fn add_args(held: Exports) {
    ARGS.with(|a| {
        if let Some(x) = a.borrow_mut().as_mut() {
            x.refs.extend(held.refs);
            x.actors.extend(held.actors);
        }
    })
}

/// What the task's arguments hold, since [`begin_args`].
pub(crate) fn end_args() -> Exports {
    ARGS.with(|a| a.borrow_mut().take().unwrap_or_default())
}

/// Runs `f` (a decode) and returns the handles it made that are still alive, for the table
/// to count.
#[inline]
pub(crate) fn decoding<R>(f: impl FnOnce() -> R) -> (R, Decoded) {
    let outer = DECODING.with(|d| d.borrow_mut().replace(Decoded::default()));
    let r = f();
    let made = DECODING.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer)).unwrap_or_default();
    (r, made)
}

/// A ref was decoded; `owner` is where its owner listens on TCP. True if a [`decoding`]
/// context took it (to be counted after); false if there is none (the handle counts itself).
pub(crate) fn decoded_ref(id: ObjectId, owner: Option<SocketAddr>) -> bool {
    DECODING.with(|d| match d.borrow_mut().as_mut() {
        Some(d) => {
            d.refs.push((id, owner));
            true
        }
        None => false,
    })
}

/// An actor handle was decoded; as [`decoded_ref`].
pub(crate) fn decoded_actor(id: ActorId, label: &str) -> bool {
    DECODING.with(|d| match d.borrow_mut().as_mut() {
        Some(d) => {
            d.actors.push((id, label.to_string()));
            true
        }
        None => false,
    })
}

/// A ref handle is being dropped: true if it was one the current decode made and has not yet
/// been counted (it is then simply not counted).
pub(crate) fn dropped_while_decoding(id: ObjectId) -> bool {
    DECODING.with(|d| {
        let mut d = d.borrow_mut();
        let Some(d) = d.as_mut() else { return false };
        match d.refs.iter().rposition(|(r, _)| *r == id) {
            Some(i) => {
                d.refs.swap_remove(i);
                true
            }
            None => false,
        }
    })
}

/// An actor handle is being dropped; as [`dropped_while_decoding`].
pub(crate) fn actor_dropped_while_decoding(id: ActorId) -> bool {
    DECODING.with(|d| {
        let mut d = d.borrow_mut();
        let Some(d) = d.as_mut() else { return false };
        match d.actors.iter().rposition(|(a, _)| *a == id) {
            Some(i) => {
                d.actors.swap_remove(i);
                true
            }
            None => false,
        }
    })
}
