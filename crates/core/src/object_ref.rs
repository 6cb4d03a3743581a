//! `ObjectRef<T>`: a typed handle of an object, counted in the owner table of its process
//! (a clone is one more handle, a drop one less), which travels inside values as a ref, and
//! which is a future of the object's value.

use crate::error::Result;
use crate::refs;
use crate::runtime::{runtime, try_runtime};
use ferry_proto::msg::RefWire;
use ferry_proto::ObjectId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

/// An untyped handle that keeps its object alive in the owner's table.
pub(crate) struct RawRef {
    id: ObjectId,
}

impl RawRef {
    pub(crate) fn id(&self) -> ObjectId {
        self.id
    }
}

impl Clone for RawRef {
    fn clone(&self) -> Self {
        if let Some(rt) = try_runtime() {
            rt.lock().add_local_ref(self.id);
        }
        RawRef { id: self.id }
    }
}

impl Drop for RawRef {
    fn drop(&mut self) {
        if refs::dropped_while_decoding(self.id) {
            return;
        }
        if let Some(rt) = try_runtime() {
            let id = self.id;
            rt.with_state(|st, fx| st.remove_local_ref(id, fx));
        }
    }
}

/// A typed future for an object: the return of a remote function or a `put`. It is ready
/// when the object is, and keeps the object alive while it exists.
///
/// ```no_run
/// # fn f() -> ferry_core::Result<()> {
/// let r = ferry_core::put(41u64)?;
/// assert_eq!(ferry_core::get(&r)?, 41);
/// # Ok(()) }
/// ```
pub struct ObjectRef<T> {
    raw: RawRef,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    /// Wraps a handle the table already counts.
    pub(crate) fn from_id(id: ObjectId) -> Self {
        ObjectRef { raw: RawRef { id }, _t: PhantomData }
    }
    /// The object's id (which names its owner).
    pub fn id(&self) -> ObjectId {
        self.raw.id
    }

    /// One more untyped handle of the object.
    pub(crate) fn raw(&self) -> RawRef {
        self.raw.clone()
    }

    /// The untyped handle.
    pub(crate) fn into_raw(self) -> RawRef {
        self.raw
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef { raw: self.raw.clone(), _t: PhantomData }
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef<{}>({:?})", std::any::type_name::<T>(), self.raw.id)
    }
}

/// A ref inside a value (`Vec<ObjectRef<T>>`, a struct field, a map) travels as a ref: the
/// process that decodes it becomes a borrower, and the object stays alive while any process
/// holds it. To pass a ref to a task without resolving it, make the parameter an
/// `ObjectRef<T>`; a `T` parameter receives the value.
/// A ref travels as its id and, in a cluster, its owner's TCP address, so that a process on
/// any node can reach the owner.
impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let owner = refs::encoding_ref(self.raw.id);
        RefWire { id: self.raw.id, owner }.serialize(s)
    }
}

impl<'de, T> serde::Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let RefWire { id, owner } = RefWire::deserialize(d)?;
        if !refs::decoded_ref(id, owner) {
            // Decoded outside ferry's own decoding: the handle counts itself, as a clone does.
            if let Some(rt) = try_runtime() {
                rt.adopt(refs::Decoded { refs: vec![(id, owner)], actors: Vec::new() });
            }
        }
        Ok(ObjectRef::from_id(id))
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw.id == other.raw.id
    }
}
impl<T> Eq for ObjectRef<T> {}
impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.raw.id.hash(state)
    }
}

/// A future of an object's value: `ferry::get_async(&r).await` or `r.await`.
pub struct GetFuture<T> {
    id: ObjectId,
    _hold: Option<RawRef>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + 'static> Future for GetFuture<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return Poll::Ready(Err(e)),
        };
        rt.poll_get(self.id, cx.waker())
    }
}

/// Waits for an object without blocking a thread.
pub fn get_async<T: DeserializeOwned + 'static>(r: &ObjectRef<T>) -> GetFuture<T> {
    GetFuture { id: r.id(), _hold: Some(r.raw.clone()), _t: PhantomData }
}

impl<T: DeserializeOwned + 'static> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = GetFuture<T>;
    fn into_future(self) -> GetFuture<T> {
        GetFuture { id: self.raw.id, _hold: Some(self.raw), _t: PhantomData }
    }
}

impl<T: DeserializeOwned + 'static> IntoFuture for &ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = GetFuture<T>;
    fn into_future(self) -> GetFuture<T> {
        get_async(self)
    }
}
