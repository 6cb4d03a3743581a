//! The shared-memory object store of one node.
//!
//! Each large object is one file in the node's store directory, which lives on a tmpfs
//! (`/dev/shm`), so its pages *are* shared memory: the producing process writes the file,
//! any process on the node maps it read-only, and a `get` of bytes is a pointer into the
//! mapping. Files appear under their final name only when complete (written to a temporary
//! name, then renamed), so a reader never sees half an object.
//!
//! Writers and readers are any process; the [`ObjectTable`] (accounting, capacity, freeing)
//! belongs to the node daemon alone.
//!
//! Spilling: when the store is over its capacity the daemon copies its oldest objects to a
//! spill directory on disk and deletes their shared-memory files. A reader that finds no
//! file in the store maps the spilled file instead, so a spilled object is read back on
//! demand by the kernel (the page cache is its restored copy, reclaimable at any time)
//! rather than copied back into a store that is, by definition, short of room.
//!
//! **Architecture Invariant:** this crate knows nothing of the network or of owners; it
//! stores, maps and deletes bytes named by [`ObjectId`].

use ferry_types::ObjectId;
pub use memmap2::Mmap;
use memmap2::MmapMut;
use std::collections::HashMap;
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
    /// and asks the kernel to drop the copy's pages from its cache. The store's file is left
    /// for the caller to delete.
    pub fn spill(&self, id: ObjectId) -> io::Result<u64> {
        let dir = self.spill.as_ref().ok_or_else(|| io::Error::other("spilling is off"))?;
        let fin = dir.join(id.to_string());
        let tmp = dir.join(format!("{id}.tmp"));
        let res = (|| {
            let mut src = File::open(self.path_of(id))?;
            // A leftover of an earlier attempt goes; then a new file, never through a link.
            let _ = fs::remove_file(&tmp);
            let mut dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&tmp)?;
            // `io::copy` between files uses copy_file_range/sendfile: no user-space copy.
            let n = io::copy(&mut src, &mut dst)?;
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
            return Ok(ObjectView { map: None });
        }
        // SAFETY: store files are written once under a temporary name and renamed into
        // place; nobody writes to them afterwards, so the mapped bytes never change under us.
        let map = unsafe { Mmap::map(&f)? };
        if spilled {
            // Start reading it all from disk now, in large requests, rather than a page
            // fault at a time as the reader gets there.
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        Ok(ObjectView { map: Some(Arc::new(map)) })
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
/// Cloning shares the mapping.
#[derive(Clone)]
pub struct ObjectView {
    map: Option<Arc<Mmap>>,
}

impl Deref for ObjectView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.map {
            Some(m) => m,
            None => &[],
        }
    }
}

impl fmt::Debug for ObjectView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectView({} bytes)", self.len())
    }
}

/// Why the store refused an object.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// Storing `size` more bytes would exceed the capacity.
    Full { size: u64, used: u64, capacity: u64 },
    /// The object's file is not in the store directory.
    Missing(ObjectId),
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
        }
    }
}

/// The daemon's record of what its store holds.
///
/// Invariants: `used` is the sum of the sizes of the objects in memory and `spilled` of
/// those on disk; every entry has a file in one of the two places; `order` holds every
/// object in memory, oldest first, and `copies` every secondary copy (copied from another
/// node, which can give it again) in memory, oldest first (both may hold ids since freed or
/// spilled: skipped). Under pressure copies are dropped before primaries are spilled.
#[derive(Debug)]
pub struct ObjectTable {
    dir: StoreDir,
    objects: HashMap<ObjectId, Rec>,
    order: std::collections::VecDeque<ObjectId>,
    copies: std::collections::VecDeque<ObjectId>,
    used: u64,
    spilled: u64,
    capacity: u64,
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    size: u64,
    spilled: bool,
    /// A secondary copy: dropped, not spilled, when room is needed.
    copy: bool,
}

/// One object as the daemon lists it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredObject {
    pub id: ObjectId,
    pub size: u64,
    pub spilled: bool,
}

impl ObjectTable {
    pub fn new(dir: StoreDir, capacity: u64) -> ObjectTable {
        ObjectTable {
            dir,
            objects: HashMap::new(),
            order: Default::default(),
            copies: Default::default(),
            used: 0,
            spilled: 0,
            capacity,
        }
    }

    pub fn dir(&self) -> &StoreDir {
        &self.dir
    }

    /// Accounts for an object whose file a process has written. Without a spill directory
    /// an object that does not fit is deleted and refused; with one it is accepted, and the
    /// store may be over capacity until [`ObjectTable::next_to_spill`] has made room. The
    /// size is the file's: what the writer claims (`_claimed`) is not trusted.
    pub fn seal(&mut self, id: ObjectId, _claimed: u64) -> Result<(), StoreError> {
        let on_disk = fs::metadata(self.dir.path_of(id)).map(|m| m.len());
        let Ok(on_disk) = on_disk else {
            return Err(StoreError::Missing(id));
        };
        if self.objects.contains_key(&id) {
            return Ok(());
        }
        let size = on_disk;
        // Secondary copies make room first: their nodes can give them again.
        while self.used + size > self.capacity && self.drop_copy().is_some() {}
        if self.used + size > self.capacity && self.dir.spill.is_none() {
            let _ = self.dir.remove(id);
            return Err(StoreError::Full { size, used: self.used, capacity: self.capacity });
        }
        self.objects.insert(id, Rec { size, spilled: false, copy: false });
        self.order.push_back(id);
        self.used += size;
        Ok(())
    }

