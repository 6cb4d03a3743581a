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
    ferry_testkit::own_process!();
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
    ferry_testkit::own_process!();
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
    ferry_testkit::own_process!();
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

/// With `FERRY_TEST_SMALL_SHM` set, this test binary is a program run where `/dev/shm` is a
/// 48 MiB tmpfs (see the test below); it prints what it checked, one line each.
#[used]
#[link_section = ".init_array"]
static SMALL_SHM: extern "C" fn() = small_shm_program;

extern "C" fn small_shm_program() {
    let Some(mode) = std::env::var_os("FERRY_TEST_SMALL_SHM") else { return };
    if std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    // SAFETY: single-threaded here, before main; the workers must not inherit it.
    unsafe { std::env::remove_var("FERRY_TEST_SMALL_SHM") };
    let mut cfg = ferry::Config::default().num_cpus(2);
    if mode == "big" {
        // A capacity larger than the filesystem: the filesystem filling is the pressure.
        cfg = cfg.object_store_bytes(1 << 30);
    }
    ferry::init(cfg).unwrap();
    let s = ferry::node_stats().unwrap();
    println!("capacity {} MiB", s.store_capacity_bytes >> 20);
    // 160 MiB of live objects (put and returned) through a 48 MiB /dev/shm: they spill.
    let puts: Vec<_> = (0..10u8).map(|i| ferry::put(pattern(i, 8 * MB)).unwrap()).collect();
    let made: Vec<_> = (100..110u8).map(produce::remote).collect();
    for (i, r) in puts.iter().enumerate() {
        assert!(ferry::get_bytes(r).unwrap()[..] == pattern(i as u8, 8 * MB)[..], "put {i}");
    }
    for (i, r) in made.iter().enumerate() {
        assert!(ferry::get_timeout(r, T).unwrap() == pattern(100 + i as u8, 8 * MB), "return {i}");
    }
    let s = ferry::node_stats().unwrap();
    println!("spilled {} MiB", s.spilled_bytes >> 20);
    let mut b = ferry::BytesMut::zeroed(20 * MB).unwrap();
    b[7] = 7;
    assert_eq!(ferry::get_bytes(&ferry::put(b.freeze()).unwrap()).unwrap()[7], 7);
    // Larger than the whole filesystem: a clear ObjectStoreFull, for a put and for a return.
    match ferry::put(vec![1u8; 64 * MB]) {
        Err(e @ ferry::Error::ObjectStoreFull { .. }) => println!("put: {e}"),
        other => panic!("a 64 MiB put into a 48 MiB /dev/shm: {other:?}"),
    }
    match ferry::get_timeout(&huge::remote(64 * MB), T) {
        Err(e @ ferry::Error::ObjectStoreFull { .. }) => println!("return: {e}"),
        other => panic!("a 64 MiB return into a 48 MiB /dev/shm: {:?}", other.map(|v| v.len())),
    }
    // Nothing stored was lost meanwhile.
    for (i, r) in puts.iter().enumerate() {
        assert!(ferry::get_bytes(r).unwrap()[..] == pattern(i as u8, 8 * MB)[..], "put {i} after");
    }
    println!("ok");
    std::process::exit(0);
}

#[ferry::remote(max_retries = 0)]
fn huge(n: usize) -> Vec<u8> {
    vec![3u8; n]
}

/// The finding: the default capacity was 30% of RAM whatever the size of `/dev/shm` (a
/// container's is often 64 MiB): with 48 MiB, `put` failed with `No space left on device`
/// having spilled nothing, and a task return failed as `Serialization`. Now the capacity is
/// capped by the filesystem (with a warning), `ENOSPC` is pressure like the capacity is
/// (spill, then try again), and what cannot fit at all fails as `ObjectStoreFull`.
#[test]
fn a_dev_shm_smaller_than_the_store_spills_and_says_so() {
    ferry_testkit::own_process!();
    for mode in ["default", "big"] {
        let exe = std::env::current_exe().unwrap();
        let script = format!("mount -t tmpfs -o size=48m tmpfs /dev/shm && exec '{}'", exe.display());
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("FERRY_TEST_SMALL_SHM", mode)
            .output()
            .unwrap();
        let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && so.contains("\nok"), "{mode}: {so}{se}");
        let cap: u64 =
            so.lines().find_map(|l| l.strip_prefix("capacity ")?.strip_suffix(" MiB")?.parse().ok()).unwrap();
        let spilled: u64 =
            so.lines().find_map(|l| l.strip_prefix("spilled ")?.strip_suffix(" MiB")?.parse().ok()).unwrap();
        assert!(spilled >= 100, "{mode}: {so}");
        match mode {
            "default" => {
                assert!(cap <= 48, "{so}");
                assert!(se.contains("WARN") && se.contains("/dev/shm") && se.contains("shm-size"), "{se}");
            }
            _ => assert!(cap == 1024 && se.contains("WARN"), "{so}{se}"),
        }
        for line in ["put: ", "return: "] {
            let l = so.lines().find(|l| l.starts_with(line)).unwrap_or_default();
            assert!(l.contains("object store full") && l.contains("/dev/shm"), "{mode}: {l}");
        }
        assert!(so.contains("task huge"), "the return's error names its task: {so}");
    }
}
