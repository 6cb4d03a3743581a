//! The shared-memory object store of one node.
//!
//! The store lives on a tmpfs (`/dev/shm`), so its files' pages *are* shared memory. Large
//! objects go into extents of one **arena** file that every process of the node maps once
//! ([`arena`]): the daemon allocates extents from its own memory ([`ObjectTable`]), a producer
//! writes into pages it has mapped before (a `memcpy`, no page faults), then seals, and any
//! process reads a sealed object through its mapping, without a copy. Extents are reused once
//! freed and unpinned (readers pin what they view; a process's pins die with it). An object no
//! free extent can hold (fragmentation, or the arena off) gets a file of its own, as every
//! object did before the arena: written under a temporary name, then renamed, so a reader never
//! sees half of one.
//!
//! Writers and readers are any process; the [`ObjectTable`] (accounting, capacity, freeing,
//! pins) belongs to the node daemon alone.
//!
//! Spilling: when the store is over its capacity the daemon copies its oldest objects to a
//! spill directory on disk and frees their memory. A reader that finds an object spilled
//! maps the spilled file instead, so a spilled object is read back on demand by the kernel
//! (the page cache is its restored copy, reclaimable at any time) rather than copied back
//! into a store that is, by definition, short of room.
//!
//! **Architecture Invariant:** this crate knows nothing of the network or of owners; it
//! stores, maps and deletes bytes named by [`ObjectId`].

pub mod arena;
pub mod extents;
mod table;

pub use arena::{Arena, Held};
pub use table::{ArenaStats, Created, Holder, ObjectTable, Place, StoredObject, DAEMON};

use ferry_types::ObjectId;
pub use memmap2::Mmap;
use memmap2::MmapMut;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A node's store directory.
#[derive(Clone, Debug)]
pub struct StoreDir {
    path: PathBuf,
    /// Where spilled objects go (on disk), if spilling is on.
    spill: Option<PathBuf>,
}

