//! [`Bytes`]: an immutable byte buffer that can be a view of a stored object.
//!
//! `Bytes` encodes exactly like `Vec<u8>` (a length, then the bytes), so the two are
//! interchangeable on the wire. Decoded from the store (by `get`, or as a task argument) it
//! is a view of the shared-memory mapping: no copy, however large.

use ferry_store::ObjectView;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::sync::Arc;

/// Immutable bytes: owned, or a zero-copy view of an object in the store.
#[derive(Clone)]
pub struct Bytes {
    inner: Inner,
    start: usize,
}

#[derive(Clone)]
enum Inner {
    Inline(Arc<Vec<u8>>),
    Mapped(ObjectView),
}

impl Bytes {
    pub(crate) fn inline(buf: Arc<Vec<u8>>, start: usize) -> Bytes {
        Bytes { inner: Inner::Inline(buf), start }
    }
    pub(crate) fn mapped(view: ObjectView, start: usize) -> Bytes {
        Bytes { inner: Inner::Mapped(view), start }
    }
    /// Whether these bytes are a view of the shared-memory store (not a private copy).
    pub fn is_shared_memory(&self) -> bool {
        matches!(self.inner, Inner::Mapped(_))
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes::inline(Arc::new(v), 0)
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.inner {
            Inner::Inline(v) => &v[self.start..],
            Inner::Mapped(m) => &m[self.start..],
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes{})", self.len(), if self.is_shared_memory() { ", shared memory" } else { "" })
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(v.to_vec().into())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(v.into())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(v.into())
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Value types whose encoding is a byte vector: [`crate::get_bytes`] views them in place.
pub trait ByteValue: sealed::Sealed {}
impl ByteValue for Vec<u8> {}
impl ByteValue for Bytes {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for Vec<u8> {}
    impl Sealed for super::Bytes {}
}

/// One task argument as the worker holds it: its encoded bytes and, for a stored object,
/// the mapping they live in (so a `Bytes` parameter can keep a view instead of copying).
#[doc(hidden)]
pub struct ArgData<'a> {
    pub bytes: &'a [u8],
    pub view: Option<&'a ObjectView>,
}
