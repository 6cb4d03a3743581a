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
//! **Architecture Invariant:** this crate knows nothing of the network or of owners; it
//! stores, maps and deletes bytes named by [`ObjectId`].

use ferry_proto::ObjectId;
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
}

impl StoreDir {
    /// Creates the directory (mode 0700: objects are private to the cluster's user).
    pub fn create(path: impl Into<PathBuf>) -> io::Result<StoreDir> {
        let path = path.into();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&path)?;
        Ok(StoreDir { path })
    }

    /// Opens an existing directory (in worker and driver processes).
    pub fn open(path: impl Into<PathBuf>) -> StoreDir {
        StoreDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
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
        f.set_len(size)?;
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

    /// Makes a staged file the object `id`, without copying (a hard link). Returns its size.
    pub fn adopt(&self, staged: &Path, id: ObjectId) -> io::Result<u64> {
        let fin = self.path_of(id);
        fs::hard_link(staged, &fin)?;
        Ok(fs::metadata(&fin)?.len())
    }

    /// Maps `id` read-only. The mapping stays valid even if the object is deleted meanwhile
    /// (the pages live until the last mapping goes).
    pub fn map(&self, id: ObjectId) -> io::Result<ObjectView> {
        let f = File::open(self.path_of(id))?;
        let len = f.metadata()?.len();
        if len == 0 {
            return Ok(ObjectView { map: None });
        }
        // SAFETY: store files are written once under a temporary name and renamed into
        // place; nobody writes to them afterwards, so the mapped bytes never change under us.
        let map = unsafe { Mmap::map(&f)? };
        Ok(ObjectView { map: Some(Arc::new(map)) })
    }

    /// Deletes `id`'s file; missing files are fine (already freed).
    pub fn remove(&self, id: ObjectId) -> io::Result<()> {
        match fs::remove_file(self.path_of(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes the directory and everything in it.
    pub fn destroy(&self) {
        let _ = fs::remove_dir_all(&self.path);
    }
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
/// Invariant: `used` is the sum of the sizes of `objects`, and every entry has a file.
#[derive(Debug)]
pub struct ObjectTable {
    dir: StoreDir,
    objects: HashMap<ObjectId, u64>,
    used: u64,
    capacity: u64,
}

impl ObjectTable {
    pub fn new(dir: StoreDir, capacity: u64) -> ObjectTable {
        ObjectTable { dir, objects: HashMap::new(), used: 0, capacity }
    }

    pub fn dir(&self) -> &StoreDir {
        &self.dir
    }

    /// Accounts for an object whose file a process has written. If it does not fit, the
    /// file is deleted and the writer is told why. The size is the file's: what the writer
    /// claims (`_claimed`) is not trusted.
    pub fn seal(&mut self, id: ObjectId, _claimed: u64) -> Result<(), StoreError> {
        let on_disk = fs::metadata(self.dir.path_of(id)).map(|m| m.len());
        let Ok(on_disk) = on_disk else {
            return Err(StoreError::Missing(id));
        };
        if self.objects.contains_key(&id) {
            return Ok(());
        }
        let size = on_disk;
        if self.used + size > self.capacity {
            let _ = self.dir.remove(id);
            return Err(StoreError::Full { size, used: self.used, capacity: self.capacity });
        }
        self.objects.insert(id, size);
        self.used += size;
        Ok(())
    }

    /// Deletes an object. Returns whether it was known.
    pub fn free(&mut self, id: ObjectId) -> bool {
        let _ = self.dir.remove(id);
        match self.objects.remove(&id) {
            Some(size) => {
                self.used -= size;
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, id: ObjectId) -> bool {
        self.objects.contains_key(&id)
    }
    pub fn used_bytes(&self) -> u64 {
        self.used
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{TaskId, WorkerId};

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
}
