//! The arena as a process sees it: one file in the store directory, mapped once, whose
//! pages are reused for object after object.
//!
//! Writing a large object into a fresh file costs a page fault and a zeroed page per 4 KiB;
//! writing it into pages this process has mapped before costs a `memcpy`. So the daemon hands
//! out extents of one arena file ([`crate::ObjectTable`] keeps which are free, in its own
//! memory), and every process maps the whole file once and keeps the mapping.
//!
//! Reuse is safe because extents are pinned: the daemon counts, per connection, the views a
//! process holds of each extent, and an extent goes back to the free list only when its object
//! is freed *and* no process pins it (a process that dies drops its pins with its connection).
//! In a process a [`Held`] is one pin: views share it, and its drop queues the unpin.
//!
//! **Invariants:** a process writes only extents the daemon created for it and not yet
//! sealed; the bytes under a live [`Held`] of a sealed object never change.

use crate::ObjectView;
use ferry_types::sync::MutexExt;
use ferry_types::ObjectId;
use memmap2::MmapRaw;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The arena file's name in the store directory.
pub const ARENA_FILE: &str = "arena";

/// A process's pages are populated in chunks of this size (one bit each).
const CHUNK: u64 = 2 << 20;

type Release = Box<dyn Fn(u64) + Send + Sync>;

/// The arena mapped in this process.
pub struct Arena {
    map: MmapRaw,
    size: u64,
    /// Chunks whose pages this process has populated since the daemon last gave pages back
    /// (`epoch`): writing there needs no page faults.
    touched: Mutex<(u64, Vec<u64>)>,
    /// Tells the daemon an extent is no longer pinned by this process (set by the runtime:
    /// this crate knows nothing of connections).
    release: OnceLock<Release>,
    /// The live pins of objects in this process: a second view of an object shares the first
    /// one's pin, with no request to the daemon.
    views: Mutex<HashMap<ObjectId, Weak<Held>>>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} MiB)", self.size >> 20)
    }
}

/// Creates the arena file (the daemon, once, in its private store directory): never an
/// existing file, never through a link. Sparse: pages are allocated as they are first written.
pub fn create_file(dir: &Path, size: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(dir.join(ARENA_FILE))?;
    f.set_len(size)?;
    Ok(f)
}

