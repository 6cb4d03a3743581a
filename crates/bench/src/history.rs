//! `ferry-bench observability`, second part: the state tools at scale. A head started by the
//! `ferry` binary next to this one (with its dashboard) runs a driver (this binary again,
//! `FERRY_BENCH_HISTORY_DRIVER`) that submits `FERRY_BENCH_HISTORY_TASKS` no-op tasks (default
//! 1,000,000, in waves of 100,000), then makes `FERRY_BENCH_HISTORY_ACTORS` real actors
//! (default 10,000) in waves of 1,000: each created and called once; every wave but the last
//! is released, so the nodes keep 9,000 dead actors' records and 1,000 living actors while
//! the queries run (10,000 living at once is issue 17's). Then each query is timed (median
//! of 7):
//!
//! - `history_cli_list_tasks_ms`, `history_cli_summary_tasks_ms`, `history_cli_list_actors_ms`
//!   (the `ferry` command, start to exit);
//! - `history_api_<page>_ms` for the dashboard's pages' requests (`/`, `/api/cluster`,
//!   `/api/jobs`, `/api/tasks?limit=50`, `/api/tasks` filtered by state and name and paged,
//!   `/api/summary`, `/api/actors`, `/api/memory`, `/metrics`);
//! - `history_control_store_rss_mb` (the process that keeps the history),
//!   `history_head_node_rss_mb` (the node that keeps the actors' records), `history_records`
//!   and `history_dropped_records` (as the history counts itself), `history_tasks_per_s` and
//!   `history_actors_per_s` (the run). `FERRY_BENCH_HISTORY_TASKS=0` skips this part.

use crate::{emit, info, median};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[ferry::remote]
fn noop_h() {}

/// An actor that holds nothing (0 CPUs, as every actor by default).
#[ferry::actor]
pub struct Holder(u64);

