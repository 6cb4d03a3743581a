//! `ferry-bench priority`: the cases of `../shared/anchors/priority_bench.py`, with its figure
//! names. On a 2-CPU node a "real-time" task of 5 ms of work is submitted every 50 ms on a
//! fixed schedule for `FERRY_BENCH_PRIORITY_SECONDS` (default 20), alone (`prio_alone_*`),
//! then while a driver thread keeps 8 (`prio_be8_*`) or 64 (`prio_be64_*`) best-effort tasks
//! of 200 ms of work outstanding. Latency is submit → result seen by the driver; queue delay
//! is submit → the task starts in its worker (one clock, one machine).
//!
//! `ferry-bench priority_xnode` runs the same cases on three network-namespace nodes of
//! `FERRY_BENCH_PRIORITY_NODE_CPUS` (default 1) CPUs each (`prio_xnode_*`), every task spread
//! over the nodes: each node's real-time tasks must take CPUs from its own best-effort work.
//!
//! The work is CPU time, not wall time (Ray's script spins on the wall clock): a suspended
//! best-effort task must not be credited with the time it spent stopped.

use crate::{emit, info, percentile};
use ferry::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RT_PERIOD: Duration = Duration::from_millis(50);
const RT_WORK_MS: u64 = 5;
const BE_WORK_MS: u64 = 200;

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a plain syscall writing into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Spins for `ms` of this thread's CPU time.
fn work(ms: u64) {
    let start = thread_cpu();
    while thread_cpu() - start < Duration::from_millis(ms) {
        std::hint::spin_loop();
    }
}

/// The real-time task: when it started (Unix seconds), then its work.
#[ferry::remote(priority = "real_time")]
fn rt_task() -> f64 {
    let start = now_s();
    work(RT_WORK_MS);
    start
}

#[ferry::remote(priority = "best_effort")]
fn be_task() -> u32 {
    work(BE_WORK_MS);
    1
}

/// Keeps `depth` best-effort tasks outstanding; records when each is seen done.
struct BeStream {
    stop: Arc<AtomicBool>,
    completions: Arc<Mutex<Vec<f64>>>,
    thread: Option<std::thread::JoinHandle<Vec<ObjectRef<u32>>>>,
}

/// Where the tasks go: this node first (one node), or round-robin over the nodes.
fn be_task_here(spread: bool) -> ObjectRef<u32> {
    if spread {
        be_task::options().scheduling_strategy(SchedulingStrategy::Spread).remote()
    } else {
        be_task::remote()
    }
}

fn rt_task_here(spread: bool) -> ObjectRef<f64> {
    if spread {
        rt_task::options().scheduling_strategy(SchedulingStrategy::Spread).remote()
    } else {
        rt_task::remote()
    }
}

impl BeStream {
    fn start(depth: usize, spread: bool) -> BeStream {
        let stop = Arc::new(AtomicBool::new(false));
        let completions = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), completions.clone());
        let thread = std::thread::spawn(move || {
            let mut pending: Vec<ObjectRef<u32>> = (0..depth).map(|_| be_task_here(spread)).collect();
            while !s.load(Ordering::SeqCst) {
                let (ready, rest) = ferry::wait(&pending, 1, Some(Duration::from_millis(500))).unwrap();
                if ready.is_empty() {
                    pending = rest;
                    continue;
                }
                let now = now_s();
                let (more, rest) = ferry::wait(&rest, rest.len(), Some(Duration::ZERO)).unwrap();
                let n = ready.len() + more.len();
                c.lock().unwrap().extend(std::iter::repeat_n(now, n));
                pending = rest;
                if !s.load(Ordering::SeqCst) {
                    pending.extend((0..depth - pending.len()).map(|_| be_task_here(spread)));
                }
            }
            pending
        });
        BeStream { stop, completions, thread: Some(thread) }
    }

    /// Stops topping up, cancels what is queued and lets the running ones end.
    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let pending = self.thread.take().map(|t| t.join().unwrap()).unwrap_or_default();
        for r in &pending {
            let _ = ferry::cancel(r);
        }
        for r in &pending {
            let _ = ferry::get_timeout(r, Duration::from_secs(60));
        }
    }
}

struct Run {
    submit: Vec<f64>,
    done: Vec<f64>,
    start: Vec<f64>,
    t_end: f64,
}