impl StoreDir {
    /// Creates the directory (mode 0700: objects are private to the cluster's user).
    pub fn create(path: impl Into<PathBuf>) -> io::Result<StoreDir> {
        let path = path.into();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&path)?;
        Ok(StoreDir { path, spill: None })
    }

    /// Opens an existing directory (in worker and driver processes).
    pub fn open(path: impl Into<PathBuf>) -> StoreDir {
        StoreDir { path: path.into(), spill: None }
    }

    /// The same store, with spilled objects in `spill` (created if needed by the daemon).
    pub fn with_spill(mut self, spill: impl Into<PathBuf>) -> StoreDir {
        self.spill = Some(spill.into());
        self
    }

    pub fn spill_dir(&self) -> Option<&Path> {
        self.spill.as_deref()
    }

    fn spill_path_of(&self, id: ObjectId) -> Option<PathBuf> {
        self.spill.as_ref().map(|d| d.join(id.to_string()))
    }

    /// Copies `id` to the spill directory (under a temporary name, renamed when complete)
    /// and asks the kernel to drop the copy's pages from its cache: from its own file, or
    /// with `from`, `len` bytes at an offset of the arena. The memory copy is left for the
    /// caller to free.
    pub fn spill_from(&self, id: ObjectId, from: Option<(&File, u64, u64)>) -> io::Result<u64> {
        match from {
            None => self.spill(id),
            Some((arena, at, len)) => self.spill_with(id, |dst| {
                copy_range(arena, at, dst, len)?;
                Ok(len)
            }),
        }
    }

    /// [`StoreDir::spill_from`] an object's own file.
    pub fn spill(&self, id: ObjectId) -> io::Result<u64> {
        let src = self.path_of(id);
        self.spill_with(id, |dst| io::copy(&mut File::open(&src)?, dst))
    }

    fn spill_with(&self, id: ObjectId, copy: impl FnOnce(&mut File) -> io::Result<u64>) -> io::Result<u64> {
        let dir = self.spill.as_ref().ok_or_else(|| io::Error::other("spilling is off"))?;
        let fin = dir.join(id.to_string());
        let tmp = dir.join(format!("{id}.tmp"));
        let res = (|| {
            // A leftover of an earlier attempt goes; then a new file, never through a link.
            let _ = fs::remove_file(&tmp);
            let mut dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&tmp)?;
            // Between files `io::copy` and `copy_range` use copy_file_range/sendfile: no
            // user-space copy.
            let n = copy(&mut dst)?;
            dst.sync_data()?;
            fs::rename(&tmp, &fin)?;
            // Written and on disk: its pages need not stay in memory.
            use std::os::fd::AsRawFd;
            // SAFETY: advisory call on a file descriptor we own.
            unsafe { libc::posix_fadvise(dst.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            Ok(n)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes free for this user on the store's filesystem.
    pub fn free_space(&self) -> io::Result<u64> {
        free_space(&self.path)
    }

    /// The size of the store's filesystem.
    pub fn fs_size(&self) -> io::Result<u64> {
        statvfs(&self.path).map(|st| st.f_blocks * st.f_frsize)
    }

    /// The file that holds `id`.
    pub fn path_of(&self, id: ObjectId) -> PathBuf {
        self.path.join(id.to_string())
    }

    /// Writes an object from the concatenation of `parts` and makes it visible. Returns its
    /// size. Fails if the object already exists (objects are immutable).
    pub fn write_parts(&self, id: ObjectId, parts: &[&[u8]]) -> io::Result<u64> {
        let fin = self.path_of(id);
        let tmp = self.path.join(format!("{id}.tmp"));
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let size: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let res = (|| {
            for p in parts {
                f.write_all(p)?;
            }
            if fin.exists() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("object {id} already exists")));
            }
            fs::rename(&tmp, &fin)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map(|_| size)
    }

    /// Creates a writable file of `size` bytes in the store, not yet an object: the caller fills
    /// it in place, then [`StoreDir::adopt`]s it as an object (or drops it, deleting it).
    pub fn stage(&self, size: u64, tag: u64) -> io::Result<StagedFile> {
        let path = self.path.join(format!("staged-{}-{tag:016x}", std::process::id()));
        let f = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        // Allocated now, so a full tmpfs is an error here rather than a SIGBUS while the
        // caller writes through the mapping.
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a file descriptor we own.
        let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, size as libc::off_t) };
        if r != 0 {
            let _ = fs::remove_file(&path);
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: the file was just created by us under a unique name; until it is adopted
        // only this mapping writes it.
        // Populated at once: one kernel call instead of a page fault per 4 KiB as it is filled
        // (several times faster on a VM).
        let map = unsafe { memmap2::MmapOptions::new().populate().map_mut(&f) };
        match map {
            Ok(map) => Ok(StagedFile { path, map }),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Creates an empty file in the store, not yet an object, for a writer that fills it with
    /// `write`/`splice` rather than through a mapping; [`StoreDir::adopt`] it when complete.
    pub fn stage_file(&self, tag: u64) -> io::Result<(PathBuf, File)> {
        let path = self.path.join(format!("staged-{}-{tag:016x}", std::process::id()));
        let f = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        Ok((path, f))
    }

    /// Makes a staged file the object `id`, without copying (a hard link). Returns its size.
    pub fn adopt(&self, staged: &Path, id: ObjectId) -> io::Result<u64> {
        let fin = self.path_of(id);
        fs::hard_link(staged, &fin)?;
        Ok(fs::metadata(&fin)?.len())
    }

    /// Maps `id` read-only. The mapping stays valid even if the object is deleted meanwhile
    /// (the pages live until the last mapping goes).
    pub fn map(&self, id: ObjectId) -> io::Result<ObjectView> {
        let (f, spilled) = match File::open(self.path_of(id)) {
            Ok(f) => (f, false),
            // Spilled: read it from disk.
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.spill_path_of(id) {
                Some(p) => (File::open(p).map_err(|_| e)?, true),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len == 0 {
            return Ok(ObjectView { inner: View::Empty });
        }
        // SAFETY: store files are written once under a temporary name and renamed into
        // place; nobody writes to them afterwards, so the mapped bytes never change under us.
        let map = unsafe { Mmap::map(&f)? };
        if spilled {
            // Start reading it all from disk now, in large requests, rather than a page
            // fault at a time as the reader gets there.
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        Ok(ObjectView { inner: View::File(Arc::new(map)) })
    }

    /// Opens `id`'s file for reading, in memory or spilled.
    pub fn open_object(&self, id: ObjectId) -> io::Result<File> {
        match File::open(self.path_of(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.spill_path_of(id) {
                Some(p) => File::open(p).map_err(|_| e),
                None => Err(e),
            },
            r => r,
        }
    }

    /// Deletes `id`'s file; missing files are fine (already freed).
    pub fn remove(&self, id: ObjectId) -> io::Result<()> {
        match fs::remove_file(self.path_of(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes `id`'s spilled copy, if any.
    pub fn remove_spilled(&self, id: ObjectId) {
        if let Some(p) = self.spill_path_of(id) {
            let _ = fs::remove_file(p);
        }
    }

    /// Deletes the directory (and the spill directory) and everything in them.
    pub fn destroy(&self) {
        let _ = fs::remove_dir_all(&self.path);
        if let Some(s) = &self.spill {
            let _ = fs::remove_dir_all(s);
        }
    }
}

/// Copies `len` bytes at `at` of `src` to the current position of `dst`, in the kernel
/// (`sendfile` reads from any offset and writes to any file).
pub fn copy_range(src: &File, at: u64, dst: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut off = at as libc::off_t;
    let end = at + len;
    while (off as u64) < end {
        let want = ((end - off as u64) as usize).min(64 << 20);
        // SAFETY: both descriptors are open for the call; `off` is ours.
        let n = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut off, want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the arena is shorter than the extent"));
        }
    }
    Ok(())
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))?;
    // SAFETY: a zeroed statvfs is a valid value of a plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a struct statvfs fills.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Bytes free for this user on the filesystem of `path` (`statvfs`).
pub fn free_space(path: &Path) -> io::Result<u64> {
    statvfs(path).map(|st| st.f_bavail * st.f_frsize)
}

/// Whether an error is the filesystem being full.
pub fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

/// A file staged in the store by [`StoreDir::stage`], mapped for writing.
#[derive(Debug)]
pub struct StagedFile {
    pub path: PathBuf,
    pub map: MmapMut,
}

/// A read-only view of a stored object: its bytes in shared memory, without a copy.
/// Cloning shares the mapping (and the pin of an arena extent).
#[derive(Clone)]
pub struct ObjectView {
    inner: View,
}

#[derive(Clone)]
enum View {
    Empty,
    File(Arc<Mmap>),
    Arena(Arc<Held>),
}

impl ObjectView {
    /// A view of an extent of the arena, pinned by `held`.
    pub fn arena(held: Arc<Held>) -> ObjectView {
        ObjectView { inner: View::Arena(held) }
    }

    /// Whether it is a view of the arena (else of a file, or empty).
    pub fn in_arena(&self) -> bool {
        matches!(self.inner, View::Arena(_))
    }
}

impl Deref for ObjectView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.inner {
            View::Empty => &[],
            View::File(m) => m,
            View::Arena(h) => h.bytes(),
        }
    }
}

impl fmt::Debug for ObjectView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectView({} bytes{})", self.len(), if self.in_arena() { ", arena" } else { "" })
    }
}

/// Why the store refused an object.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// Storing `size` more bytes would exceed the capacity.
    Full { size: u64, used: u64, capacity: u64 },
    /// The object's file is not in the store directory.
    Missing(ObjectId),
    /// The writer named an extent it did not create for this object.
    BadExtent { id: ObjectId, at: u64 },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full { size, used, capacity } => write!(
                f,
                "object store full: {size} bytes requested, {used} of {capacity} bytes in use; \
                 drop references to large objects or raise Config::object_store_bytes"
            ),
            StoreError::Missing(id) => write!(f, "object {id} is not in the store"),
            StoreError::BadExtent { id, at } => write!(
                f,
                "object {id}: the extent at {at} is not one this process created and has not sealed yet (a bug \
                 in the writer: the object is not stored)"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
