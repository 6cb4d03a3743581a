//! Local reference counting: objects are freed when the last handle and the last task that
//! uses them are gone, in the owner's memory and in the shared-memory store.

mod common;

use common::{cluster, eventually, T};

#[ferry::remote]
fn mib(seed: u8) -> Vec<u8> {
    vec![seed; 1 << 20]
}

#[ferry::remote]
fn first_byte(v: Vec<u8>) -> u8 {
    v[0]
}

fn store_used() -> u64 {
    ferry::node_stats().unwrap().store_used_bytes
}

/// Files in the store directory besides the arena, plus extents of the arena still taken
/// (zero when every object is freed and no view pins one).
fn store_files() -> usize {
    let dir = ferry::__private::session_info().unwrap().store_dir;
    let files = std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().file_name() != "arena").count();
    let s = ferry::node_stats().unwrap();
    files + usize::from(s.arena_free_bytes != s.arena_bytes)
}

#[test]
fn ten_thousand_one_mib_returns_leave_the_store_empty() {
    ferry_testkit::own_process!();
    cluster();
    // In waves, so the test also shows the store reused, not only emptied at the end.
    for wave in 0..10u8 {
        let refs: Vec<_> = (0..1000).map(|i| mib::remote(((i % 250) as u8).wrapping_add(wave))).collect();
        let firsts: Vec<_> = refs.iter().map(first_byte::remote).collect();
        for (i, f) in firsts.iter().enumerate() {
            assert_eq!(ferry::get_timeout(f, T).unwrap(), ((i % 250) as u8).wrapping_add(wave));
        }
        assert!(store_used() >= 1000 << 20, "the wave's objects are held while referenced");
    }
    eventually("store used bytes back at zero", T, || store_used() == 0);
    eventually("no object files left", T, || store_files() == 0);
    assert_eq!(ferry::node_stats().unwrap().store_objects, 0);
}

#[test]
fn object_lives_while_a_pending_task_needs_it() {
    ferry_testkit::own_process!();
    cluster();
    let big = mib::remote(9);
    let user = first_byte::remote(&big);
    drop(big); // the task still holds it
    assert_eq!(ferry::get_timeout(&user, T).unwrap(), 9);
    eventually("freed after its last user finished", T, || store_used() == 0);
}

#[test]
fn dropped_put_objects_are_freed_and_clones_keep_them() {
    ferry_testkit::own_process!();
    cluster();
    let r = ferry::put(vec![1u8; 5 << 20]).unwrap();
    let r2 = r.clone();
    drop(r);
    assert!(store_used() >= 5 << 20);
    assert_eq!(ferry::get_bytes(&r2).unwrap().len(), 5 << 20);
    drop(r2);
    eventually("put object freed", T, || store_used() == 0);
}

#[test]
fn unreferenced_pending_result_is_freed_when_it_arrives() {
    ferry_testkit::own_process!();
    cluster();
    for i in 0..50 {
        drop(mib::remote(i));
    }
    // Nobody holds the refs, but the tasks ran and their values must not leak.
    let marker = first_byte::remote(vec![3u8; 10]);
    assert_eq!(ferry::get_timeout(&marker, T).unwrap(), 3);
    eventually("results nobody wanted are freed", T, || store_used() == 0 && store_files() == 0);
}
