//! Cancellation as Ray's test_cancel tests it: a queued task never runs; a running one is
//! told (`is_cancelled` turns true, and a `get` it waits in returns `Cancelled`) and its caller
//! gets `Cancelled` at once; with `force` its worker is ended (and replaced), the tasks that
//! worker had not started run elsewhere, uncharged, and nothing else is touched.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Runs until told it is cancelled; says so.
#[ferry::remote]
fn until_cancelled() -> String {
    let end = Instant::now() + Duration::from_secs(20);
    while !ferry::is_cancelled() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(std::env::temp_dir().join(format!("ferry-cancel-told-{}", std::process::id())), b"1").unwrap();
    "stopped".into()
}

#[ferry::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Waits in `get` on a task that takes long; writes what its `get` said to `marker`.
#[ferry::remote]
fn waits_in_get(marker: String) -> String {
    let slow = sleep_ms::remote(20_000);
    let said = match ferry::get(&slow) {
        Ok(_) => "got it".to_string(),
        Err(e) => format!("{e:?}"),
    };
    std::fs::write(&marker, &said).unwrap();
    said
}

#[ferry::remote]
fn pid() -> u32 {
    std::process::id()
}

#[test]
fn a_running_task_is_told_and_its_caller_gets_cancelled_at_once() {
    ferry_testkit::own_process!();
    cluster();
    let worker = ferry::get_timeout(&pid::remote(), T).unwrap();
    let r = until_cancelled::remote();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    ferry::cancel(&r).unwrap();
    assert!(matches!(ferry::get_timeout(&r, T), Err(ferry::Error::Cancelled { .. })));
    assert!(t.elapsed() < Duration::from_secs(2));
    // It stopped because it was told, and its worker lives on.
    eventually("the task saw is_cancelled", T, || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("ferry-cancel-told-"))
    });
    assert!(pid_alive(worker));
    for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("ferry-cancel-told-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[test]
fn a_task_waiting_in_get_gets_cancelled_there() {
    ferry_testkit::own_process!();
    cluster();
    let marker = std::env::temp_dir().join(format!("ferry-cancel-get-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let r = waits_in_get::remote(marker.display().to_string());
    std::thread::sleep(Duration::from_millis(300));
    ferry::cancel(&r).unwrap();
    assert!(matches!(ferry::get_timeout(&r, T), Err(ferry::Error::Cancelled { .. })));
    // Inside the task, its `get` returned `Cancelled` (not after the inner task's 20 s).
    eventually("the task's own get returned", Duration::from_secs(5), || marker.exists());
    let said = std::fs::read_to_string(&marker).unwrap();
    assert!(said.starts_with("Cancelled"), "{said}");
    let _ = std::fs::remove_file(&marker);
    // Its worker is free again long before the inner task would have ended.
    let t = Instant::now();
    let quick: Vec<_> = (0..4).map(|_| sleep_ms::remote(1)).collect();
    assert_eq!(ferry::get_all(&quick).unwrap(), vec![1; 4]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn force_ends_the_worker_and_leaves_other_tasks_untouched() {
    ferry_testkit::own_process!();
    cluster();
    // A task that ignores cancellation, on a worker that also has a task queued behind it.
    let stuck = sleep_ms::remote(20_000);
    let behind: Vec<_> = (0..6).map(|_| sleep_ms::remote(50)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = ferry::recovery_stats().unwrap().task_retries;
    let t = Instant::now();
    ferry::cancel_with(&stuck, ferry::CancelOptions { force: true }).unwrap();
    assert!(matches!(ferry::get_timeout(&stuck, T), Err(ferry::Error::Cancelled { .. })));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(ferry::get_all(&behind).unwrap(), vec![50; 6], "the others ran");
    assert_eq!(ferry::recovery_stats().unwrap().task_retries, before, "and were not charged a retry");
    // The pool is whole again: two tasks run at once.
    let t = Instant::now();
    let two: Vec<_> = (0..2).map(|_| sleep_ms::remote(500)).collect();
    ferry::get_all(&two).unwrap();
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
}
