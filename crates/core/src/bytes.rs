//! [`Bytes`]: an immutable byte buffer that can be a view of a stored object.
//!
//! `Bytes` encodes exactly like `Vec<u8>` (a length, then the bytes), so the two are
//! interchangeable on the wire. Decoded from the store (by `get`, or as a task argument) it
//! is a view of the shared-memory mapping: no copy, however large.

use ferry_store::{Held, ObjectView, StagedFile};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::path::{Path, PathBuf};
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
    /// Built in a file of the store by a [`BytesMut`]: `put` or a task return adopts the file.
    Staged(Arc<Staged>),
    /// Built in an extent of the arena by a [`BytesMut`]: `put` or a task return seals it.
    Built(Arc<Held>),
}

/// Where a frozen [`BytesMut`] was built.
pub(crate) enum StagedSrc<'a> {
    File(&'a Path),
    Arena(&'a Arc<Held>),
}

/// A frozen staged file: read-only now; its temporary name goes with the last `Bytes`.
struct Staged {
    map: ferry_store::Mmap,
    path: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Objects adopted from it are hard links and stay.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Bytes {
    pub(crate) fn inline(buf: Arc<Vec<u8>>, start: usize) -> Bytes {
        Bytes { inner: Inner::Inline(buf), start }
    }
    pub(crate) fn mapped(view: ObjectView, start: usize) -> Bytes {
        Bytes { inner: Inner::Mapped(view), start }
    }
    /// A private copy. Large copies ask for transparent hugepages where the host offers them
    /// (as numpy does for its arrays): a fresh 100 MiB vector then costs 50 page faults
    /// instead of 25,600, several times faster.
    pub fn to_vec(&self) -> Vec<u8> {
        copy_out(self)
    }

    /// Whether these bytes are a view of the shared-memory store (not a private copy).
    pub fn is_shared_memory(&self) -> bool {
        matches!(self.inner, Inner::Mapped(_) | Inner::Staged(_) | Inner::Built(_))
    }

    /// For bytes built by a [`BytesMut`]: where, and all its bytes (header included).
    pub(crate) fn staged(&self) -> Option<(StagedSrc<'_>, &[u8])> {
        match &self.inner {
            Inner::Staged(s) => Some((StagedSrc::File(&s.path), &s.map[..])),
            Inner::Built(h) => Some((StagedSrc::Arena(h), h.bytes())),
            _ => None,
        }
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
            Inner::Staged(s) => &s.map[self.start..],
            Inner::Built(h) => &h.bytes()[self.start..],
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

/// A byte buffer allocated in the node's shared-memory store. Fill it in place, then
/// [`freeze`](BytesMut::freeze) it: returning the `Bytes` from a task or `put`ting it makes the
/// buffer itself the object, with no copy (a large `Vec<u8>` is copied into the store instead).
///
/// ```no_run
/// # fn f() -> ferry_core::Result<()> {
/// let mut b = ferry_core::BytesMut::zeroed(100 << 20)?;
/// b.fill(7);
/// let r = ferry_core::put(b.freeze())?;
/// # Ok(()) }
/// ```
pub struct BytesMut {
    buf: Option<Buf>,
    start: usize,
}

enum Buf {
    /// An extent of the arena, created for this buffer alone.
    Arena(Arc<Held>),
    /// A file of its own (no arena here, or no extent large enough).
    File(StagedFile),
}

impl BytesMut {
    /// `len` zero bytes in the store.
    pub fn zeroed(len: usize) -> crate::Result<BytesMut> {
        let rt = crate::runtime::runtime()?;
        let header = postcard::to_allocvec(&len).map_err(|e| crate::Error::Serialization { detail: e.to_string() })?;
        let mut b = BytesMut {
            buf: Some(match rt.stage((header.len() + len) as u64)? {
                crate::runtime::Staged::Arena(h) => Buf::Arena(h),
                crate::runtime::Staged::File(f) => Buf::File(f),
            }),
            start: header.len(),
        };
        let all = b.all_mut();
        all[..header.len()].copy_from_slice(&header);
        if matches!(b.buf, Some(Buf::Arena(_))) {
            // A reused extent holds an earlier object's bytes (a new file is zero already).
            b.all_mut()[header.len()..].fill(0);
        }
        Ok(b)
    }

    fn all_mut(&mut self) -> &mut [u8] {
        match self.buf.as_mut().expect("a BytesMut holds its buffer until frozen or dropped") {
            Buf::File(f) => &mut f.map[..],
            // SAFETY: the extent was created for this buffer, is not sealed, and its only
            // handle is ours (`&mut self`) until `freeze`.
            Buf::Arena(h) => unsafe { h.bytes_mut() },
        }
    }

    /// Makes the bytes immutable, without copying them.
    pub fn freeze(mut self) -> Bytes {
        let start = self.start;
        match self.buf.take().expect("a BytesMut holds its buffer until frozen or dropped") {
            Buf::Arena(h) => Bytes { inner: Inner::Built(h), start },
            Buf::File(f) => match f.map.make_read_only() {
                Ok(map) => Bytes { inner: Inner::Staged(Arc::new(Staged { map, path: f.path })), start },
                // Cannot happen on Linux for a mapping we own; fall back to a private copy.
                Err(_) => {
                    let bytes = Bytes::from(Vec::new());
                    let _ = std::fs::remove_file(&f.path);
                    bytes
                }
            },
        }
    }
}

impl std::ops::Deref for BytesMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self.buf.as_ref().expect("live") {
            Buf::File(f) => &f.map[self.start..],
            Buf::Arena(h) => &h.bytes()[self.start..],
        }
    }
}

impl std::ops::DerefMut for BytesMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        let start = self.start;
        &mut self.all_mut()[start..]
    }
}

impl Drop for BytesMut {
    fn drop(&mut self) {
        // An extent goes back when its pin does; a file is deleted.
        if let Some(Buf::File(f)) = self.buf.take() {
            let _ = std::fs::remove_file(&f.path);
        }
    }
}

impl std::fmt::Debug for BytesMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BytesMut({} bytes in the store)", self.len())
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

/// Copies `src` into a new vector; one of 4 MiB or more is advised to use hugepages.
pub(crate) fn copy_out(src: &[u8]) -> Vec<u8> {
    const HUGE: usize = 2 << 20;
    if src.len() < 2 * HUGE {
        return src.to_vec();
    }
    let mut v: Vec<u8> = Vec::with_capacity(src.len());
    let p = v.as_mut_ptr() as usize;
    let (start, end) = (p.next_multiple_of(HUGE), (p + src.len()) / HUGE * HUGE);
    if end > start {
        // SAFETY: advice on whole hugepages inside our own allocation, before any byte of it
        // is touched; it changes no data, and a host without hugepages ignores it.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    v.extend_from_slice(src);
    v
}
