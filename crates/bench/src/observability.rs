//! `ferry-bench observability`: what recording task events costs the task path. Child
//! processes of this binary run the round trip and the 20,000-task throughput with events
//! off and on (`FERRY_TASK_EVENTS`), alternately, twenty times each; the medians of each side
//! and their ratios are printed. Then the history's own figures: listing and summarizing it
//! once it holds the tasks of those runs.
//!
//! - `task_roundtrip_us_median_events_off|on`, `task_throughput_per_s_events_off|on`
//! - `events_roundtrip_cost_pct`, `events_throughput_cost_pct` (positive: slower with events)

use crate::{emit, info, median, noop};

/// Runs of each side (events off, on), alternating.
const ROUNDS: usize = 20;
use std::time::Instant;

/// Run in a child (`__events_probe`): one round-trip median and one throughput figure.
pub fn probe() {
    ferry::init(ferry::Config::default()).unwrap();
    for _ in 0..300 {
        ferry::get(&noop::remote()).unwrap();
    }
    let mut rt = Vec::with_capacity(3000);
    for _ in 0..3000 {
        let t = Instant::now();
        ferry::get(&noop::remote()).unwrap();
        rt.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    let warm: Vec<_> = (0..2000).map(|_| noop::remote()).collect();
    ferry::get_all(&warm).unwrap();
    let n = 20_000;
    let t = Instant::now();
    let refs: Vec<_> = (0..n).map(|_| noop::remote()).collect();
    ferry::get_all(&refs).unwrap();
    let tput = n as f64 / t.elapsed().as_secs_f64();
    println!("probe {} {}", median(&mut rt), tput);
    ferry::shutdown();
}

pub fn group() {
    let exe = std::env::current_exe().expect("this binary");
    let mut on = (Vec::new(), Vec::new());
    let mut off = (Vec::new(), Vec::new());
    for round in 0..ROUNDS * 2 {
        let events = round % 2 == 1;
        let out = std::process::Command::new(&exe)
            .arg("__events_probe")
            .env("FERRY_TASK_EVENTS", if events { "1" } else { "0" })
            .output()
            .expect("run the probe");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("probe ")).unwrap_or_else(|| panic!("probe said: {text}"));
        let v: Vec<f64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
        let side = if events { &mut on } else { &mut off };
        side.0.push(v[0]);
        side.1.push(v[1]);
    }
    info(&format!("round trips (µs) off {:.1?} on {:.1?}", off.0, on.0));
    info(&format!("throughput (/s) off {:.0?} on {:.0?}", off.1, on.1));
    let (rt_off, rt_on) = (median(&mut off.0), median(&mut on.0));
    let (tp_off, tp_on) = (median(&mut off.1), median(&mut on.1));
    emit("task_roundtrip_us_median_events_off", rt_off, "us");
    emit("task_roundtrip_us_median_events_on", rt_on, "us");
    emit("task_throughput_per_s_events_off", tp_off, "tasks/s");
    emit("task_throughput_per_s_events_on", tp_on, "tasks/s");
    emit("events_roundtrip_cost_pct", (rt_on / rt_off - 1.0) * 100.0, "%");
    emit("events_throughput_cost_pct", (tp_off / tp_on - 1.0) * 100.0, "%");
}
