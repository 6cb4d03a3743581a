//! Priorities and preemption by suspension (issue 16), with real worker processes: on a
//! node whose two CPUs run best-effort tasks, a real-time task runs at once (the newest
//! best-effort worker is stopped while it runs, its CPU lent), and the best-effort tasks go
//! on where they stopped: same processes, no retry, right results. Normal tasks are never
//! suspended.

mod common;

use common::*;
use ferry::prelude::*;
use std::time::{Duration, Instant};

#[ferry::remote(priority = "best_effort")]
fn background(ms: u64) -> u32 {
    spin_cpu(ms)
}

#[ferry::remote]
fn urgent(ms: u64) -> (u32, u64) {
    let t = Instant::now();
    spin_cpu(ms);
    (std::process::id(), t.elapsed().as_millis() as u64)
}

#[test]
fn a_real_time_task_suspends_best_effort_work_which_then_goes_on() {
    ferry_testkit::own_process!();
    cluster();
    let be: Vec<_> = (0..2).map(|_| background::remote(2500)).collect();
    eventually("both best-effort tasks hold the CPUs", T, || {
        let s = ferry::node_stats().unwrap();
        s.available.get_milli("CPU") == 0 && s.leased_workers >= 2
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let rt = urgent::options().priority(ferry::Priority::RealTime).remote(100);
    // While it runs, the state API shows the best-effort worker it stopped.
    let mut seen = Vec::new();
    eventually("a suspended worker in `list_workers`", T, || {
        seen = ferry::state::list_workers().unwrap();
        seen.iter().any(|w| w.state == "suspended")
            || ferry::wait(std::slice::from_ref(&rt), 1, Some(Duration::ZERO)).unwrap().0.len() == 1
    });
    let (rt_pid, ran_ms) = ferry::get_timeout(&rt, T).unwrap();
    assert!(seen.iter().any(|w| w.state == "suspended"), "no worker listed as suspended while it ran: {seen:?}");
    let took = t.elapsed();
    let stats = ferry::node_stats().unwrap();
    assert!(stats.suspensions >= 1, "no best-effort worker was suspended: {stats:?}");
    // It ran alone on its CPU: its 100 ms of CPU took about 100 ms of wall time, and it
    // finished long before the best-effort tasks (2.5 s of CPU each) could have.
    assert!(
        ran_ms < 1000 && took < Duration::from_millis(2000),
        "the real-time task waited: {took:?}, ran {ran_ms} ms"
    );
    let be_pids = ferry::get_all(&be).unwrap();
    assert!(!be_pids.contains(&rt_pid), "the real-time task ran on its own worker");
    assert_eq!(ferry::recovery_stats().unwrap().task_retries, 0, "suspension loses nothing: no retry");
    eventually("the suspended worker is resumed", T, || ferry::node_stats().unwrap().suspended_workers == 0);

    // Normal tasks are not suspended: a real-time task waits for one to end.
    let normal: Vec<_> = (0..2).map(|_| urgent::remote(600)).collect();
    eventually("both normal tasks hold the CPUs", T, || ferry::node_stats().unwrap().available.get_milli("CPU") == 0);
    let before = ferry::node_stats().unwrap().suspensions;
    ferry::get_timeout(&urgent::options().priority(ferry::Priority::RealTime).remote(10), T).unwrap();
    assert_eq!(ferry::node_stats().unwrap().suspensions, before, "a normal task was suspended");
    ferry::get_all(&normal).unwrap();
}

/// A best-effort actor holding a CPU.
#[ferry::actor]
struct Cruncher {
    done: u64,
}

#[ferry::actor(priority = "best_effort")]
impl Cruncher {
    fn new() -> Self {
        Cruncher { done: 0 }
    }
    fn crunch(&mut self, ms: u64) -> u64 {
        spin_cpu(ms);
        self.done += 1;
        self.done
    }
}

/// Best-effort actors are suspended as best-effort tasks are: their state and their calls
/// go on after, and the real-time task does not wait for them.
#[test]
fn best_effort_actors_give_their_cpus_to_real_time_work() {
    ferry_testkit::own_process!();
    cluster();
    let actors: Vec<_> = (0..2).map(|_| Cruncher::options().num_cpus(1.0).remote().unwrap()).collect();
    let calls: Vec<_> = actors.iter().map(|a| a.crunch(2500)).collect();
    eventually("both actors hold the CPUs", T, || ferry::node_stats().unwrap().available.get_milli("CPU") == 0);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (_, ran_ms) =
        ferry::get_timeout(&urgent::options().priority(ferry::Priority::RealTime).remote(100), T).unwrap();
    assert!(t.elapsed() < Duration::from_millis(2000) && ran_ms < 1000, "waited for the actors: {:?}", t.elapsed());
    assert!(ferry::node_stats().unwrap().suspensions >= 1);
    assert_eq!(ferry::get_all(&calls).unwrap(), vec![1, 1]);
    // Resumed, with their state.
    let again: Vec<_> = actors.iter().map(|a| a.crunch(10)).collect();
    assert_eq!(ferry::get_all(&again).unwrap(), vec![2, 2]);
    eventually("nothing is left suspended", T, || ferry::node_stats().unwrap().suspended_workers == 0);
}
