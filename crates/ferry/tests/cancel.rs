//! Cancellation as Ray's test_cancel tests it: a queued task never runs; a running one is
//! told (`is_cancelled` turns true, and a `get` it waits in returns `Cancelled`) and its caller
//! gets `Cancelled` at once; with `force` its worker is ended (and replaced), the tasks that
//! worker had not started run elsewhere, uncharged, and nothing else is touched; a
//! recursive cancel (the default) reaches the tasks a task submitted; a borrowed ref's
//! cancel goes to its owner; queued actor calls are removed and running async ones dropped;
//! a forced cancel frees its resources for queued work at once.

mod common;

use common::*;
use ferry::prelude::*;
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
    ferry::cancel_with(&stuck, ferry::CancelOptions::default().force(true)).unwrap();
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

/// Runs until cancelled (then writes "cancelled" to `marker`) or for `ms` (then "done").
#[ferry::remote]
fn child(marker: String, ms: u64) -> String {
    let end = Instant::now() + Duration::from_millis(ms);
    let said = loop {
        if ferry::is_cancelled() {
            break "cancelled";
        }
        if Instant::now() >= end {
            break "done";
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::fs::write(&marker, said).unwrap();
    said.to_string()
}

/// Starts `child` and waits for it.
#[ferry::remote]
fn parent(marker: String, ms: u64) -> String {
    ferry::get(&child::remote(marker, ms)).unwrap_or_else(|e| format!("{e:?}"))
}

/// Cancels the task behind a ref it borrowed.
#[ferry::remote]
fn cancel_borrowed(refs: Vec<ferry::ObjectRef<String>>) -> bool {
    ferry::cancel(&refs[0]).is_ok()
}

fn marker(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ferry-cancel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn a_recursive_cancel_reaches_the_tasks_a_task_submitted() {
    ferry_testkit::own_process!();
    cluster();
    // Recursive (the default): the child is told too.
    let m = marker("recursive");
    let r = parent::remote(m.display().to_string(), 20_000);
    std::thread::sleep(Duration::from_millis(400));
    ferry::cancel(&r).unwrap();
    assert!(matches!(ferry::get_timeout(&r, T), Err(ferry::Error::Cancelled { .. })));
    eventually("the child was cancelled", T, || m.exists());
    assert_eq!(std::fs::read_to_string(&m).unwrap(), "cancelled");
    // Not recursive: the child runs to its end.
    let m = marker("flat");
    let r = parent::remote(m.display().to_string(), 1_500);
    std::thread::sleep(Duration::from_millis(400));
    ferry::cancel_with(&r, ferry::CancelOptions::default().recursive(false)).unwrap();
    assert!(matches!(ferry::get_timeout(&r, T), Err(ferry::Error::Cancelled { .. })));
    eventually("the child ended", T, || m.exists());
    assert_eq!(std::fs::read_to_string(&m).unwrap(), "done");
}

#[test]
fn cancelling_a_borrowed_ref_goes_to_its_owner() {
    ferry_testkit::own_process!();
    cluster();
    let m = marker("borrowed");
    let r = child::remote(m.display().to_string(), 20_000);
    std::thread::sleep(Duration::from_millis(200));
    // Another task, which only borrows the ref, cancels it.
    assert!(ferry::get_timeout(&cancel_borrowed::remote(vec![r.clone()]), T).unwrap());
    assert!(matches!(ferry::get_timeout(&r, T), Err(ferry::Error::Cancelled { .. })));
    eventually("the task was told", T, || m.exists());
    assert_eq!(std::fs::read_to_string(&m).unwrap(), "cancelled");
}

#[test]
fn a_forced_cancel_frees_its_resources_for_queued_work_at_once() {
    ferry_testkit::own_process!();
    cluster();
    // It holds both CPUs and never looks at is_cancelled; a task needing both waits.
    let hog = sleep_ms::options().num_cpus(2.0).remote(20_000);
    std::thread::sleep(Duration::from_millis(300));
    let next = sleep_ms::options().num_cpus(2.0).remote(1);
    assert!(matches!(ferry::get_timeout(&next, Duration::from_millis(300)), Err(ferry::Error::Timeout { .. })));
    let t = Instant::now();
    ferry::cancel_with(&hog, ferry::CancelOptions::default().force(true)).unwrap();
    assert_eq!(ferry::get_timeout(&next, T).unwrap(), 1);
    assert!(t.elapsed() < Duration::from_secs(5), "it waited {:?}", t.elapsed());
}

#[ferry::actor]
struct Counter {
    calls: u32,
}

#[ferry::actor]
impl Counter {
    fn new() -> Self {
        Counter { calls: 0 }
    }
    fn slow(&mut self, ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        self.calls += 1;
        self.calls
    }
    fn calls(&self) -> u32 {
        self.calls
    }
}

#[ferry::actor]
struct Waiter {
    /// Calls of `forever` not yet dropped.
    waiting: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

/// Counts a call of `forever` until the call's future is dropped.
struct Live(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[ferry::actor]
impl Waiter {
    fn new() -> Self {
        Waiter { waiting: Default::default() }
    }
    async fn forever(&self) -> u32 {
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _live = Live(self.waiting.clone());
        std::future::pending::<()>().await;
        0
    }
    async fn waiting(&self) -> u32 {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }
    async fn ping(&self) -> u32 {
        1
    }
}

#[test]
fn a_queued_actor_call_is_removed_and_a_running_async_one_dropped() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::remote().unwrap();
    let first = c.slow(500);
    let second = c.slow(0);
    let third = c.slow(0);
    ferry::cancel(&second).unwrap();
    assert!(matches!(ferry::get_timeout(&second, T), Err(ferry::Error::Cancelled { .. })));
    assert_eq!(ferry::get_timeout(&first, T).unwrap(), 1);
    assert_eq!(ferry::get_timeout(&third, T).unwrap(), 2, "the cancelled call never ran");
    assert_eq!(ferry::get_timeout(&c.calls(), T).unwrap(), 2);

    let w = Waiter::remote().unwrap();
    let stuck = w.forever();
    assert_eq!(ferry::get_timeout(&w.ping(), T).unwrap(), 1);
    assert_eq!(ferry::get_timeout(&w.waiting(), T).unwrap(), 1);
    ferry::cancel(&stuck).unwrap();
    assert!(matches!(ferry::get_timeout(&stuck, T), Err(ferry::Error::Cancelled { .. })));
    // The call's future was dropped in the actor, which goes on.
    eventually("the cancelled call is dropped", T, || ferry::get_timeout(&w.waiting(), T).unwrap() == 0);
    assert_eq!(ferry::get_timeout(&w.ping(), T).unwrap(), 1);
}
