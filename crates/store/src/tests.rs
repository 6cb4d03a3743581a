//! Unit tests of the store: files, the arena's accounts, and views in this process.

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
    let (id, size, at) = t.next_to_spill().unwrap();
    assert_eq!((id, size, at), (oid(1), 8, None));
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
    t.seal_copy(oid(1), 6, None).unwrap();
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
    t.seal_copy(oid(5), 8, None).unwrap();
    dir.write_parts(oid(6), &[&[6u8; 8]]).unwrap();
    t.seal(oid(6), 8).unwrap();
    assert!(!t.over_capacity() && !t.contains(oid(5)), "the copy made room");
    assert_eq!((t.used_bytes(), t.spilled_objects()), (16, 0));
    dir.destroy();
    let _ = fs::remove_dir_all(&spill);
}

/// An arena table and this process's mapping of it, with unpins recorded rather than sent.
fn arena(name: &str, cap: u64) -> (StoreDir, ObjectTable, Arc<Arena>, Arc<std::sync::Mutex<Vec<u64>>>) {
    let dir = tmpdir(name);
    let t = ObjectTable::with_arena(dir.clone(), cap).unwrap();
    let a = Arena::open(dir.path()).unwrap();
    let unpinned = Arc::new(std::sync::Mutex::new(Vec::new()));
    let u = unpinned.clone();
    a.set_release(move |at| u.lock().unwrap().push(at));
    (dir, t, a, unpinned)
}

const P: u64 = extents::PAGE;

#[test]
fn arena_objects_are_written_pinned_and_reused_only_when_unpinned() {
    let (dir, mut t, a, unpinned) = arena("arena", 64 * P);
    let me = 1;
    // A writer creates, fills and seals.
    let c = t.create(10_000, me).unwrap();
    let h = a.hold(c.at, 10_000, Some(oid(1))).unwrap();
    h.prepare(c.epoch).unwrap();
    // SAFETY: just created for us, not sealed.
    unsafe { h.bytes_mut() }.fill(7);
    t.seal_at(oid(1), 10_000, Some(c.at), me).unwrap();
    t.check();
    assert_eq!(t.used_bytes(), 10_000);
    // The writer's view is shared by a second get in this process: no second pin.
    let v = a.cached(oid(1)).unwrap();
    assert!(v.in_arena() && v.iter().all(|b| *b == 7) && v.len() == 10_000);
    // Another process pins it to read.
    let other = 2;
    assert_eq!(t.pin(oid(1), other), Some(Place::Arena { at: c.at, size: 10_000 }));
    // Freed while both pin it: the extent is not reused.
    assert!(t.free(oid(1)));
    t.check();
    let c2 = t.create(10_000, me).unwrap();
    assert_ne!(c2.at, c.at, "a pinned extent is not reused");
    t.unpin(c2.at, me);
    // The writer's views go: its unpin is queued (the runtime sends it).
    drop((h, v));
    assert_eq!(*unpinned.lock().unwrap(), vec![c.at]);
    assert!(a.cached(oid(1)).is_none());
    t.unpin(c.at, me);
    // Still pinned by the reader: the next object goes where `c2` was.
    assert_eq!(t.create(10_000, 3).map(|c| c.at), Some(c2.at));
    // The reader process dies: its pin goes with it, and the extent is free again.
    assert_eq!(t.release(other), 1);
    t.check();
    let s = t.arena_stats();
    assert_eq!(s.pinned_extents, 1, "only the extent created by holder 3");
    // Unpins of what a holder does not pin change nothing.
    t.unpin(c.at, 99);
    t.unpin(12345, me);
    t.check();
    dir.destroy();
}