impl Arena {
    /// Maps the arena of the store in `dir` (a process of the node). The file must be a
    /// regular file of this user, private to it: the daemon made it so.
    pub fn open(dir: &Path) -> io::Result<Arc<Arena>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join(ARENA_FILE))?;
        let m = f.metadata()?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !m.file_type().is_file() || m.uid() != me || m.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is not a private file of this user", dir.join(ARENA_FILE).display()),
            ));
        }
        let size = m.len();
        let map = memmap2::MmapOptions::new().map_raw(&f)?;
        // Hugepages where the host gives them to shared memory (a no-op elsewhere).
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(Arc::new(Arena {
            map,
            size,
            touched: Mutex::new((0, vec![0; size.div_ceil(CHUNK).div_ceil(64) as usize])),
            release: OnceLock::new(),
            views: Mutex::new(HashMap::new()),
        }))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Sets what tells the daemon that this process no longer pins an extent. It must not
    /// block (views are dropped anywhere, locks held): queue, send later.
    pub fn set_release(&self, f: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.release.set(Box::new(f));
    }

    /// A view of object `id` this process pins already, if any.
    pub fn cached(&self, id: ObjectId) -> Option<ObjectView> {
        self.views.locked().get(&id).and_then(Weak::upgrade).map(ObjectView::arena)
    }

    /// A pin the daemon just gave this process: `len` bytes at `at`, of object `id` (or of
    /// a buffer not yet an object). Fails if the extent is not inside the arena.
    pub fn hold(self: &Arc<Self>, at: u64, len: u64, id: Option<ObjectId>) -> io::Result<Arc<Held>> {
        if at.checked_add(len).is_none_or(|end| end > self.size) {
            if let Some(f) = self.release.get() {
                f(at);
            }
            return Err(io::Error::other(format!("extent {at}+{len} is outside the arena of {} bytes", self.size)));
        }
        let h = Arc::new(Held { arena: self.clone(), at, len: len as usize, id: OnceLock::new() });
        if let Some(id) = id {
            let _ = h.id.set(id);
            self.views.locked().insert(id, Arc::downgrade(&h));
        }
        Ok(h)
    }

    /// Readies `len` bytes at `at` for writing: the pages this process has not touched yet are
    /// populated in one call (the kernel allocates them now, or says there is no room, where
    /// a page fault would raise SIGBUS). `epoch` is the daemon's count of times it gave pages
    /// back: what this process populated before that may be gone.
    pub fn prepare(&self, at: u64, len: u64, epoch: u64) -> io::Result<()> {
        let (first, last) = (at / CHUNK, (at + len.max(1) - 1) / CHUNK);
        {
            let mut t = self.touched.locked();
            if t.0 != epoch {
                t.0 = epoch;
                t.1.iter_mut().for_each(|w| *w = 0);
            }
            if (first..=last).all(|c| t.1[(c / 64) as usize] & (1 << (c % 64)) != 0) {
                return Ok(());
            }
        }
        // Whole chunks, so that the next write anywhere in them needs no call: pages of
        // neighbouring extents are faulted in too (no byte changes).
        let start = first * CHUNK;
        let end = ((last + 1) * CHUNK).min(self.size);
        // SAFETY: the range lies inside our mapping; MADV_POPULATE_WRITE only faults pages
        // in, it changes no byte.
        let r = unsafe {
            libc::madvise(
                self.map.as_mut_ptr().add(start as usize).cast(),
                (end - start) as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            // Kernels before 5.14 lack it: the pages fault in as they are written.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        let mut t = self.touched.locked();
        if t.0 == epoch {
            for c in first..=last {
                t.1[(c / 64) as usize] |= 1 << (c % 64);
            }
        }
        Ok(())
    }
}

/// One pin of an extent by this process; dropped when the last view of it goes.
pub struct Held {
    arena: Arc<Arena>,
    at: u64,
    len: usize,
    id: OnceLock<ObjectId>,
}

impl Held {
    /// Where the extent starts in the arena.
    pub fn at(&self) -> u64 {
        self.at
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `hold` checked the range lies inside the mapping, which lives as long as
        // the arena we keep; the pin keeps anyone else from writing it (see the invariants).
        unsafe { std::slice::from_raw_parts(self.arena.map.as_ptr().add(self.at as usize), self.len) }
    }

    /// The extent's bytes, writable.
    ///
    /// # Safety
    /// Only for the process the daemon created the extent for, before it is sealed, and with
    /// no other reference to these bytes alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: inside the mapping (checked by `hold`); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.arena.map.as_mut_ptr().add(self.at as usize), self.len) }
    }

    /// Readies the extent for writing (see [`Arena::prepare`]).
    pub fn prepare(&self, epoch: u64) -> io::Result<()> {
        self.arena.prepare(self.at, self.len as u64, epoch)
    }

    /// The object it holds, if it is known to hold one.
    pub fn object(&self) -> Option<ObjectId> {
        self.id.get().copied()
    }

    /// Records this pin as object `id`'s (a buffer built in place that became one).
    pub fn name(self: &Arc<Self>, id: ObjectId) {
        if self.id.set(id).is_ok() {
            self.arena.views.locked().insert(id, Arc::downgrade(self));
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(&id) = self.id.get() {
            let mut v = self.arena.views.locked();
            if v.get(&id).is_some_and(|w| std::ptr::eq(w.as_ptr(), self)) {
                v.remove(&id);
            }
        }
        if let Some(f) = self.arena.release.get() {
            f(self.at);
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({}+{})", self.at, self.len)
    }
}

/// Copies `src` into `dst` (of the same length). Large copies are split over up to four
/// threads, as Ray's parallel memcopy does: one core does not saturate the memory bus (on
/// this machine two threads copy 100 MiB about 15% faster than one).
pub fn copy_in(dst: &mut [u8], src: &[u8]) {
    const PARALLEL_FROM: usize = 16 << 20;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    if src.len() < PARALLEL_FROM || threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    // Pieces on page boundaries, so no two threads fault the same page.
    let piece = src.len().div_ceil(threads).next_multiple_of(crate::extents::PAGE as usize);
    std::thread::scope(|s| {
        let mut pieces = dst.chunks_mut(piece).zip(src.chunks(piece));
        let first = pieces.next();
        for (d, x) in pieces {
            s.spawn(move || d.copy_from_slice(x));
        }
        if let Some((d, x)) = first {
            d.copy_from_slice(x);
        }
    });
}
