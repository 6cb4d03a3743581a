//! The store under pressure: objects past its capacity spill to disk and read back on
//! demand; `put` and task returns wait for room; with no room on disk either, a clear
//! `ObjectStoreFull`, and nothing already stored is lost.

mod common;

use common::*;

const MB: usize = 1 << 20;

fn start(store_mb: u64, spill_dir: Option<std::path::PathBuf>) {
    let mut cfg = ferry::Config::default().num_cpus(2).object_store_bytes(store_mb * MB as u64);
    if let Some(d) = spill_dir {
        cfg = cfg.spill_dir(d);
    }
    ferry::init(cfg).expect("start ferry");
}

#[ferry::remote]
fn produce(seed: u8) -> Vec<u8> {
    pattern(seed, 8 * MB)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8)).collect()
}

#[test]
fn live_objects_three_times_the_store_spill_and_read_back_correctly() {
    start(64, None);
    let spill = ferry::__private::session_info().unwrap().session_dir.join("spill");
    // 96 MiB from put, 96 MiB from task returns: 3x the 64 MiB store, all alive at once.
    let mut puts = Vec::new();
    for i in 0..12u8 {
        puts.push(ferry::put(pattern(i, 8 * MB)).unwrap());
        let s = ferry::node_stats().unwrap();
        assert!(s.store_used_bytes <= s.store_capacity_bytes, "over capacity after put {i}: {s:?}");
    }
    let made: Vec<_> = (100..112u8).map(produce::remote).collect();
    ferry::wait(&made, made.len(), Some(T)).unwrap();
    let s = ferry::node_stats().unwrap();
    assert!(s.spilled_bytes >= 120 * MB as u64, "{s:?}");
    assert!(s.store_used_bytes <= s.store_capacity_bytes, "{s:?}");
    let m = ferry::memory_summary().unwrap();
    assert!(m.objects.iter().filter(|o| o.location == ferry::Location::Spilled).count() >= 15, "{m}");
    // Every value reads back right, spilled or not, in the driver and in tasks.
    for (i, r) in puts.iter().enumerate() {
        assert!(ferry::get_bytes(r).unwrap()[..] == pattern(i as u8, 8 * MB)[..], "put {i}");
    }
    for (i, r) in made.iter().enumerate() {
        assert!(ferry::get_bytes(r).unwrap()[..] == pattern(100 + i as u8, 8 * MB)[..], "return {i}");
    }
    assert!(std::fs::read_dir(&spill).unwrap().count() > 0);
    drop(puts);
    drop(made);
    eventually("store and spill directory empty", T, || {
        let s = ferry::node_stats().unwrap();
        s.store_objects == 0 && s.spilled_bytes == 0 && std::fs::read_dir(&spill).unwrap().count() == 0
    });
}

#[ferry::remote]
fn sum_bytes(b: ferry::Bytes) -> u64 {
    b.iter().map(|x| *x as u64).sum()
}

#[test]
fn tasks_read_spilled_arguments() {
    start(16, None);
    let refs: Vec<_> = (0..6u8).map(|i| ferry::put(vec![i; 8 * MB]).unwrap()).collect();
    assert!(ferry::node_stats().unwrap().spilled_objects >= 4);
    let sums: Vec<_> = refs.iter().map(sum_bytes::remote).collect();
    for (i, s) in sums.iter().enumerate() {
        assert_eq!(ferry::get_timeout(s, T).unwrap(), i as u64 * 8 * MB as u64);
    }
}

#[test]
fn with_no_room_on_disk_either_put_fails_cleanly_and_nothing_is_lost() {
    let spill = std::env::temp_dir().join(format!("ferry-test-nospill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spill);
    /// Removes the stand-in for a full disk however the test ends.
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(spill.clone());
    start(16, Some(spill.clone()));
    // The spill directory becomes unusable (as a full disk would be).
    std::fs::remove_dir_all(&spill).unwrap();
    std::fs::write(&spill, b"not a directory").unwrap();
    let kept: Vec<_> = (0..3u8).map(|i| ferry::put(vec![i; 4 * MB]).unwrap()).collect();
    // The next one does not fit (each is 4 MiB plus a few bytes of header).
    let _fits = ferry::put(vec![7u8; 3 * MB]).unwrap();
    let err = ferry::put(vec![9u8; 2 * MB]).unwrap_err();
    match &err {
        ferry::Error::ObjectStoreFull { detail } => assert!(detail.contains("spilling"), "{detail}"),
        other => panic!("expected ObjectStoreFull, got {other:?}"),
    }
    // A task's large return meets the same limit, as an error of that task.
    let r = produce::remote(1);
    assert!(matches!(ferry::get_timeout(&r, T), Err(ferry::Error::ObjectStoreFull { .. })));
    for (i, r) in kept.iter().enumerate() {
        let b = ferry::get_bytes(r).unwrap();
        assert_eq!((b.len(), b[0]), (4 * MB, i as u8));
    }
}
