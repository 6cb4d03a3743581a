//! Refs inside values: what encoding and decoding an `ObjectRef` (or an actor handle) does
//! to the process's table, and the thread-local context that says why a value is being
//! encoded.
//!
//! Encoding a ref records it in the current context, which decides how it is held while the
//! value travels: in a task's arguments the task holds it until it is over (`submitted`); in
//! a `put` value the new object pins it; in a task's return value the worker registers the
//! caller as a borrower before replying (`Runtime::returning`). Outside any context (a user
//! encoding a ref with their own serde format) a ref is only its id, and holds nothing.
//!
//! Decoding a ref adds a local handle, creating a borrowed entry if the process has none;
//! `get` collects the new entries and registers them with their owners before it returns.

use crate::owner::Exports;
use crate::runtime::try_runtime;
use ferry_proto::msg::ActorId;
use ferry_proto::ObjectId;
use std::cell::RefCell;

/// Why values are being encoded on this thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mode {
    /// A task's arguments: refs and actor handles are held until the task is over.
    Args,
    /// A `put` value: the new object pins its refs.
    Put,
    /// A task's return value: refs are registered for the caller before the reply.
    Return,
}

thread_local! {
    static ENCODING: RefCell<Option<(Mode, Exports)>> = const { RefCell::new(None) };
    /// Borrowed entries created by decoding on this thread, while collecting.
    static DECODED: RefCell<Option<Vec<ObjectId>>> = const { RefCell::new(None) };
}

/// Starts collecting what gets encoded on this thread (for a task's arguments, which the
/// generated code encodes one by one before calling `submit`).
pub(crate) fn begin(mode: Mode) {
    ENCODING.with(|e| *e.borrow_mut() = Some((mode, Exports::default())));
}

/// What was encoded since [`begin`].
pub(crate) fn end() -> Exports {
    ENCODING.with(|e| e.borrow_mut().take().map(|(_, x)| x).unwrap_or_default())
}

/// Runs `f` (an encode) in `mode` and returns what it encoded; an outer context (a `put`
/// inside a `Serialize` impl, say) is restored after.
pub(crate) fn encoding<R>(mode: Mode, f: impl FnOnce() -> R) -> (R, Exports) {
    let outer = ENCODING.with(|e| e.borrow_mut().replace((mode, Exports::default())));
    let r = f();
    let mine = ENCODING.with(|e| std::mem::replace(&mut *e.borrow_mut(), outer));
    (r, mine.map(|(_, x)| x).unwrap_or_default())
}

/// Called when a ref is encoded: holds it as the context says.
pub(crate) fn encoding_ref(id: ObjectId) {
    let mode = ENCODING.with(|e| e.borrow().as_ref().map(|(m, _)| *m));
    let Some(mode) = mode else { return };
    let held = match (mode, try_runtime()) {
        (Mode::Args, Some(rt)) => rt.lock().pin_for_task(id),
        (Mode::Put, Some(rt)) => rt.lock().pin(id),
        (Mode::Return, _) => true,
        (_, None) => false,
    };
    if held {
        ENCODING.with(|e| {
            if let Some((_, x)) = e.borrow_mut().as_mut() {
                x.refs.push(id);
            }
        });
    }
}

/// Called when an actor handle is encoded; true if the task or value will hold it (the
/// caller then takes one more handle for it). In a return value it is recorded with its label,
/// and the worker has the daemon count the caller as a holder before replying.
pub(crate) fn encoding_actor(id: ActorId, label: &str) -> bool {
    ENCODING.with(|e| match e.borrow_mut().as_mut() {
        Some((Mode::Args | Mode::Put, x)) => {
            x.actors.push(id);
            true
        }
        Some((Mode::Return, x)) => {
            x.returned_actors.push((id, label.to_string()));
            false
        }
        None => false,
    })
}

/// The TCP address of `id`'s owner, to travel with the ref (`None` off a cluster).
pub(crate) fn owner_addr(id: ObjectId) -> Option<std::net::SocketAddr> {
    try_runtime().filter(|rt| rt.my_tcp.is_some()).and_then(|rt| rt.tcp_addr_of(id.owner()))
}

/// Called when a ref is decoded; `owner` is where its owner listens on TCP.
pub(crate) fn decoded_ref(id: ObjectId, owner: Option<std::net::SocketAddr>) {
    let Some(rt) = try_runtime() else { return };
    if let Some(a) = owner {
        rt.learn_addr(id.owner(), a);
    }
    if rt.lock().decode_ref(id) {
        DECODED.with(|d| {
            if let Some(v) = d.borrow_mut().as_mut() {
                v.push(id);
            }
        });
    }
}

/// Runs `f` (a decode) and returns the borrowed entries it created.
pub(crate) fn decoding<R>(f: impl FnOnce() -> R) -> (R, Vec<ObjectId>) {
    let outer = DECODED.with(|d| d.borrow_mut().replace(Vec::new()));
    let r = f();
    let new = DECODED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer)).unwrap_or_default();
    (r, new)
}
