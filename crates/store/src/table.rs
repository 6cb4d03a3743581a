//! The daemon's record of what its store holds: objects, where each lives (an extent of the
//! arena, a file of its own, or a spilled file on disk), the arena's free extents, and who pins
//! which extent.

use crate::extents::{pages, Extents};
use crate::{StoreDir, StoreError};
use ferry_types::ObjectId;
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::sync::Arc;

/// Who pins an extent: a connection of the daemon (a process of the node), or [`DAEMON`].
pub type Holder = u64;
/// The daemon itself (a transfer or a spill reading an extent, a transfer writing one).
pub const DAEMON: Holder = u64::MAX;

/// Where a reader finds an object in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Place {
    /// `size` bytes at `at` in the arena; the reader now pins the extent.
    Arena { at: u64, size: u64 },
    /// In its own file, in the store or spilled (a mapping of a file needs no pin: the pages
    /// live until the last mapping goes).
    File,
}

/// The daemon's record of what its store holds.
///
/// Invariants: `used` is the sum of the sizes of the objects in memory and `spilled` of
/// those on disk; every entry is in the arena (`at`), or has a file in one of the two places;
/// `order` holds every object in memory, oldest first, and `copies` every secondary copy
/// (copied from another node, which can give it again) in memory, oldest first (both may hold
/// ids since freed or spilled: skipped). Under pressure copies are dropped before primaries
/// are spilled. An extent of the arena is free, or taken: then it is bound to one object in
/// memory, or pinned, or both; it goes back to the free list when neither.
#[derive(Debug)]
pub struct ObjectTable {
    dir: StoreDir,
    objects: HashMap<ObjectId, Rec>,
    order: VecDeque<ObjectId>,
    copies: VecDeque<ObjectId>,
    used: u64,
    spilled: u64,
    capacity: u64,
    arena: Option<ArenaBook>,
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    size: u64,
    spilled: bool,
    /// A secondary copy: dropped, not spilled, when room is needed.
    copy: bool,
    /// Its extent, when it is in the arena.
    at: Option<u64>,
}

/// The arena's accounts.
#[derive(Debug)]
struct ArenaBook {
    file: Arc<File>,
    free: Extents,
    taken: HashMap<u64, Taken>,
    /// Pins by holder: extent → count.
    holders: HashMap<Holder, HashMap<u64, u32>>,
    /// Times free pages were given back to the system (processes re-populate after).
    epoch: u64,
    /// Objects that found no extent large enough and went to a file of their own.
    fallbacks: u64,
    /// Of those, the ones that would have fit in the free bytes (fragmentation).
    fragmented: u64,
}

#[derive(Debug)]
struct Taken {
    len: u64,
    pins: u32,
    /// The object in memory it holds.
    object: Option<ObjectId>,
    /// Sealed once already: a process cannot make an extent a second object.
    sealed: bool,
}

/// One object as the daemon lists it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredObject {
    pub id: ObjectId,
    pub size: u64,
    pub spilled: bool,
}

/// The arena's state, for stats and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ArenaStats {
    pub size: u64,
    pub free: u64,
    pub largest_free: u64,
    pub free_extents: u64,
    pub pinned_extents: u64,
    pub fallbacks: u64,
    pub fragmented: u64,
}

/// A new extent for a writer: where, and the epoch to prepare it with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Created {
    pub at: u64,
    pub epoch: u64,
}

impl ObjectTable {
    /// A table without an arena: every object is a file of its own.
    pub fn new(dir: StoreDir, capacity: u64) -> ObjectTable {
        ObjectTable {
            dir,
            objects: HashMap::new(),
            order: Default::default(),
            copies: Default::default(),
            used: 0,
            spilled: 0,
            capacity,
            arena: None,
        }
    }

    /// A table whose objects go to an arena of `capacity` bytes, created now in the store
    /// directory (objects too large for any free extent still go to files of their own).
    pub fn with_arena(dir: StoreDir, capacity: u64) -> std::io::Result<ObjectTable> {
        let size = capacity / crate::extents::PAGE * crate::extents::PAGE;
        let file = crate::arena::create_file(dir.path(), size)?;
        let mut t = ObjectTable::new(dir, capacity);
        t.arena = Some(ArenaBook {
            file: Arc::new(file),
            free: Extents::new(size),
            taken: HashMap::new(),
            holders: HashMap::new(),
            epoch: 0,
            fallbacks: 0,
            fragmented: 0,
        });
        Ok(t)
    }

    pub fn dir(&self) -> &StoreDir {
        &self.dir
    }

    /// The arena file, to read extents from (spilling, transfers) and write them (transfers).
    pub fn arena_file(&self) -> Option<Arc<File>> {
        self.arena.as_ref().map(|a| a.file.clone())
    }