#[test]
fn a_writer_that_dies_unsealed_frees_its_extent_and_seals_are_checked() {
    let (dir, mut t, _a, _) = arena("crash", 64 * P);
    let c = t.create(3 * P, 1).unwrap();
    // Another holder cannot seal it, nor can its creator seal more than it holds.
    assert!(matches!(t.seal_at(oid(1), 3 * P, Some(c.at), 2), Err(StoreError::BadExtent { .. })));
    assert!(matches!(t.seal_at(oid(1), 4 * P, Some(c.at), 1), Err(StoreError::BadExtent { .. })));
    assert!(!t.contains(oid(1)));
    // It dies before sealing: nothing of it stays.
    assert_eq!(t.release(1), 1);
    assert_eq!((t.arena_stats().free, t.len()), (64 * P, 0));
    // Sealed, then its writer dies: the object stays (its owner frees it).
    let c = t.create(P, 1).unwrap();
    t.seal_at(oid(2), 100, Some(c.at), 1).unwrap();
    t.release(1);
    assert!(t.contains(oid(2)));
    // A freed extent a process still pins cannot be sealed as a second object.
    assert_eq!(t.pin(oid(2), 5), Some(Place::Arena { at: c.at, size: 100 }));
    t.free(oid(2));
    assert!(t.seal_at(oid(3), 100, Some(c.at), 5).is_err());
    t.check();
    // A second seal of a sealed object stands as the first (a retried task's value).
    let c2 = t.create(P, 6).unwrap();
    let c3 = t.create(P, 6).unwrap();
    t.seal_at(oid(4), 10, Some(c2.at), 6).unwrap();
    t.seal_at(oid(4), 10, Some(c3.at), 6).unwrap();
    assert_eq!(t.pin(oid(4), 7), Some(Place::Arena { at: c2.at, size: 10 }));
    t.release(6);
    t.check();
    assert_eq!(t.arena_stats().pinned_extents, 2, "oid(2)'s by 5 and oid(4)'s by 7; c3's went with 6");
    dir.destroy();
}

#[test]
fn arena_objects_spill_and_fragmented_space_falls_back_to_files() {
    let spill = std::env::temp_dir().join(format!("ferry-store-test-arenaspill-{}", std::process::id()));
    let _ = fs::remove_dir_all(&spill);
    fs::create_dir_all(&spill).unwrap();
    let dir = tmpdir("arenaspill").with_spill(&spill);
    let mut t = ObjectTable::with_arena(dir.clone(), 8 * P).unwrap();
    let a = Arena::open(dir.path()).unwrap();
    let mut held = Vec::new();
    for i in 0..8u64 {
        let c = t.create(P, 1).unwrap();
        let h = a.hold(c.at, P, Some(oid(i))).unwrap();
        h.prepare(c.epoch).unwrap();
        // SAFETY: created for us, not sealed.
        unsafe { h.bytes_mut() }.fill(i as u8);
        t.seal_at(oid(i), P, Some(c.at), 1).unwrap();
        held.push(h);
    }
    // Every other one freed (the writer drops its pins): four pages free, none two together.
    for i in (0..8u64).step_by(2) {
        t.free(oid(i));
        t.unpin(held[i as usize].at(), 1);
    }
    assert_eq!(t.create(2 * P, 1), None);
    let s = t.arena_stats();
    assert_eq!((s.free, s.largest_free, s.fallbacks, s.fragmented), (4 * P, P, 1, 1));
    // So it goes to a file of its own; the oldest in memory spills from the arena.
    // A larger one too, which puts the store over its capacity.
    dir.write_parts(oid(10), &[&[10u8; 5 * P as usize]]).unwrap();
    t.seal(oid(10), 5 * P).unwrap();
    assert!(t.over_capacity());
    let (id, size, at) = t.next_to_spill().unwrap();
    assert_eq!((id, size, at), (oid(1), P, Some(held[1].at())));
    let f = t.arena_file().unwrap();
    assert_eq!(dir.spill_from(id, Some((&f, held[1].at(), P))).unwrap(), P);
    assert!(t.mark_spilled(id));
    t.unpin(held[1].at(), DAEMON);
    // Read back from disk; the writer's view still reads the arena, unchanged.
    assert_eq!(t.pin(oid(1), 2), Some(Place::File));
    assert!(dir.map(oid(1)).unwrap().iter().all(|b| *b == 1));
    assert!(held[1].bytes().iter().all(|b| *b == 1));
    t.check();
    // Trimming gives free pages back; what is live is untouched.
    assert_eq!(t.trim(), 4 * P);
    assert!(held[3].bytes().iter().all(|b| *b == 3));
    let c = t.create(P, 1).unwrap();
    assert_eq!(c.epoch, 1, "processes re-populate after a trim");
    dir.destroy();
    let _ = fs::remove_dir_all(&spill);
}

#[test]
fn large_copies_split_over_threads_copy_every_byte() {
    for n in [0usize, 5, (16 << 20) - 1, (16 << 20) + 4097, 33 << 20] {
        let src: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; n];
        arena::copy_in(&mut dst, &src);
        assert!(dst == src, "{n} bytes");
    }
}