/// The real-time window: submit times, the refs, when each result was seen (stamped by the
/// collector thread), and when the window closed.
struct RtWindow {
    submit: Vec<f64>,
    refs: Vec<ObjectRef<f64>>,
    done: Arc<Mutex<Vec<f64>>>,
    t_end: f64,
    collector: std::thread::JoinHandle<()>,
}

/// Submits real-time tasks on the fixed schedule; a collector thread stamps each result as
/// it arrives.
fn rt_run(seconds: f64, spread: bool) -> RtWindow {
    let n = (seconds / RT_PERIOD.as_secs_f64()) as usize;
    let done = Arc::new(Mutex::new(vec![f64::NAN; n]));
    let (tx, rx) = std::sync::mpsc::channel::<(usize, ObjectRef<f64>)>();
    let d = done.clone();
    let collector = std::thread::spawn(move || {
        let mut pending: Vec<(usize, ObjectRef<f64>)> = Vec::new();
        let mut open = true;
        while open || !pending.is_empty() {
            loop {
                match rx.try_recv() {
                    Ok(x) => pending.push(x),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if pending.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let refs: Vec<ObjectRef<f64>> = pending.iter().map(|(_, r)| r.clone()).collect();
            let (ready, _) = ferry::wait(&refs, 1, Some(Duration::from_millis(2))).unwrap();
            if ready.is_empty() {
                continue;
            }
            let now = now_s();
            let ids: std::collections::HashSet<_> = ready.iter().map(|r| r.id()).collect();
            let mut dd = d.lock().unwrap();
            pending.retain(|(i, r)| {
                if ids.contains(&r.id()) {
                    dd[*i] = now;
                    false
                } else {
                    true
                }
            });
        }
    });
    let mut submit = vec![f64::NAN; n];
    let mut refs = Vec::with_capacity(n);
    let t0 = Instant::now();
    for (i, s) in submit.iter_mut().enumerate() {
        let target = t0 + RT_PERIOD * i as u32;
        if let Some(d) = target.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        *s = now_s();
        let r = rt_task_here(spread);
        tx.send((i, r.clone())).unwrap();
        refs.push(r);
    }
    let t_end = now_s() + (t0 + RT_PERIOD * n as u32).saturating_duration_since(Instant::now()).as_secs_f64();
    // The collector ends once every result is in.
    drop(tx);
    RtWindow { submit, refs, done, t_end, collector }
}

fn report(prefix: &str, run: &Run, be: Option<&BeStream>, cpus: f64) {
    let lat: Vec<f64> = run.submit.iter().zip(&run.done).map(|(s, d)| (d - s) * 1e3).collect();
    let ok: Vec<f64> = lat.iter().copied().filter(|x| x.is_finite()).collect();
    emit(&format!("{prefix}_rt_submitted"), run.submit.len() as f64, "tasks");
    emit(
        &format!("{prefix}_rt_completed_in_window"),
        run.done.iter().filter(|d| d.is_finite() && **d <= run.t_end).count() as f64,
        "tasks",
    );
    emit(&format!("{prefix}_rt_completed_total"), ok.len() as f64, "tasks");
    if !ok.is_empty() {
        for (q, nm) in [(50.0, "p50"), (90.0, "p90"), (99.0, "p99")] {
            emit(&format!("{prefix}_rt_latency_ms_{nm}"), percentile(&mut ok.clone(), q), "ms");
        }
        emit(&format!("{prefix}_rt_latency_ms_max"), ok.iter().cloned().fold(0.0, f64::max), "ms");
        emit(&format!("{prefix}_rt_latency_ms_mean"), ok.iter().sum::<f64>() / ok.len() as f64, "ms");
        let mut qd: Vec<f64> =
            run.submit.iter().zip(&run.start).map(|(s, t)| (t - s) * 1e3).filter(|x| x.is_finite()).collect();
        emit(&format!("{prefix}_rt_queue_delay_ms_p50"), percentile(&mut qd, 50.0), "ms");
        emit(&format!("{prefix}_rt_queue_delay_ms_p99"), percentile(&mut qd, 99.0), "ms");
        emit(
            &format!("{prefix}_rt_frac_over_50ms"),
            ok.iter().filter(|x| **x > 50.0).count() as f64 / ok.len() as f64,
            "fraction",
        );
    }
    if let Some(be) = be {
        let t_start = run.submit[0];
        let c = be.completions.lock().unwrap().iter().filter(|x| **x >= t_start && **x <= run.t_end).count();
        let window = run.t_end - t_start;
        emit(&format!("{prefix}_be_tasks_completed_per_s"), c as f64 / window, "tasks/s");
        // What the CPUs could do for best-effort work beside the real-time work's share.
        let rt_share = RT_WORK_MS as f64 / RT_PERIOD.as_millis() as f64;
        let ideal = (cpus - rt_share) / (BE_WORK_MS as f64 / 1000.0);
        emit(&format!("{prefix}_be_frac_of_capacity_left"), c as f64 / window / ideal, "fraction");
        info(&format!(
            "{prefix}: BE completions in window {c}; ideal with {cpus} CPUs less the RT share {:.0}",
            ideal * window
        ));
    }
}

/// One case: `cpus` is what the best-effort work can use at most (the host's cores when the
/// nodes' CPUs add up to more).
fn case(prefix: &str, seconds: f64, depth: usize, spread: bool, cpus: f64) {
    let mut be = (depth > 0).then(|| BeStream::start(depth, spread));
    if be.is_some() {
        std::thread::sleep(Duration::from_secs(2));
    }
    let w = rt_run(seconds, spread);
    if let Some(b) = be.as_mut() {
        b.shutdown();
    }
    // Every result within 120 s (each `get` is bounded), after which the collector ends.
    let start: Vec<f64> =
        w.refs.iter().map(|r| ferry::get_timeout(r, Duration::from_secs(120)).unwrap_or(f64::NAN)).collect();
    if start.iter().all(|s| s.is_finite()) {
        let _ = w.collector.join();
    }
    let done = w.done.lock().unwrap().clone();
    report(prefix, &Run { submit: w.submit, done, start, t_end: w.t_end }, be.as_ref(), cpus);
    if !spread {
        info(&format!("{prefix}: suspensions so far {}", ferry::node_stats().unwrap().suspensions));
    }
    std::thread::sleep(Duration::from_secs(2));
}

/// A best-effort task that holds the node's one `accel` (a device suspension cannot free).
#[ferry::remote(priority = "best_effort", resources(accel = 1))]
fn be_accel(ms: u64) -> u32 {
    work(ms);
    1
}

/// A real-time task that needs the `accel`: when it started.
#[ferry::remote(priority = "real_time", resources(accel = 1))]
fn rt_accel() -> f64 {
    let start = now_s();
    work(RT_WORK_MS);
    start
}

#[ferry::remote(priority = "best_effort")]
fn be_long(ms: u64) -> u32 {
    work(ms);
    1
}

/// Preemption latency (issue 16): a real-time task submitted to a node whose resources
/// best-effort work holds, one at a time, `n` times; submit → running in its worker.
/// `prio_preempt_suspend_*`: the best-effort tasks hold both CPUs (suspension);
/// `prio_preempt_reset_*`: one holds the node's `accel`, which the real-time task needs
/// (reset: its worker is killed and its task runs again).
fn preempt_case(prefix: &str, n: usize, reset: bool) {
    let mut lat = Vec::new();
    let mut be: Vec<ObjectRef<u32>> = Vec::new();
    for _ in 0..n {
        // Top the best-effort work up (a reset task runs again by itself).
        be.retain(|r| ferry::wait(std::slice::from_ref(r), 1, Some(Duration::ZERO)).unwrap().0.is_empty());
        let want = if reset { 1 } else { 2 };
        while be.len() < want {
            be.push(if reset {
                be_accel::options().max_preemptions(u32::MAX).remote(60_000)
            } else {
                be_long::remote(60_000)
            });
        }
        // Until it holds what the real-time task needs.
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let s = ferry::node_stats().unwrap();
            let held = if reset { s.available.get_milli("accel") == 0 } else { s.available.get_milli(ferry::CPU) == 0 };
            if held && s.suspended_workers == 0 && s.leased_workers as usize >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        let t = now_s();
        let r = if reset { rt_accel::remote() } else { rt_task::remote() };
        let started = ferry::get_timeout(&r, Duration::from_secs(60)).unwrap();
        lat.push((started - t) * 1e3);
    }
    let resets = ferry::node_stats().unwrap().resets;
    for r in &be {
        let _ = ferry::cancel_with(r, ferry::CancelOptions { force: true, recursive: true });
    }
    for r in &be {
        let _ = ferry::get_timeout(r, Duration::from_secs(60));
    }
    emit(&format!("{prefix}_ms_p50"), percentile(&mut lat.clone(), 50.0), "ms");
    emit(&format!("{prefix}_ms_p99"), percentile(&mut lat.clone(), 99.0), "ms");
    info(&format!("{prefix}: {n} preemptions; resets on the node so far {resets}"));
    std::thread::sleep(Duration::from_secs(1));
}

pub fn group() {
    let seconds = seconds();
    ferry::init(ferry::Config::default().num_cpus(2).resource("accel", 1.0)).unwrap();
    // Warm: a worker for each priority class.
    ferry::get(&rt_task::remote()).unwrap();
    ferry::get_all(&(0..2).map(|_| be_task::remote()).collect::<Vec<_>>()).unwrap();
    info(&format!(
        "RT: {RT_WORK_MS} ms of CPU every {} ms for {seconds} s; BE: {BE_WORK_MS} ms of CPU each",
        RT_PERIOD.as_millis()
    ));
    case("prio_alone", seconds, 0, false, 2.0);
    case("prio_be8", seconds, 8, false, 2.0);
    case("prio_be64", seconds, 64, false, 2.0);
    let n = std::env::var("FERRY_BENCH_PREEMPTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    preempt_case("prio_preempt_suspend", n, false);
    preempt_case("prio_preempt_reset", n, true);
    ferry::shutdown();
}

fn seconds() -> f64 {
    std::env::var("FERRY_BENCH_PRIORITY_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20.0)
}

fn node_cpus() -> String {
    std::env::var("FERRY_BENCH_PRIORITY_NODE_CPUS").unwrap_or_else(|_| "1".into())
}

/// `priority_xnode`: three namespace nodes, the job on the head's host (this binary again,
/// `FERRY_BENCH_PRIORITY_JOB`).
pub fn xnode_group() {
    let here = std::env::current_exe().unwrap();
    let ferry = here.with_file_name("ferry");
    assert!(ferry.exists(), "build the `ferry` binary next to ferry-bench (cargo build --release -p ferry-cli)");
    let hosts = ferry_testkit::Hosts::new(3).expect("network namespaces (run as root, with `ip`)");
    let args: Vec<Vec<String>> = (0..3).map(|_| vec!["--num-cpus".to_string(), node_cpus()]).collect();
    let cluster = ferry_testkit::Cluster::start(&hosts, &ferry.to_string_lossy(), &args, Duration::from_secs(60))
        .expect("cluster");
    info(&format!("3 namespace nodes, {} CPU(s) each, head at {}", node_cpus(), cluster.head.address));
    let out =
        cluster.job(&hosts, 0, &here, "FERRY_BENCH_PRIORITY_JOB", &cluster.head.address).output().expect("run the job");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The cross-node job: the cases with every task spread over the nodes.
pub fn xnode_job(address: &str) {
    ferry::init(ferry::Config::default().address(address)).expect("join the cluster");
    let nodes = ferry::nodes().unwrap().into_iter().filter(|n| n.alive).count();
    let logical = nodes as f64 * node_cpus().parse::<f64>().unwrap_or(1.0);
    let cores = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(2.0);
    let cpus = logical.min(cores);
    // Warm every node's workers for both priorities.
    let warm: Vec<_> = (0..nodes * 2).map(|_| rt_task_here(true)).collect();
    ferry::get_all(&warm).unwrap();
    let warm: Vec<_> = (0..nodes * 2).map(|_| be_task_here(true)).collect();
    ferry::get_all(&warm).unwrap();
    let seconds = seconds();
    info(&format!("{nodes} nodes, {logical} CPUs in all on {cores} cores; every task spread"));
    let per = nodes * 8;
    case("prio_xnode_alone", seconds, 0, true, cpus);
    case(&format!("prio_xnode_be{per}"), seconds, per, true, cpus);
    ferry::shutdown();
}
