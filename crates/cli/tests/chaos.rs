//! Chaos: a tree reduction (8,192 leaves of 128 KiB, 16,383 tasks, every intermediate object
//! in a store) runs on a three-host cluster while the harness kills worker processes on the
//! members at random moments, one whole member (killed, or frozen with its workers), and the
//! control store (which the head starts again). Seeded (`FERRY_CHAOS_SEED`, default
//! two seeds), so a failing run can be replayed. Every run must end, within its bound, with
//! exactly the failure-free result or a typed error; then no stored object may be left.

use ferry::prelude::*;
use ferry_testkit::{wait_exit, Cluster, Hosts};
use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const LEAVES: u64 = 8192;
const LEN: usize = 16 << 10; // u64s per object: 128 KiB

#[ferry::remote]
fn leaf(i: u64) -> Vec<u64> {
    (0..LEN as u64).map(|k| i.wrapping_mul(31).wrapping_add(k)).collect()
}

#[ferry::remote]
fn combine(a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

#[ferry::actor]
#[derive(Default)]
pub struct Tally {
    n: u64,
}

#[ferry::actor]
impl Tally {
    pub fn new() -> Self {
        Tally::default()
    }
    pub fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

fn expected() -> Vec<u64> {
    let mut out = vec![0u64; LEN];
    for i in 0..LEAVES {
        for (k, o) in out.iter_mut().enumerate() {
            *o = o.wrapping_add(i.wrapping_mul(31).wrapping_add(k as u64));
        }
    }
    out
}

ferry_testkit::job!("FERRY_TEST_CHAOS_JOB", chaos_job);

fn chaos_job(address: &str) {
    ferry::init(ferry::Config::default().address(address)).unwrap();
    println!("started");
    // Actors too: calls interleaved with the tree, answered or failed with a typed error
    // (a restarted actor starts over, so only liveness is checked).
    let tally = Tally::options().max_restarts(5).max_task_retries(5).remote().unwrap();
    let mut calls = Vec::new();
    let mut level: Vec<ferry::ObjectRef<Vec<u64>>> = Vec::new();
    for i in 0..LEAVES {
        level.push(leaf::remote(i));
        if i % 32 == 0 {
            calls.push(tally.add(1));
        }
    }
    while level.len() > 1 {
        level = level.chunks(2).map(|p| combine::remote(&p[0], &p[1])).collect();
    }
    match ferry::get_timeout(&level[0], Duration::from_secs(45)) {
        Ok(v) if v == expected() => println!("result right"),
        Ok(_) => println!("result WRONG"),
        Err(ferry::Error::Timeout { .. }) => println!("result HUNG"),
        Err(e) => println!("result error: {e}"),
    }
    drop(level);
    let hung = calls
        .iter()
        .filter(|c| matches!(ferry::get_timeout(c, Duration::from_secs(20)), Err(ferry::Error::Timeout { .. })))
        .count();
    println!("actor calls hung: {hung}");
    drop(calls);
    drop(tally);
    // Nothing may be left in the stores of the nodes still alive.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left: u64 = ferry::nodes().unwrap().iter().filter(|n| n.alive).map(|n| n.objects).sum();
        if left == 0 {
            println!("stores empty");
            break;
        }
        if Instant::now() > end {
            println!("objects left: {left}");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ferry::shutdown();
    std::process::exit(0);
}

/// A small seeded generator (xorshift), for replayable chaos.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn run(seed: u64) {
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let two = || vec!["--num-cpus".to_string(), "2".to_string()];
    let state = std::env::temp_dir().join(format!("ferry-test-chaos-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut head = two();
    head.extend(["--state-dir".to_string(), state.display().to_string()]);
    let mut cluster =
        Cluster::start_with(&hosts, ferry, &[head, two(), two()], &[("FERRY_NODE_TIMEOUT_MS", "1000")], T).unwrap();
    let mut job = cluster
        .job(&hosts, 0, std::env::current_exe().unwrap(), "FERRY_TEST_CHAOS_JOB", &cluster.head.address)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = job.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    assert_eq!(rx.recv_timeout(T).ok().as_deref(), Some("started"), "seed {seed}: the job did not start");
    let mut rng = Rng(seed.max(1));
    let mut lines = Vec::new();
    let mut killed_workers = 0;
    let node_victim = (rng.next() % 2) as usize;
    let node_kill_at = 2 + rng.next() % 6;
    let control_kill_at = 1 + rng.next() % 8;
    // The member is killed, or frozen (SIGSTOP on it and its workers: their sockets stay open,
    // only the missing heartbeats show it is gone); thawed at the end.
    let freeze = rng.next().is_multiple_of(2);
    let mut frozen: Vec<u32> = Vec::new();
    let mut node_killed = false;
    let mut control_killed = false;
    // Chaos while the job runs: a worker every 50–250 ms, one whole member once, and the
    // control store once (the head starts it again).
    for round in 0..40u64 {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50 + rng.next() % 200)) {
            lines.push(l);
            break;
        }
        if round == control_kill_at {
            let pid = std::fs::read_to_string(state.join("control.pid")).ok().and_then(|p| p.trim().parse().ok());
            if let Some(pid) = pid {
                ferry_testkit::signal(pid, 9);
                control_killed = true;
            }
        }
        if round == node_kill_at && !node_killed {
            let pid = cluster.members[node_victim].child.id();
            if freeze {
                frozen = std::iter::once(pid).chain(ferry_testkit::children_of(pid)).collect();
                for p in &frozen {
                    ferry_testkit::signal(*p, 19);
                }
            } else {
                let _ = cluster.members[node_victim].child.kill();
                let _ = cluster.members[node_victim].child.wait();
            }
            node_killed = true;
            continue;
        }
        let alive: Vec<usize> = (0..cluster.members.len()).filter(|i| !(node_killed && *i == node_victim)).collect();
        let m = alive[(rng.next() % alive.len() as u64) as usize];
        let ws = ferry_testkit::children_of(cluster.members[m].child.id());
        if !ws.is_empty() {
            let w = ws[(rng.next() % ws.len() as u64) as usize];
            ferry_testkit::signal(w, 9);
            killed_workers += 1;
        }
    }
    let end = Instant::now() + T;
    while lines.iter().all(|l| !l.starts_with("stores") && !l.starts_with("objects left")) {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let exited = wait_exit(&mut job, T);
    if exited.is_err() {
        let _ = job.kill();
    }
    for p in &frozen {
        ferry_testkit::signal(*p, 18);
    }
    let how = if freeze { "frozen" } else { "killed" };
    eprintln!(
        "seed {seed}: killed {killed_workers} workers, node {how}: {node_killed}, control store killed: \
         {control_killed}; job said {lines:?}"
    );
    let result = lines.iter().find(|l| l.starts_with("result")).cloned().unwrap_or_default();
    assert!(result == "result right" || result.starts_with("result error"), "seed {seed}: {result:?} ({lines:?})");
    assert!(lines.iter().any(|l| l == "stores empty"), "seed {seed}: {lines:?}");
    assert!(lines.iter().any(|l| l == "actor calls hung: 0"), "seed {seed}: {lines:?}");
    assert!(exited.is_ok(), "seed {seed}: the job hung");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_tree_reduction_survives_killed_workers_and_a_killed_node() {
    let seeds: Vec<u64> = match std::env::var("FERRY_CHAOS_SEED") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2],
    };
    for seed in seeds {
        run(seed);
    }
}
