//! `ferry-bench fair`: fair sharing between jobs (issue 16). A head of 4 (logical) CPUs and
//! two drivers that each keep 32 tasks of 100 ms (one CPU each) outstanding, with weights
//! 1:1, then 3:1. Each counts the tasks it finished in the same window of
//! `FERRY_BENCH_FAIR_SECONDS` (default 30) and the figure is the fair-share error: how far
//! the first job's share of the CPU-seconds is from its weight's share
//! (`fair_share_error_1to1`, `fair_share_error_3to1`, as a fraction).

use crate::{emit, info};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TASK_MS: u64 = 100;

#[ferry::remote]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One driver (`FERRY_BENCH_FAIR_JOB=address`, window `FERRY_BENCH_FAIR_WINDOW=from:to`).
pub fn job(address: &str) {
    let window = std::env::var("FERRY_BENCH_FAIR_WINDOW").unwrap();
    let (from, to) = window.split_once(':').unwrap();
    let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
    ferry::init(ferry::Config::default().address(address)).unwrap();
    let mut pending: Vec<_> = (0..32).map(|_| nap::remote(TASK_MS)).collect();
    let mut done = 0;
    while unix_ms() < to {
        let (ready, rest) = ferry::wait(&pending, 1, Some(Duration::from_millis(200))).unwrap();
        let now = unix_ms();
        if now >= from && now < to {
            done += ready.len();
        }
        pending = rest;
        while pending.len() < 32 {
            pending.push(nap::remote(TASK_MS));
        }
    }
    println!("{done}");
    ferry::shutdown();
}

pub fn group() {
    let here = std::env::current_exe().unwrap();
    let ferry = here.with_file_name("ferry");
    assert!(ferry.exists(), "build the `ferry` binary next to ferry-bench (cargo build --release -p ferry-cli)");
    let seconds: u64 = std::env::var("FERRY_BENCH_FAIR_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let mut cmd = std::process::Command::new(&ferry);
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "4", "--block"]);
    let head = ferry_testkit::Head::start(cmd, Duration::from_secs(60)).expect("a head");
    let only = std::env::var("FERRY_BENCH_FAIR_ONLY").ok();
    for (a, b, name) in [(1u32, 1u32, "fair_share_error_1to1"), (3, 1, "fair_share_error_3to1")] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let from = unix_ms() + 3000;
        let to = from + seconds * 1000;
        let drivers: Vec<_> = [a, b]
            .iter()
            .map(|w| {
                std::process::Command::new(&here)
                    .env("FERRY_BENCH_FAIR_JOB", &head.address)
                    .env("FERRY_TOKEN", &head.token)
                    .env("FERRY_JOB_WEIGHT", w.to_string())
                    .env("FERRY_BENCH_FAIR_WINDOW", format!("{from}:{to}"))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("a driver")
            })
            .collect();
        let done: Vec<f64> = drivers
            .into_iter()
            .map(|d| {
                let out = d.wait_with_output().expect("the driver ends");
                String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
            })
            .collect();
        let share = done[0] / (done[0] + done[1]).max(1.0);
        let want = a as f64 / (a + b) as f64;
        emit(name, (share - want).abs(), "fraction");
        info(&format!(
            "weights {a}:{b}: {} and {} tasks of {TASK_MS} ms in {seconds} s ({:.1}% of the 4 CPUs' capacity); \
             first job's share {:.3} (its weight's {:.3})",
            done[0],
            done[1],
            (done[0] + done[1]) * TASK_MS as f64 / 1000.0 / (4.0 * seconds as f64) * 100.0,
            share,
            want
        ));
    }
}
