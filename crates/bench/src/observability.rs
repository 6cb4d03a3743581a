//! `ferry-bench observability`: what recording task events costs the task path. Child
//! processes of this binary each run blocks of round trips and of the 20,000-task
//! throughput, turning recording off and on between blocks (`state::set_task_events`) in the
//! order off, on, on, off, ... (so each side follows each side equally often), so that both
//! sides share one process, its placement on the cores and its warm memory (runs in
//! separate processes differ by more than the cost measured, on a shared 2-core machine).
//!
//! The throughput is the time from the first submission to the last result, as a program
//! sees it. The events' sending and folding into the history (in the background, at a
//! lower CPU priority) then finish before the next block starts, and the CPU time of the
//! whole block (this process: the driver, its embedded node and the history's thread) is
//! measured with them: `events_cpu_cost_pct` is what recording costs in CPU per task.
//!
//! - `task_roundtrip_us_median_events_off|on`, `task_throughput_per_s_events_off|on`
//! - `events_roundtrip_cost_pct`, `events_throughput_cost_pct` (positive: slower with events)
//! - `events_cpu_cost_pct` (positive: more CPU per task with events)

use crate::{emit, info, median, noop};
use std::time::Instant;

/// Processes, and blocks of each side in each.
const PROCESSES: usize = 3;
const BLOCKS: usize = 10;

/// This process's CPU time so far (all its threads), in seconds.
fn cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Run in a child (`__events_probe`): a line per block,
/// `block ON RT_MEDIAN_US TASKS_PER_S CPU_US_PER_TASK`.
pub fn probe() {
    ferry::init(ferry::Config::default().task_events(true)).unwrap();
    for _ in 0..300 {
        ferry::get(&noop::remote()).unwrap();
    }
    let warm: Vec<_> = (0..20_000).map(|_| noop::remote()).collect();
    ferry::get_all(&warm).unwrap();
    ferry::state::flush_task_events().unwrap();
    ferry::state::summarize_tasks(None).unwrap();
    for block in 0..BLOCKS * 2 {
        // off, on, on, off, off, on, ...
        let on = block.div_ceil(2) % 2 == 1;
        ferry::state::set_task_events(on).unwrap();
        let cpu = cpu_s();
        let mut rt = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let t = Instant::now();
            ferry::get(&noop::remote()).unwrap();
            rt.push(t.elapsed().as_nanos() as f64 / 1e3);
        }
        let n = 20_000;
        let t = Instant::now();
        let refs: Vec<_> = (0..n).map(|_| noop::remote()).collect();
        ferry::get_all(&refs).unwrap();
        let tput = n as f64 / t.elapsed().as_secs_f64();
        drop(refs);
        // The block's events sent and folded in (a query folds in what is queued): nothing
        // of this block is left for the next, and its CPU time counts all of it.
        ferry::state::flush_task_events().unwrap();
        ferry::state::summarize_tasks(None).unwrap();
        let cpu_us = (cpu_s() - cpu) * 1e6 / (n + 1000) as f64;
        println!("block {} {} {} {}", on as u8, median(&mut rt), tput, cpu_us);
    }
    ferry::shutdown();
}

pub fn group() {
    let exe = std::env::current_exe().expect("this binary");
    let mut on = (Vec::new(), Vec::new(), Vec::new());
    let mut off = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PROCESSES {
        let out = std::process::Command::new(&exe).arg("__events_probe").output().expect("run the probe");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("block ")).collect();
        assert_eq!(lines.len(), BLOCKS * 2, "the probe said: {text}{}", String::from_utf8_lossy(&out.stderr));
        for line in lines {
            let v: Vec<f64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
            let side = if v[0] == 1.0 { &mut on } else { &mut off };
            side.0.push(v[1]);
            side.1.push(v[2]);
            side.2.push(v[3]);
        }
    }
    info(&format!("round trips (µs) off {:.1?} on {:.1?}", off.0, on.0));
    info(&format!("throughput (/s) off {:.0?} on {:.0?}", off.1, on.1));
    info(&format!("CPU per task (µs, driver and node) off {:.2?} on {:.2?}", off.2, on.2));
    let (rt_off, rt_on) = (median(&mut off.0), median(&mut on.0));
    let (tp_off, tp_on) = (median(&mut off.1), median(&mut on.1));
    let (cpu_off, cpu_on) = (median(&mut off.2), median(&mut on.2));
    emit("task_roundtrip_us_median_events_off", rt_off, "us");
    emit("task_roundtrip_us_median_events_on", rt_on, "us");
    emit("task_throughput_per_s_events_off", tp_off, "tasks/s");
    emit("task_throughput_per_s_events_on", tp_on, "tasks/s");
    emit("events_roundtrip_cost_pct", (rt_on / rt_off - 1.0) * 100.0, "%");
    emit("events_throughput_cost_pct", (tp_off / tp_on - 1.0) * 100.0, "%");
    emit("task_cpu_us_per_task_events_off", cpu_off, "us");
    emit("task_cpu_us_per_task_events_on", cpu_on, "us");
    emit("events_cpu_cost_pct", (cpu_on / cpu_off - 1.0) * 100.0, "%");
}