    /// An extent of `size` bytes for `holder` to write an object into, pinned by it. `None`:
    /// no arena, or no free extent is large enough: the object goes to a file of its own.
    pub fn create(&mut self, size: u64, holder: Holder) -> Option<Created> {
        let a = self.arena.as_mut()?;
        let Some(at) = a.free.alloc(size) else {
            a.fallbacks += 1;
            if a.free.free_bytes() >= pages(size) {
                a.fragmented += 1;
            }
            return None;
        };
        a.taken.insert(at, Taken { len: pages(size), pins: 1, object: None, sealed: false });
        *a.holders.entry(holder).or_default().entry(at).or_default() += 1;
        Some(Created { at, epoch: a.epoch })
    }

    /// Accounts for an object a process has written: into the extent at `at` it created (and
    /// still pins), or, with `at` `None`, into its own file. Without a spill directory an
    /// object that does not fit is refused (its file deleted); with one it is accepted, and
    /// the store may be over capacity until [`ObjectTable::next_to_spill`] has made room. A
    /// file's size is the file's: what the writer claims is trusted only to be inside its
    /// extent. An object sealed already stands (a retried task's value): the new extent stays
    /// unbound, and goes when its writer lets it go.
    pub fn seal_at(&mut self, id: ObjectId, claimed: u64, at: Option<u64>, holder: Holder) -> Result<(), StoreError> {
        if let Some(r) = self.objects.get(&id) {
            if at.is_none() && r.at.is_some() {
                // A file written for an object the arena holds already: not the object.
                let _ = self.dir.remove(id);
            }
            return Ok(());
        }
        let size = match at {
            Some(at) => {
                let a = self.arena.as_mut().ok_or(StoreError::Missing(id))?;
                let pinned = a.holders.get(&holder).is_some_and(|h| h.contains_key(&at));
                match a.taken.get_mut(&at) {
                    Some(t) if pinned && !t.sealed && t.object.is_none() && claimed <= t.len => {
                        t.sealed = true;
                        claimed
                    }
                    _ => return Err(StoreError::BadExtent { id, at }),
                }
            }
            None => match fs::metadata(self.dir.path_of(id)) {
                Ok(m) => m.len(),
                Err(_) => return Err(StoreError::Missing(id)),
            },
        };
        // Secondary copies make room first: their nodes can give them again.
        while self.used + size > self.capacity && self.drop_copy().is_some() {}
        if self.used + size > self.capacity && self.dir.spill_dir().is_none() {
            match at {
                Some(at) => {
                    if let Some(t) = self.arena.as_mut().and_then(|a| a.taken.get_mut(&at)) {
                        t.sealed = false;
                    }
                }
                None => {
                    let _ = self.dir.remove(id);
                }
            }
            return Err(StoreError::Full { size, used: self.used, capacity: self.capacity });
        }
        if let Some(at) = at {
            if let Some(t) = self.arena.as_mut().and_then(|a| a.taken.get_mut(&at)) {
                t.object = Some(id);
            }
        }
        self.objects.insert(id, Rec { size, spilled: false, copy: false, at });
        self.order.push_back(id);
        self.used += size;
        Ok(())
    }

    /// [`ObjectTable::seal_at`] for an object in a file of its own.
    pub fn seal(&mut self, id: ObjectId, claimed: u64) -> Result<(), StoreError> {
        self.seal_at(id, claimed, None, DAEMON)
    }

    /// [`ObjectTable::seal_at`] for a secondary copy of an object whose primary is on another
    /// node: under pressure it is dropped (a reader copies it again) rather than spilled.
    pub fn seal_copy(&mut self, id: ObjectId, claimed: u64, at: Option<u64>) -> Result<(), StoreError> {
        let known = self.objects.contains_key(&id);
        self.seal_at(id, claimed, at, DAEMON)?;
        if !known {
            if let Some(r) = self.objects.get_mut(&id) {
                r.copy = true;
                self.copies.push_back(id);
            }
        }
        Ok(())
    }

    /// Where a reader finds `id` in memory or on disk, pinning its extent for `holder` if it
    /// is in the arena. `None`: not here.
    pub fn pin(&mut self, id: ObjectId, holder: Holder) -> Option<Place> {
        let r = self.objects.get(&id)?;
        match r.at {
            Some(at) => {
                let a = self.arena.as_mut()?;
                a.taken.get_mut(&at)?.pins += 1;
                *a.holders.entry(holder).or_default().entry(at).or_default() += 1;
                Some(Place::Arena { at, size: r.size })
            }
            None => Some(Place::File),
        }
    }

    /// `holder` lets one pin of the extent at `at` go. Pins it does not hold are ignored.
    pub fn unpin(&mut self, at: u64, holder: Holder) {
        let Some(a) = self.arena.as_mut() else { return };
        let Some(h) = a.holders.get_mut(&holder) else { return };
        let Some(n) = h.get_mut(&at) else { return };
        *n -= 1;
        if *n == 0 {
            h.remove(&at);
            if h.is_empty() {
                a.holders.remove(&holder);
            }
        }
        if let Some(t) = a.taken.get_mut(&at) {
            t.pins = t.pins.saturating_sub(1);
        }
        a.maybe_free(at);
    }

