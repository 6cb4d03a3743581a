//! Preemption by reset (issue 16), with real worker processes: a best-effort task whose
//! worker the node takes back (suspended too long for real-time work, holding a resource
//! real-time work needs, or using memory the node is short of) runs again without charging
//! a retry, and fails with a typed error past its `max_preemptions`.

mod common;

use common::*;
use ferry::prelude::*;
use std::time::{Duration, Instant};

/// Sleeps rather than spins: at nice 19 a best-effort worker gets next to no CPU while other
/// programs keep the cores busy (as the rest of the suite does), and what is tested here is
/// that a reset task runs again, not how fast.
#[ferry::remote(priority = "best_effort", max_retries = 0)]
fn background(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[ferry::remote(priority = "real_time")]
fn urgent(ms: u64) -> u32 {
    spin_cpu(ms)
}

/// Real-time work that keeps both CPUs longer than `FERRY_PREEMPT_RESET_AFTER_MS` resets the
/// best-effort tasks it suspended: one with preemptions left runs again afterwards (no
/// retry charged: it has none), one with none fails with `Preempted`.
#[test]
fn best_effort_work_suspended_too_long_is_reset_and_runs_again_without_a_retry() {
    ferry_testkit::own_process!();
    std::env::set_var("FERRY_PREEMPT_RESET_AFTER_MS", "300");
    cluster();
    let kept = background::remote(1000);
    let given_up = background::options().max_preemptions(0).remote(1000);
    eventually("both best-effort tasks hold the CPUs", T, || {
        let s = ferry::node_stats().unwrap();
        s.available.get_milli("CPU") == 0 && s.leased_workers >= 2
    });
    std::thread::sleep(Duration::from_millis(100));
    let rt = urgent::options().num_cpus(2.0).remote(1500);
    ferry::get_timeout(&rt, T).unwrap();
    let err = ferry::get_timeout(&given_up, T).unwrap_err();
    match &err {
        ferry::Error::Preempted { times: 1, detail, .. } if detail.contains("real-time") => {}
        other => panic!("expected Preempted once for real-time work, got {other:?}"),
    }
    assert!(err.to_string().contains("max_preemptions"), "the error says what to do: {err}");
    ferry::get_timeout(&kept, T).expect("the reset task runs again");
    let r = ferry::recovery_stats().unwrap();
    assert_eq!((r.task_retries, r.preemptions), (0, 2), "{r:?}");
    let s = ferry::node_stats().unwrap();
    assert!(s.resets >= 2 && s.memory_resets == 0, "{s:?}");
    eventually("nothing left suspended", T, || ferry::node_stats().unwrap().suspended_workers == 0);
}

#[ferry::remote(priority = "best_effort", resources(gpu = 1))]
fn render(ms: u64) -> u32 {
    spin_cpu(ms)
}

#[ferry::remote(priority = "real_time", resources(gpu = 1))]
fn infer() -> u32 {
    std::process::id()
}

/// Suspension cannot free a GPU: a real-time task that needs the one a best-effort task
/// holds resets it at once, and the best-effort task runs again after.
#[test]
fn real_time_work_resets_best_effort_work_holding_what_it_needs() {
    ferry_testkit::own_process!();
    cluster_with(ferry::Config::default().num_cpus(2).resource("gpu", 1.0));
    let be = render::remote(20_000);
    // (A resource all taken is absent from `available`.)
    let holds_gpu = || {
        let s = ferry::node_stats().unwrap();
        s.leased_workers >= 1 && s.available.get_milli("gpu") == 0
    };
    eventually("the best-effort task holds the gpu", T, holds_gpu);
    let t = Instant::now();
    let pid = ferry::get_timeout(&infer::remote(), T).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "the real-time task waited {:?}", t.elapsed());
    // Counted once the owner sees the reset worker gone (its connection's end may come after
    // the real-time result).
    eventually("one preemption counted", T, || ferry::recovery_stats().unwrap().preemptions == 1);
    // The best-effort task was reset, not suspended: it starts again, on another process.
    assert!(ferry::node_stats().unwrap().resets >= 1);
    eventually("the best-effort task is running again", T, holds_gpu);
    let workers = ferry::state::list_workers().unwrap();
    assert!(!workers.iter().any(|w| w.state == "suspended"), "reset, not suspended: {workers:?}");
    let _ = pid;
    ferry::cancel_with(&be, ferry::CancelOptions { force: true, recursive: true }).unwrap();
}

/// Allocates `mib` MiB in 8 MiB steps, touching every page, then frees it all.
#[ferry::remote(priority = "best_effort")]
fn hog(mib: usize) -> usize {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib / 8 {
        held.push(vec![1u8; 8 << 20]);
        std::thread::sleep(Duration::from_millis(10));
    }
    held.iter().map(|v| v.len()).sum::<usize>() >> 20
}