    /// [`ObjectTable::seal`] for a secondary copy of an object whose primary is on another
    /// node: under pressure it is dropped (a reader copies it again) rather than spilled.
    pub fn seal_copy(&mut self, id: ObjectId, claimed: u64) -> Result<(), StoreError> {
        let known = self.objects.contains_key(&id);
        self.seal(id, claimed)?;
        if !known {
            if let Some(r) = self.objects.get_mut(&id) {
                r.copy = true;
                self.copies.push_back(id);
            }
        }
        Ok(())
    }

    /// Drops the oldest secondary copy in memory; returns its id and size (`None`: there is
    /// none).
    pub fn drop_copy(&mut self) -> Option<(ObjectId, u64)> {
        while let Some(id) = self.copies.pop_front() {
            if let Some(size) = self.objects.get(&id).filter(|r| r.copy && !r.spilled).map(|r| r.size) {
                self.free(id);
                return Some((id, size));
            }
        }
        None
    }

    /// Whether more is in memory than the capacity allows.
    pub fn over_capacity(&self) -> bool {
        self.used > self.capacity
    }

    /// The oldest object in memory, to be spilled (it stays in memory, and counted, until
    /// [`ObjectTable::mark_spilled`]).
    pub fn next_to_spill(&mut self) -> Option<(ObjectId, u64)> {
        while let Some(id) = self.order.pop_front() {
            if let Some(r) = self.objects.get(&id) {
                if !r.spilled {
                    return Some((id, r.size));
                }
            }
        }
        None
    }

    /// `id` was copied to the spill directory: its memory copy is deleted. Returns false
    /// (and deletes the copy) if it was freed meanwhile.
    pub fn mark_spilled(&mut self, id: ObjectId) -> bool {
        match self.objects.get_mut(&id) {
            Some(r) if !r.spilled => {
                r.spilled = true;
                self.used -= r.size;
                self.spilled += r.size;
                let _ = self.dir.remove(id);
                true
            }
            Some(_) => true,
            None => {
                self.dir.remove_spilled(id);
                false
            }
        }
    }

    /// A spill of `id` failed: it stays in memory, first in line for the next attempt.
    pub fn spill_failed(&mut self, id: ObjectId) {
        if self.objects.get(&id).is_some_and(|r| !r.spilled) {
            self.order.push_front(id);
        }
    }

