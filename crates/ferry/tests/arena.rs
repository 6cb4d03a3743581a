//! The store's arena with real processes: extents are reused, but never while any process
//! still views them, and a process killed with SIGKILL leaves nothing pinned.

mod common;

use common::{cluster, eventually, pid_alive, sigkill, T};
use ferry::Bytes;

const MIB: usize = 1 << 20;

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3))
}

fn pattern(n: usize, seed: u8) -> Bytes {
    Bytes::from((0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect::<Vec<u8>>())
}

/// Keeps a view of an object in its state, in another process.
#[derive(Default)]
#[ferry::actor]
pub struct Keeper {
    kept: Option<Bytes>,
}

#[ferry::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper { kept: None }
    }
    /// Keeps `b` (a view of the store, no copy); returns its checksum, whether it is a view,
    /// and this process's pid.
    pub fn keep(&mut self, b: Bytes) -> (u64, bool, u32) {
        let r = (checksum(&b), b.is_shared_memory(), std::process::id());
        self.kept = Some(b);
        r
    }
    /// The checksum of what it keeps, now.
    pub fn sum(&self) -> u64 {
        self.kept.as_deref().map(checksum).unwrap_or(0)
    }
}

/// Reads its argument in place.
#[ferry::remote]
fn in_place(b: Bytes) -> (bool, u64) {
    (b.is_shared_memory(), checksum(&b))
}

/// Whether every extent of the arena is free (no object in it, no view pinning one).
fn arena_all_free() -> bool {
    let s = ferry::node_stats().unwrap();
    s.arena_bytes > 0 && s.arena_free_bytes == s.arena_bytes && s.arena_pinned_extents == 0
}

/// Puts and drops `n` objects of `size` bytes: each freed extent is there for the next.
fn churn(n: usize, size: usize) {
    for i in 0..n {
        let r = ferry::put(pattern(size, 100 + i as u8)).unwrap();
        assert_eq!(ferry::get_bytes(&r).unwrap().len(), size);
    }
}

#[test]
fn a_view_in_another_process_keeps_its_bytes_until_that_process_is_killed() {
    ferry_testkit::own_process!();
    cluster();
    let x = ferry::put(pattern(8 * MIB, 1)).unwrap();
    let want = checksum(&ferry::get_bytes(&x).unwrap());
    let k = Keeper::remote().unwrap();
    let (sum, shared, pid) = ferry::get_timeout(&k.keep(&x), T).unwrap();
    assert_eq!((sum, shared), (want, true), "the actor views the object in place");
    // The owner frees it; the actor still views it: its extent is not reused under it,
    // however many objects come and go.
    drop(x);
    eventually("the object freed", T, || ferry::node_stats().unwrap().store_objects == 0);
    churn(40, 8 * MIB);
    assert_eq!(ferry::get_timeout(&k.sum(), T).unwrap(), want, "bytes changed under a reader");
    let s = ferry::node_stats().unwrap();
    assert!(s.arena_pinned_extents >= 1 && !arena_all_free(), "the reader's extent is pinned: {s:?}");
    // Killed, it cannot say it lets go: its node sees its connection end and drops its pins.
    sigkill(pid);
    eventually("the actor's process gone", T, || !pid_alive(pid));
    eventually("the arena all free once the reader is dead", T, arena_all_free);
}

#[test]
fn a_view_outlives_its_ref_and_the_extent_is_reused_after_it() {
    ferry_testkit::own_process!();
    cluster();
    let r = ferry::put(pattern(4 * MIB, 9)).unwrap();
    let view = ferry::get_bytes(&r).unwrap();
    let want = checksum(&view);
    drop(r);
    eventually("the object freed", T, || ferry::node_stats().unwrap().store_objects == 0);
    churn(40, 4 * MIB);
    assert_eq!(checksum(&view), want, "bytes changed under the driver's own view");
    let before = ferry::node_stats().unwrap();
    drop(view);
    eventually("the arena all free once the view is gone", T, arena_all_free);
    // And the churn reused extents rather than taking new ones each time: 40 objects of 4 MiB
    // went through, and no more than a few extents' worth of the arena was ever touched.
    assert_eq!(before.store_fallback_files, 0, "{before:?}");
    assert!(before.arena_free_bytes >= before.arena_bytes - 16 * 4 * MIB as u64, "{before:?}");
}

#[test]
fn puts_reuse_pages_and_zero_copy_gets_stay_zero_copy() {
    ferry_testkit::own_process!();
    cluster();
    // A task reads a driver's object in place, from the arena.
    for i in 0..20u8 {
        let b = pattern(2 * MIB + 17, i);
        let want = checksum(&b);
        let r = ferry::put(b).unwrap();
        assert_eq!(ferry::get_timeout(&in_place::remote(&r), T).unwrap(), (true, want));
        let v = ferry::get_bytes(&r).unwrap();
        assert!(v.is_shared_memory() && checksum(&v) == want);
    }
    eventually("the arena all free", T, arena_all_free);
    assert_eq!(ferry::node_stats().unwrap().store_fallback_files, 0);
}