#[ferry::remote]
fn modest(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A node given 128 MiB for its workers resets the best-effort task that outgrows it
/// (not the older normal task beside it) and, past its `max_preemptions`, fails it with
/// `OutOfMemory` naming the task, the node and the memory. The node offers its 128 MiB as
/// the `memory` resource: a task that reserves more can never run, one that reserves less
/// runs.
#[test]
fn memory_pressure_resets_the_newest_best_effort_task_and_then_fails_it_out_of_memory() {
    ferry_testkit::own_process!();
    std::env::set_var("FERRY_MEMORY_LIMIT_BYTES", (128u64 << 20).to_string());
    std::env::set_var("FERRY_MEMORY_MONITOR_MS", "50");
    std::env::set_var("FERRY_MEMORY_USAGE_THRESHOLD", "0.9");
    cluster();
    assert_eq!(ferry::node_stats().unwrap().total.get_milli(ferry::MEMORY), (128u64 << 20) * 1000);
    let innocent = modest::remote(3000);
    eventually("the normal task holds a CPU", T, || ferry::node_stats().unwrap().leased_workers >= 1);
    let big = hog::options().max_preemptions(2).remote(512);
    let err = ferry::get_timeout(&big, Duration::from_secs(60)).unwrap_err();
    match &err {
        ferry::Error::OutOfMemory { task, node, detail } => {
            assert_eq!(task, "hog");
            assert_eq!(*node, ferry::node_id().unwrap().to_string());
            assert!(detail.contains("MiB") && detail.contains("threshold"), "{detail}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(err.to_string().contains(".memory("), "the error says what to do: {err}");
    assert_eq!(ferry::get_timeout(&innocent, T).unwrap(), 3000, "the older normal task was left alone");
    let r = ferry::recovery_stats().unwrap();
    assert_eq!((r.preemptions, r.task_retries), (3, 0), "{r:?}");
    assert!(ferry::node_stats().unwrap().memory_resets >= 3);
    // A small hog fits and is left alone.
    assert_eq!(ferry::get_timeout(&hog::remote(32), T).unwrap(), 32);

    // The memory resource.
    let too_big = modest::options().memory(256 << 20).remote(1);
    assert!(matches!(ferry::get_timeout(&too_big, T), Err(ferry::Error::Infeasible { .. })));
    assert_eq!(ferry::get_timeout(&modest::options().memory(64 << 20).remote(1), T).unwrap(), 1);
}

/// A best-effort actor holding the gpu.
#[ferry::actor]
struct Renderer {
    frames: u64,
}

#[ferry::actor(priority = "best_effort")]
impl Renderer {
    fn new() -> Self {
        Renderer { frames: 0 }
    }
    fn frame(&mut self) -> u64 {
        self.frames += 1;
        self.frames
    }
}

/// A best-effort actor is reset (its process killed, so it restarts) only if it has
/// restarts left: one without waits for real-time work to be done with its gpu, and is
/// never killed for it; one with a restart left gives the gpu at once and comes back.
#[test]
fn best_effort_actors_are_reset_only_with_restarts_left() {
    ferry_testkit::own_process!();
    cluster_with(ferry::Config::default().num_cpus(2).resource("gpu", 1.0));
    let fragile = Renderer::options().resource("gpu", 1.0).remote().unwrap();
    assert_eq!(ferry::get_timeout(&fragile.frame(), T).unwrap(), 1);
    let rt = infer::remote();
    assert!(
        ferry::wait(std::slice::from_ref(&rt), 1, Some(Duration::from_millis(500))).unwrap().0.is_empty(),
        "an actor with no restarts left was reset"
    );
    assert_eq!(ferry::get_timeout(&fragile.frame(), T).unwrap(), 2, "it lives, with its state");
    ferry::kill(&fragile).unwrap();
    ferry::get_timeout(&rt, T).expect("the real-time task runs once the gpu is free");

    let sturdy = Renderer::options().resource("gpu", 1.0).max_restarts(1).remote().unwrap();
    assert_eq!(ferry::get_timeout(&sturdy.frame(), T).unwrap(), 1);
    let t = Instant::now();
    ferry::get_timeout(&infer::remote(), T).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "the real-time task waited {:?}", t.elapsed());
    // Restarted (its constructor ran again: its state starts over) and serving.
    eventually("the reset actor serves again", T, || ferry::get_timeout(&sturdy.frame(), T).is_ok_and(|n| n == 1));
    let view = ferry::state::list_actors().unwrap();
    assert!(view.iter().any(|a| a.class.contains("Renderer") && a.restarts == 1), "{view:?}");
    assert!(ferry::node_stats().unwrap().resets >= 1);
}