#[ferry::actor]
impl Holder {
    pub fn new() -> Self {
        Holder(0)
    }
    pub fn poke(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// The driver: `tasks` tasks in waves, then `actors` actors in waves of 1,000, the last wave
/// kept alive until its stdin closes (while the queries run).
pub fn driver(tasks: usize, actors: usize) {
    ferry::init(ferry::Config::default()).unwrap();
    let t = Instant::now();
    let mut left = tasks;
    while left > 0 {
        let k = left.min(100_000);
        let refs: Vec<_> = (0..k).map(|_| noop_h::remote()).collect();
        ferry::get_all(&refs).unwrap();
        left -= k;
    }
    println!("tasks_per_s {}", tasks as f64 / t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut left = actors;
    let mut kept = Vec::new();
    while left > 0 {
        let k = left.min(1000);
        let wave: Vec<_> = (0..k).map(|_| Holder::remote().unwrap()).collect();
        let calls: Vec<_> = wave.iter().map(|a| a.poke()).collect();
        ferry::get_all(&calls).unwrap();
        left -= k;
        if left == 0 {
            kept = wave;
        } else {
            let living = kept.len() as u64;
            drop(wave);
            // Released: wait until their processes are gone before the next wave.
            let end = Instant::now() + Duration::from_secs(120);
            while ferry::node_stats().unwrap().actors > living && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    println!("actors_per_s {}", actors as f64 / t.elapsed().as_secs_f64());
    println!("ready");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(kept);
    ferry::shutdown();
}

struct Head {
    child: std::process::Child,
    address: String,
    token: String,
    dashboard: String,
    access: String,
    control_pid: u32,
}

fn start_head(ferry: &std::path::Path) -> Head {
    let mut child = Command::new(ferry)
        .args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block", "--dashboard-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the head");
    let out = child.stdout.take().expect("its output");
    let mut h = Head {
        child,
        address: String::new(),
        token: String::new(),
        dashboard: String::new(),
        access: String::new(),
        control_pid: 0,
    };
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if let Some(a) = line.strip_prefix("address: ") {
            h.address = a.into();
        } else if let Some(t) = line.strip_prefix("token: ") {
            h.token = t.into();
        } else if let Some(u) = line.strip_prefix("dashboard: http://") {
            let u = u.split(' ').next().unwrap_or_default();
            let (addr, token) = u.split_once("/?token=").expect("a login URL");
            (h.dashboard, h.access) = (addr.into(), token.into());
        } else if let Some(c) = line.strip_prefix("control store: ") {
            h.control_pid =
                c.split("(pid ").nth(1).and_then(|p| p.split(',').next()).and_then(|p| p.parse().ok()).unwrap_or(0);
        } else if line == "ready" {
            break;
        }
    }
    h
}

/// One GET; the body.
fn get(addr: &str, token: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("the dashboard");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nCookie: ferry_dashboard={token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    assert!(raw.starts_with("HTTP/1.1 200"), "GET {path}: {}", raw.lines().next().unwrap_or(""));
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn timed(mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&mut v)
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

pub fn group() {
    let n: usize = std::env::var("FERRY_BENCH_HISTORY_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    if n == 0 {
        return;
    }
    let exe = std::env::current_exe().expect("this binary");
    let ferry = exe.with_file_name("ferry");
    assert!(ferry.exists(), "build the `ferry` binary next to ferry-bench (cargo build --release -p ferry-cli)");
    let mut head = start_head(&ferry);
    info(&format!("history at scale: {n} tasks on a head at {}, its dashboard at {}", head.address, head.dashboard));
    let actors: usize = std::env::var("FERRY_BENCH_HISTORY_ACTORS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let mut driver = Command::new(&exe)
        .env("FERRY_BENCH_HISTORY_DRIVER", format!("{n},{actors}"))
        .env("FERRY_ADDRESS", &head.address)
        .env("FERRY_TOKEN", &head.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the driver");
    let mut said = BufReader::new(driver.stdout.take().expect("its output")).lines().map_while(Result::ok);
    let mut figure = |name: &str| -> f64 {
        let line = said.by_ref().find(|l| l.starts_with(name) || l == "ready").unwrap_or_default();
        line.strip_prefix(name).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    };
    emit("history_tasks_per_s", figure("tasks_per_s"), "tasks/s");
    emit("history_actors_per_s", figure("actors_per_s"), "actors/s");
    assert!(said.any(|l| l == "ready"), "the driver ended before it was ready");
    let ferry_cmd = |args: &[&str]| {
        let o = Command::new(&ferry)
            .args(args)
            .env("FERRY_ADDRESS", &head.address)
            .env("FERRY_TOKEN", &head.token)
            .output()
            .expect("run ferry");
        assert!(o.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    // Everything folded in before timing (a query folds in what is queued).
    let _ = get(&head.dashboard, &head.access, "/api/summary");
    emit("history_cli_list_tasks_ms", timed(|| drop(ferry_cmd(&["list", "tasks", "--limit", "50"]))), "ms");
    emit("history_cli_summary_tasks_ms", timed(|| drop(ferry_cmd(&["summary", "tasks"]))), "ms");
    emit("history_cli_list_actors_ms", timed(|| drop(ferry_cmd(&["list", "actors", "--limit", "50"]))), "ms");
    let pages = [
        ("index", "/"),
        ("cluster", "/api/cluster"),
        ("jobs", "/api/jobs"),
        ("tasks", "/api/tasks?limit=50"),
        ("tasks_filtered_paged", "/api/tasks?limit=50&offset=5000&state=finished&name=noop"),
        ("summary", "/api/summary"),
        ("actors", "/api/actors?limit=50"),
        ("actors_dead_paged", "/api/actors?limit=50&offset=5000&state=dead"),
        ("memory", "/api/memory"),
        ("metrics", "/metrics"),
    ];
    for (name, path) in pages {
        let ms = timed(|| drop(get(&head.dashboard, &head.access, path)));
        emit(&format!("history_api_{name}_ms"), ms, "ms");
    }
    let tasks = get(&head.dashboard, &head.access, "/api/tasks?limit=1");
    let field = |k: &str| {
        tasks
            .split(&format!("\"{k}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    emit("history_records", field("records").unwrap_or(0.0), "records");
    emit("history_dropped_records", field("dropped_records").unwrap_or(0.0), "records");
    emit("history_control_store_rss_mb", rss_mb(head.control_pid), "MB");
    // The head's node daemon, which keeps the actors' records (the dead ones bounded).
    emit("history_head_node_rss_mb", rss_mb(head.child.id()), "MB");
    let actors_now = get(&head.dashboard, &head.access, "/api/actors?limit=1");
    info(&format!("actors in the nodes' tables while timed: {}", actors_now.chars().take(400).collect::<String>()));
    drop(driver.stdin.take());
    let _ = driver.wait();
    let _ = Command::new(&ferry)
        .args(["stop"])
        .env("FERRY_ADDRESS", &head.address)
        .env("FERRY_TOKEN", &head.token)
        .output();
    let end = Instant::now() + Duration::from_secs(20);
    while head.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = head.child.kill();
}