    /// `holder` is gone (its connection closed, its process perhaps killed): every pin it
    /// held goes, and extents it created and never sealed are free again.
    pub fn release(&mut self, holder: Holder) -> usize {
        let Some(a) = self.arena.as_mut() else { return 0 };
        let Some(h) = a.holders.remove(&holder) else { return 0 };
        for (at, n) in &h {
            if let Some(t) = a.taken.get_mut(at) {
                t.pins = t.pins.saturating_sub(*n);
            }
            a.maybe_free(*at);
        }
        h.len()
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
    /// [`ObjectTable::mark_spilled`]), with its extent if it is in the arena: pinned for the
    /// daemon then (unpin it after the copy).
    pub fn next_to_spill(&mut self) -> Option<(ObjectId, u64, Option<u64>)> {
        while let Some(id) = self.order.pop_front() {
            if let Some(r) = self.objects.get(&id).copied() {
                if !r.spilled {
                    if r.at.is_some() {
                        self.pin(id, DAEMON);
                    }
                    return Some((id, r.size, r.at));
                }
            }
        }
        None
    }

    /// `id` was copied to the spill directory: its memory copy goes (its file is deleted,
    /// its extent freed once no process pins it). Returns false (and deletes the copy) if it
    /// was freed meanwhile.
    pub fn mark_spilled(&mut self, id: ObjectId) -> bool {
        match self.objects.get_mut(&id) {
            Some(r) if !r.spilled => {
                r.spilled = true;
                self.used -= r.size;
                self.spilled += r.size;
                match r.at.take() {
                    Some(at) => self.unbind(at),
                    None => {
                        let _ = self.dir.remove(id);
                    }
                }
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

    fn unbind(&mut self, at: u64) {
        if let Some(a) = self.arena.as_mut() {
            if let Some(t) = a.taken.get_mut(&at) {
                t.object = None;
            }
            a.maybe_free(at);
        }
    }

    /// Deletes an object. Returns whether it was known.
    pub fn free(&mut self, id: ObjectId) -> bool {
        match self.objects.remove(&id) {
            Some(r) if r.spilled => {
                self.dir.remove_spilled(id);
                self.spilled -= r.size;
                true
            }
            Some(r) => {
                match r.at {
                    Some(at) => self.unbind(at),
                    None => {
                        let _ = self.dir.remove(id);
                    }
                }
                self.used -= r.size;
                true
            }
            None => {
                let _ = self.dir.remove(id);
                false
            }
        }
    }

    /// Gives the pages of free extents back to the system (the store's filesystem is short):
    /// they are allocated again, zeroed, when next written. Returns the bytes given back.
    pub fn trim(&mut self) -> u64 {
        let Some(a) = self.arena.as_mut() else { return 0 };
        use std::os::fd::AsRawFd;
        let mut n = 0;
        for (off, len) in a.free.iter() {
            // SAFETY: plain syscall on a descriptor we own; only free extents are punched.
            let r = unsafe {
                libc::fallocate(
                    a.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as libc::off_t,
                    len as libc::off_t,
                )
            };
            if r == 0 {
                n += len;
            }
        }
        a.epoch += 1;
        n
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

    /// The arena's free space, pins and fallbacks (all zero without an arena).
    pub fn arena_stats(&self) -> ArenaStats {
        let Some(a) = &self.arena else { return ArenaStats::default() };
        ArenaStats {
            size: a.free.size(),
            free: a.free.free_bytes(),
            largest_free: a.free.largest(),
            free_extents: a.free.count() as u64,
            pinned_extents: a.taken.values().filter(|t| t.pins > 0).count() as u64,
            fallbacks: a.fallbacks,
            fragmented: a.fragmented,
        }
    }

    /// Asserts the invariants (tests).
    pub fn check(&self) {
        let mut used = 0;
        for (id, r) in &self.objects {
            if !r.spilled {
                used += r.size;
            }
            if let Some(at) = r.at {
                let t = &self.arena.as_ref().expect("an arena").taken[&at];
                assert_eq!(t.object, Some(*id), "the extent is bound to its object");
                assert!(r.size <= t.len);
            }
        }
        assert_eq!(used, self.used);
        if let Some(a) = &self.arena {
            a.free.check();
            let taken: u64 = a.taken.values().map(|t| t.len).sum();
            assert_eq!(taken + a.free.free_bytes(), a.free.size(), "every byte free or taken");
            for (at, t) in &a.taken {
                assert!(t.object.is_some() || t.pins > 0, "extent {at} is neither bound nor pinned");
                let held: u32 = a.holders.values().filter_map(|h| h.get(at)).sum();
                assert_eq!(held, t.pins, "pins of extent {at} are the holders'");
            }
        }
    }
}

impl ArenaBook {
    fn maybe_free(&mut self, at: u64) {
        if self.taken.get(&at).is_some_and(|t| t.pins == 0 && t.object.is_none()) {
            let t = self.taken.remove(&at).expect("checked");
            self.free.free(at, t.len);
        }
    }
}