    /// Deletes an object. Returns whether it was known.
    pub fn free(&mut self, id: ObjectId) -> bool {
        let _ = self.dir.remove(id);
        match self.objects.remove(&id) {
            Some(r) if r.spilled => {
                self.dir.remove_spilled(id);
                self.spilled -= r.size;
                true
            }
            Some(r) => {
                self.used -= r.size;
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, id: ObjectId) -> bool {
        self.objects.contains_key(&id)
    }
    /// Bytes in memory.
    pub fn used_bytes(&self) -> u64 {
        self.used
    }
    /// Bytes spilled to disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled
    }
    pub fn spilled_objects(&self) -> usize {
        self.objects.values().filter(|r| r.spilled).count()
    }
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity
    }
    pub fn len(&self) -> usize {
        self.objects.len()
    }
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
    pub fn list(&self) -> Vec<StoredObject> {
        self.objects.iter().map(|(id, r)| StoredObject { id: *id, size: r.size, spilled: r.spilled }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::{TaskId, WorkerId};

    fn oid(seq: u64) -> ObjectId {
        ObjectId { task: TaskId { owner: WorkerId(7), seq }, index: 0 }
    }

    fn tmpdir(name: &str) -> StoreDir {
        let p = std::env::temp_dir().join(format!("ferry-store-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        StoreDir::create(p).unwrap()
    }

    #[test]
    fn write_map_free_accounting() {
        let dir = tmpdir("basic");
        let mut t = ObjectTable::new(dir.clone(), 1000);
        assert_eq!(dir.write_parts(oid(1), &[b"hello ", b"world"]).unwrap(), 11);
        assert_eq!(&*dir.map(oid(1)).unwrap(), b"hello world");
        t.seal(oid(1), 11).unwrap();
        assert_eq!(t.used_bytes(), 11);
        // Immutable: a second write of the same id fails and leaves the first intact.
        assert!(dir.write_parts(oid(1), &[b"x"]).is_err());
        assert_eq!(&*dir.map(oid(1)).unwrap(), b"hello world");
        let view = dir.map(oid(1)).unwrap();
        assert!(t.free(oid(1)));
        assert_eq!(t.used_bytes(), 0);
        assert!(t.is_empty());
        // A live mapping survives deletion of the file.
        assert_eq!(&*view, b"hello world");
        assert!(dir.map(oid(1)).is_err());
        dir.destroy();
    }

    #[test]
    fn seal_over_capacity_is_refused_and_file_removed() {
        let dir = tmpdir("full");
        let mut t = ObjectTable::new(dir.clone(), 10);
        dir.write_parts(oid(2), &[&[1u8; 8]]).unwrap();
        t.seal(oid(2), 8).unwrap();
        dir.write_parts(oid(3), &[&[1u8; 8]]).unwrap();
        assert!(matches!(t.seal(oid(3), 8), Err(StoreError::Full { size: 8, used: 8, capacity: 10 })));
        assert!(!dir.path_of(oid(3)).exists());
        assert_eq!(t.seal(oid(4), 1), Err(StoreError::Missing(oid(4))));
        dir.destroy();
    }

    #[test]
    fn spill_moves_oldest_to_disk_and_reads_still_work() {
        let spill = std::env::temp_dir().join(format!("ferry-store-test-spilled-{}", std::process::id()));
        let _ = fs::remove_dir_all(&spill);
        fs::create_dir_all(&spill).unwrap();
        let dir = tmpdir("spill").with_spill(&spill);
        let mut t = ObjectTable::new(dir.clone(), 10);
        dir.write_parts(oid(1), &[&[1u8; 8]]).unwrap();
        t.seal(oid(1), 8).unwrap();
        dir.write_parts(oid(2), &[&[2u8; 8]]).unwrap();
        // Over capacity is accepted when it can spill.
        t.seal(oid(2), 8).unwrap();
        assert!(t.over_capacity());
        let (id, size) = t.next_to_spill().unwrap();
        assert_eq!((id, size), (oid(1), 8));
        assert_eq!(dir.spill(id).unwrap(), 8);
        assert!(t.mark_spilled(id));
        assert!(!t.over_capacity());
        assert_eq!((t.used_bytes(), t.spilled_bytes(), t.spilled_objects()), (8, 8, 1));
        assert!(!dir.path_of(oid(1)).exists());
        // Read back from disk, transparently.
        assert_eq!(&*dir.map(oid(1)).unwrap(), &[1u8; 8]);
        assert!(t.free(oid(1)));
        assert!(t.free(oid(2)));
        assert_eq!((t.used_bytes(), t.spilled_bytes()), (0, 0));
        assert_eq!(fs::read_dir(&spill).unwrap().count(), 0);
        // A spill of an object freed meanwhile leaves nothing behind.
        dir.write_parts(oid(3), &[&[3u8; 4]]).unwrap();
        t.seal(oid(3), 4).unwrap();
        dir.spill(oid(3)).unwrap();
        t.free(oid(3));
        assert!(!t.mark_spilled(oid(3)));
        assert_eq!(fs::read_dir(&spill).unwrap().count(), 0);
        dir.destroy();
    }

    #[test]
    fn secondary_copies_make_room_before_anything_is_refused_or_spilled() {
        // Without a spill directory: a copy makes room for a primary that would not fit.
        let dir = tmpdir("copies");
        let mut t = ObjectTable::new(dir.clone(), 10);
        dir.write_parts(oid(1), &[&[1u8; 6]]).unwrap();
        t.seal_copy(oid(1), 6).unwrap();
        dir.write_parts(oid(2), &[&[2u8; 6]]).unwrap();
        t.seal(oid(2), 6).unwrap();
        assert!(!t.contains(oid(1)) && !dir.path_of(oid(1)).exists(), "the copy was dropped");
        assert_eq!(t.used_bytes(), 6);
        // A primary is never dropped: with no copy left, the next one is refused.
        dir.write_parts(oid(3), &[&[3u8; 6]]).unwrap();
        assert!(t.seal(oid(3), 6).is_err());
        assert_eq!(t.drop_copy(), None);
        dir.destroy();

        // With one: the oldest copy goes before the oldest primary is spilled.
        let spill = std::env::temp_dir().join(format!("ferry-store-test-copyspill-{}", std::process::id()));
        fs::create_dir_all(&spill).unwrap();
        let dir = tmpdir("copies2").with_spill(&spill);
        let mut t = ObjectTable::new(dir.clone(), 20);
        dir.write_parts(oid(4), &[&[4u8; 8]]).unwrap();
        t.seal(oid(4), 8).unwrap();
        dir.write_parts(oid(5), &[&[5u8; 8]]).unwrap();
        t.seal_copy(oid(5), 8).unwrap();
        dir.write_parts(oid(6), &[&[6u8; 8]]).unwrap();
        t.seal(oid(6), 8).unwrap();
        assert!(!t.over_capacity() && !t.contains(oid(5)), "the copy made room");
        assert_eq!((t.used_bytes(), t.spilled_objects()), (16, 0));
        dir.destroy();
        let _ = fs::remove_dir_all(&spill);
    }
}
