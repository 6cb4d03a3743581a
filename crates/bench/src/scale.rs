//! `ferry-bench scale`: ferry's envelope (issue 17).
//!
//! - `tasks_{100k,300k,1m}_end_to_end_s` and `_per_task_us`: one driver submits N no-op tasks at
//!   once and gets them all (`get_all`), on the embedded cluster, each N in a fresh process.
//! - `owner_bytes_per_pending_task`: the driver's memory per task while a million wait (on an
//!   object not ready yet, so none runs).
//! - `nodes_20_formation_s`, `nodes_20_task_throughput_per_s` beside
//!   `single_node_task_throughput_per_s`, `control_store_cpu_us_per_heartbeat`: 20 node daemons
//!   on network-namespace hosts (root), 2 CPUs each.
//! - `sim_1000_*`: one control store and 1,000 simulated nodes (a load generator: each a
//!   connection that joins and heartbeats as a node does): its CPU and memory, and the time to
//!   tell every node of a death.
//! - `actors_{n}_*` (`FERRY_BENCH_SCALE_ONLY=actors`, n = `FERRY_BENCH_SCALE_ACTOR_COUNT`,
//!   10,000 by default): Ray's many_actors shape over 5 namespace nodes: created, each called
//!   once, released; processes, threads and PSS per actor, each node's process table, and what
//!   the node daemons and the control store hold.

use crate::{emit, info, median};
use ferry::prelude::*;
use ferry::SchedulingStrategy;
use std::time::{Duration, Instant};

#[ferry::remote]
fn tick() {}

/// Waits (bounded) until `marker` exists: a gate the driver opens.
#[ferry::remote]
fn gate(marker: String) -> u8 {
    let end = Instant::now() + Duration::from_secs(300);
    while !std::path::Path::new(&marker).exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    1
}

#[ferry::remote]
fn after(_g: u8) {}

fn label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1000 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

/// This process's resident and peak resident bytes.
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |k: &str| {
        s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// `FERRY_BENCH_SCALE_TASKS=N`: one burst of N tasks in this fresh process.
pub fn tasks_child(n: usize) {
    ferry::init(ferry::Config::default()).expect("start the embedded cluster");
    let warm: Vec<_> = (0..5000).map(|_| tick::remote()).collect();
    ferry::get_all(&warm).unwrap();
    drop(warm);
    let t = Instant::now();
    let refs: Vec<_> = (0..n).map(|_| tick::remote()).collect();
    let submitted = t.elapsed().as_secs_f64();
    ferry::get_all(&refs).unwrap();
    let total = t.elapsed().as_secs_f64();
    let l = label(n);
    emit(&format!("tasks_{l}_submit_s"), submitted, "s");
    emit(&format!("tasks_{l}_end_to_end_s"), total, "s");
    emit(&format!("tasks_{l}_per_task_us"), total / n as f64 * 1e6, "us");
    emit(&format!("tasks_{l}_driver_peak_rss_MiB"), (rss().1 >> 20) as f64, "MiB");
    drop(refs);
    ferry::shutdown();
}

/// `FERRY_BENCH_SCALE_PENDING=N`: N tasks that cannot run yet (each waits for a gate object),
/// the driver's memory before and after, then the gate opens and all of them run.
pub fn pending_child(n: usize) {
    ferry::init(ferry::Config::default()).expect("start the embedded cluster");
    let warm: Vec<_> = (0..5000).map(|_| tick::remote()).collect();
    ferry::get_all(&warm).unwrap();
    drop(warm);
    let marker = std::env::temp_dir().join(format!("ferry-bench-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let g = gate::remote(marker.display().to_string());
    std::thread::sleep(Duration::from_millis(300));
    let before = rss().0;
    let t = Instant::now();
    let refs: Vec<_> = (0..n).map(|_| after::remote(&g)).collect();
    let submitted = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let held = rss().0;
    emit("owner_bytes_per_pending_task", held.saturating_sub(before) as f64 / n as f64, "B");
    emit(&format!("pending_{}_submit_s", label(n)), submitted, "s");
    std::fs::write(&marker, b"").unwrap();
    let t = Instant::now();
    ferry::get_all(&refs).unwrap();
    emit(&format!("pending_{}_run_s", label(n)), t.elapsed().as_secs_f64(), "s");
    let _ = std::fs::remove_file(&marker);
    drop(refs);
    ferry::shutdown();
}

/// Runs this binary again with `var=value` and prints its figures.
fn child(var: &str, value: usize) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe).env(var, value.to_string()).output().expect("run a child");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| !l.starts_with("startup") && !l.starts_with("shutdown")) {
        println!("{line}");
    }
    if !out.status.success() {
        eprintln!("{var}={value} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// All three parts, or those named in `FERRY_BENCH_SCALE_ONLY` (`tasks,nodes,sim`).
pub fn group() {
    let only = std::env::var("FERRY_BENCH_SCALE_ONLY").unwrap_or_else(|_| "tasks,nodes,sim".into());
    let on = |part: &str| only.split(',').any(|p| p == part);
    if on("tasks") {
        info("tasks: N no-op tasks submitted at once by one driver, then get_all; each N in a fresh process");
        for n in [100_000, 300_000, 1_000_000] {
            child("FERRY_BENCH_SCALE_TASKS", n);
        }
        child("FERRY_BENCH_SCALE_PENDING", 1_000_000);
    }
    if !is_root() {
        info("nodes and sim: need root (network-namespace hosts); skipped");
        return;
    }
    if on("nodes") {
        nodes_group();
    }
    if on("sim") {
        sim_group(1000);
    }
    if on("actors") {
        actors_group();
    }
}

/// A small stateful actor (0 CPUs, as Ray's actors once created).
#[ferry::actor]
#[derive(Default)]
pub struct Cell {
    n: u64,
}

#[ferry::actor]
impl Cell {
    pub fn new() -> Self {
        Cell::default()
    }
    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

const ACTOR_NODES: usize = 5;

/// Ray's many_actors shape: N actors created over `ACTOR_NODES` namespace nodes (2 CPUs
/// each; the actors take none), each called once, then all released.
fn actors_group() {
    let n: usize = std::env::var("FERRY_BENCH_SCALE_ACTOR_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // Each actor is a process with a connection to its node and one from the driver: the
    // default 20,000 descriptors are not enough (a user is told to raise `ulimit -n`).
    raise_fd_limit_to(1 << 20);
    // Every thread takes a pid, and an actor's process has several: the default pid_max of
    // 32,768 runs out near 4,000 actors (fork fails with EAGAIN). A user is told to raise it
    // (`sysctl kernel.pid_max=4194304`); so does this benchmark, and it says so.
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let raised =
        pid_max.filter(|m| *m < 4_194_304).and_then(|m| match std::fs::write("/proc/sys/kernel/pid_max", "4194304") {
            Ok(()) => {
                info(&format!("raised kernel.pid_max from {m} to 4194304 for the run (sysctl kernel.pid_max=4194304)"));
                Some(m)
            }
            Err(e) => {
                info(&format!("cannot raise kernel.pid_max ({e}): past ~3,000 actors, processes fail to start"));
                None
            }
        });
    let here = std::env::current_exe().unwrap();
    let ferry = ferry_cli();
    let hosts = ferry_testkit::Hosts::new(ACTOR_NODES).expect("network namespaces (run as root, with `ip`)");
    let args = |_| vec!["--num-cpus".to_string(), CPUS_PER_NODE.to_string()];
    let cluster = ferry_testkit::Cluster::start(&hosts, &ferry, &(0..ACTOR_NODES).map(args).collect::<Vec<_>>(), T)
        .expect("cluster");
    info(&format!("{n} actors over {ACTOR_NODES} namespace nodes of {CPUS_PER_NODE} CPUs"));
    let mut cmd = cluster.job(&hosts, 0, &here, "FERRY_BENCH_SCALE_ACTORS", &cluster.head.address);
    cmd.env("FERRY_BENCH_SCALE_ACTOR_COUNT", n.to_string());
    let out = cmd.output().expect("run the actors job");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    if let Some(m) = raised {
        let _ = std::fs::write("/proc/sys/kernel/pid_max", m.to_string());
    }
}

/// Sum of the proportional set sizes of this machine's processes running `exe`, how many
/// there are, and their threads.
fn pss_of(exe: &std::path::Path) -> (u64, usize, usize) {
    let (mut sum, mut count, mut threads) = (0, 0, 0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() != Some(exe) {
            continue;
        }
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { continue };
        if let Some(kb) = s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)) {
            sum += kb.parse::<u64>().unwrap_or(0) * 1024;
            count += 1;
            threads += std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
        }
    }
    (sum, count, threads)
}

/// `FERRY_BENCH_SCALE_ACTORS=HEAD`: the actors job.
pub fn actors_job(address: &str) {
    raise_fd_limit_to(1 << 20);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let files = limits.lines().find(|l| l.starts_with("Max open files")).map(|l| l.split_whitespace().nth(3));
    info(&format!("the driver may open {} files (a connection per actor takes one)", files.flatten().unwrap_or("?")));
    let n: usize = std::env::var("FERRY_BENCH_SCALE_ACTOR_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    ferry::init(ferry::Config::default().address(address)).expect("join the cluster");
    let exe = std::env::current_exe().unwrap();
    let (pss0, procs0, threads0) = pss_of(&exe);
    let t = Instant::now();
    let cells: Vec<_> = (0..n)
        .map(|_| Cell::options().scheduling_strategy(SchedulingStrategy::Spread).remote().expect("create an actor"))
        .collect();
    let submitted = t.elapsed().as_secs_f64();
    let calls: Vec<_> = cells.iter().map(|c| c.bump()).collect();
    // Bounded: a stall is reported, not waited out; progress every 10 s shows its shape.
    let bound: u64 = std::env::var("FERRY_BENCH_SCALE_ACTOR_WAIT_S").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let deadline = Instant::now() + Duration::from_secs(bound);
    loop {
        let (ready, _) = ferry::wait(&calls, calls.len(), Some(Duration::from_secs(10))).unwrap();
        if ready.len() == n {
            break;
        }
        if Instant::now() >= deadline {
            info(&format!("only {} of {n} actors answered within {bound} s: stopping", ready.len()));
            std::process::exit(1);
        }
        info(&format!("{:.0} s: {} of {n} actors answered", t.elapsed().as_secs_f64(), ready.len()));
    }
    let ones = ferry::get_all(&calls).expect("every actor answers");
    assert!(ones.iter().all(|x| *x == 1));
    let created = t.elapsed().as_secs_f64();
    let (pss1, procs1, threads1) = pss_of(&exe);
    let nodes = ferry::nodes().unwrap();
    // A node counts the actors it hosts and those whose entries it keeps (their home).
    info(&format!("actors by node (hosted or homed): {:?}", nodes.iter().map(|v| v.actors).collect::<Vec<_>>()));
    let control = control_store_pid().map(|p| cpu_and_rss(p).1).unwrap_or(0);
    let daemons = node_daemons();
    print_process_tables(&daemons);
    let t2 = Instant::now();
    drop((calls, cells));
    let end = Instant::now() + Duration::from_secs(300);
    while ferry::nodes().unwrap().iter().map(|v| v.actors).sum::<u64>() > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let released = t2.elapsed().as_secs_f64();
    let l = label(n);
    emit(&format!("actors_{l}_submit_s"), submitted, "s");
    emit(&format!("actors_{l}_create_and_call_s"), created, "s");
    emit(&format!("actors_{l}_release_s"), released, "s");
    emit(&format!("actors_{l}_create_call_release_s"), created + released, "s");
    emit(&format!("actors_{l}_processes"), (procs1 - procs0) as f64, "procs");
    emit(&format!("actors_{l}_threads_per_actor"), (threads1 - threads0) as f64 / n as f64, "threads");
    emit(
        &format!("actors_{l}_pss_per_actor_MiB"),
        pss1.saturating_sub(pss0) as f64 / n as f64 / (1 << 20) as f64,
        "MiB",
    );
    emit(&format!("actors_{l}_control_store_rss_MiB"), (control >> 20) as f64, "MiB");
    let most = |f: fn(&Daemon) -> u64| daemons.iter().map(f).max().unwrap_or(0) as f64;
    emit(&format!("actors_{l}_node_daemon_rss_MiB"), most(|d| d.rss >> 20), "MiB");
    emit(&format!("actors_{l}_node_daemon_threads"), most(|d| d.threads), "threads");
    emit(&format!("actors_{l}_node_daemon_fds"), most(|d| d.fds), "fds");
    ferry::shutdown();
}

/// A node daemon of this machine, as the kernel sees it.
struct Daemon {
    pid: u32,
    rss: u64,
    threads: u64,
    fds: u64,
}

/// The node daemons running here (not control stores).
fn node_daemons() -> Vec<Daemon> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .replace('\0', " ");
        if !cmd.contains("ferry start") || cmd.contains("--control-store") {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| {
            status.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        };
        out.push(Daemon {
            pid,
            rss: field("VmRSS:").unwrap_or(0) * 1024,
            threads: field("Threads:").unwrap_or(0),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0),
        });
    }
    out
}

/// Each node's process table (its processes by state, from `ferry::state::list_workers`) and
/// what its daemon holds.
fn print_process_tables(daemons: &[Daemon]) {
    let procs = ferry::state::list_workers().unwrap_or_default();
    let mut nodes: Vec<_> = procs.iter().map(|p| p.node).collect();
    nodes.sort();
    nodes.dedup();
    for n in nodes {
        let mut by_state = std::collections::BTreeMap::new();
        for p in procs.iter().filter(|p| p.node == n) {
            *by_state.entry(p.state.as_str()).or_insert(0usize) += 1;
        }
        info(&format!("node {}: processes {by_state:?}", &n.to_string()[..8]));
    }
    for d in daemons {
        info(&format!(
            "node daemon pid {}: {} MiB resident, {} threads, {} open files",
            d.pid,
            d.rss >> 20,
            d.threads,
            d.fds
        ));
    }
}

/// To `want` descriptors, the hard limit too where this process may (root).
fn raise_fd_limit_to(want: u64) {
    let lim = libc::rlimit { rlim_cur: want, rlim_max: want };
    // SAFETY: setrlimit on a struct we own; refused without the privilege (then the soft
    // limit goes up to the hard one).
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        raise_fd_limit();
    }
}

/// Up to the hard limit: a thousand simulated nodes hold two thousand descriptors.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

fn ferry_cli() -> String {
    let ferry = std::env::current_exe().unwrap().with_file_name("ferry");
    if !ferry.exists() {
        eprintln!("ferry-bench scale: {} not found; build it: cargo build --release -p ferry-cli", ferry.display());
        std::process::exit(2);
    }
    ferry.to_string_lossy().to_string()
}

/// The pid of the control store process of the cluster on this machine, if one runs.
fn control_store_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd).contains("--control-store").then_some(pid)
    })
}

/// A process's CPU time (user + system), in seconds, and its resident bytes.
fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let rss = f.get(21).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0) * 4096;
    (cpu, rss)
}

const CPUS_PER_NODE: usize = 2;
/// Tasks per throughput round, in all (`FERRY_BENCH_SCALE_TOTAL`).
fn scale_tasks() -> u64 {
    std::env::var("FERRY_BENCH_SCALE_TOTAL").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000)
}

/// 20 namespace nodes against one: formation, the control store's CPU per heartbeat, and
/// task throughput from submitters on every node.
fn nodes_group() {
    let here = std::env::current_exe().unwrap();
    let ferry = ferry_cli();
    let args = |_| vec!["--num-cpus".to_string(), CPUS_PER_NODE.to_string()];
    for n in [1usize, 20] {
        let hosts = ferry_testkit::Hosts::new(n).expect("network namespaces (run as root, with `ip`)");
        let t = Instant::now();
        let cluster =
            ferry_testkit::Cluster::start(&hosts, &ferry, &(0..n).map(args).collect::<Vec<_>>(), T).expect("cluster");
        let formed = t.elapsed().as_secs_f64();
        info(&format!("{n} namespace node(s), {CPUS_PER_NODE} CPUs each, formed in {formed:.2} s"));
        if n > 1 {
            emit(&format!("nodes_{n}_formation_s"), formed, "s");
            if let Some(pid) = control_store_pid() {
                // Members heartbeat every 100 ms (the testkit's setting).
                let secs = 5.0;
                let (c0, _) = cpu_and_rss(pid);
                std::thread::sleep(Duration::from_secs_f64(secs));
                let (c1, rss) = cpu_and_rss(pid);
                let beats = (n - 1) as f64 * secs / 0.1;
                emit("control_store_cpu_us_per_heartbeat", (c1 - c0) / beats * 1e6, "us");
                emit(&format!("nodes_{n}_control_store_rss_MiB"), (rss >> 20) as f64, "MiB");
            }
        }
        let out = cluster
            .job(&hosts, 0, &here, "FERRY_BENCH_SCALE_JOB", &cluster.head.address)
            .output()
            .expect("run the job");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

const T: Duration = Duration::from_secs(180);

/// `FERRY_BENCH_SCALE_JOB`: no-op tasks submitted from nested tasks, one submitter per CPU,
/// spread over every node, each submitting to its own node first.
pub fn job(address: &str) {
    ferry::init(ferry::Config::default().address(address)).expect("join the cluster");
    let nodes = ferry::nodes().unwrap().into_iter().filter(|n| n.alive).count();
    let cpus = nodes * CPUS_PER_NODE;
    let warm: Vec<_> =
        (0..cpus * 4).map(|_| tick::options().scheduling_strategy(SchedulingStrategy::Spread).remote()).collect();
    ferry::get_all(&warm).unwrap();
    let per = scale_tasks() / cpus as u64;
    let rate = |local: bool| {
        let mut rates = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let subs: Vec<_> = (0..cpus)
                .map(|_| {
                    crate::cluster::submitter::options()
                        .scheduling_strategy(SchedulingStrategy::Spread)
                        .remote(per, local)
                })
                .collect();
            let done: u64 = ferry::get_all(&subs).unwrap().into_iter().sum();
            rates.push(done as f64 / t.elapsed().as_secs_f64());
        }
        info(&format!("rounds{}: {:.0?} tasks/s", if local { " (kept local)" } else { "" }, rates));
        median(&mut rates)
    };
    if nodes > 1 {
        info(&format!("the same with every task kept on its submitter's node: {:.0} tasks/s", rate(true)));
    }
    let mut rates = vec![rate(false)];
    let name = if nodes == 1 {
        "single_node_task_throughput_per_s".to_string()
    } else {
        format!("nodes_{nodes}_task_throughput_per_s")
    };
    emit(&name, median(&mut rates), "tasks/s");
    ferry::shutdown();
}

/// One control store (a one-node cluster's head) and `n` simulated nodes from a load
/// generator on the same host.
fn sim_group(n: usize) {
    let here = std::env::current_exe().unwrap();
    let ferry = ferry_cli();
    let hosts = ferry_testkit::Hosts::new(1).expect("network namespaces (run as root, with `ip`)");
    let cluster = ferry_testkit::Cluster::start(&hosts, &ferry, &[vec!["--num-cpus".into(), "0".into()]], T)
        .expect("a control store");
    let mut cmd = cluster.job(&hosts, 0, &here, "FERRY_BENCH_SIM_NODES", &cluster.head.address);
    cmd.env("FERRY_BENCH_SIM_COUNT", n.to_string()).env("FERRY_BENCH_SIM_HOST", hosts.addr(0));
    let out = cmd.output().expect("run the load generator");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `FERRY_BENCH_SIM_NODES=HEAD`: `FERRY_BENCH_SIM_COUNT` simulated nodes join the control
/// store of the head at HEAD and heartbeat every second (the default); the control store's
/// CPU and memory are read meanwhile; then one closes its connection (a node whose process
/// died) and every other reports when it is told.
pub fn sim_nodes(head: &str) {
    use ferry_proto::conn::{connect, Addr};
    use ferry_proto::msg::{FromNode, NodeStats, ProcKind, Shape, ToNode};
    use ferry_proto::{NodeId, WorkerId};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let n: usize = std::env::var("FERRY_BENCH_SIM_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let host = std::env::var("FERRY_BENCH_SIM_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let token = std::env::var("FERRY_TOKEN").expect("the cluster's token");
    raise_fd_limit();
    let max_frame = 64 << 20;
    // Where the control store is.
    let (c, mut rx, _) = connect(&Addr::Tcp(head.into()), &token, WorkerId(7), max_frame).expect("reach the head");
    c.send(&ToNode::register_tool(ProcKind::Tool)).unwrap();
    c.send(&ToNode::ControlAddress { req: 1 }).unwrap();
    let control = loop {
        if let FromNode::ControlAt { addr: Some(a), .. } = rx.read::<FromNode>().expect("the head answers") {
            break a;
        }
    };
    let pid = control_store_pid().expect("the control store's process");
    let joined = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let victim = NodeId(0x5eed_0000_0000_0001);
    let victim_gone: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let told: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let t_join = Instant::now();
    let mut threads = Vec::new();
    for i in 0..n {
        let (control, token, host) = (control.clone(), token.clone(), host.clone());
        let (joined, stop, victim_gone, told) = (joined.clone(), stop.clone(), victim_gone.clone(), told.clone());
        threads.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let me = if i == 0 { victim } else { NodeId(0x5eed_0000_0000_0001 + i as u64) };
                    // As a node does: again until it is let in (the control store bounds the
                    // handshakes from one address, and all of these come from one).
                    let mut tries = 0;
                    let (c, mut rx, _) = loop {
                        match connect(&Addr::Tcp(control.clone()), &token, WorkerId(me.0), max_frame) {
                            Ok(x) => break x,
                            Err(_) if tries < 200 => {
                                tries += 1;
                                std::thread::sleep(Duration::from_millis(50 + (i as u64 % 50)));
                            }
                            Err(_) => return,
                        }
                    };
                    let total = Shape::cpus(2.0);
                    let _ = c.send(&ToNode::register_tool(ProcKind::Node));
                    // An address on this host where nothing listens: nobody is sent there.
                    let addr = format!("{host}:1");
                    let _ = c.send(&ToNode::JoinCluster { req: 1, node: me, addr, total: total.clone() });
                    let _ = rx.get_ref().set_read_timeout(Some(Duration::from_millis(100)));
                    let stats = NodeStats { total: total.clone(), available: total, ..Default::default() };
                    let mut next = Instant::now();
                    let mut was_joined = false;
                    while !stop.load(Ordering::Relaxed) {
                        if i == 0 && victim_gone.lock().unwrap().is_some() {
                            // The clock starts as the connection closes (this thread sees the
                            // signal only between reads of up to 100 ms).
                            *victim_gone.lock().unwrap() = Some(Instant::now());
                            c.shutdown();
                            return;
                        }
                        if was_joined && Instant::now() >= next {
                            let _ = c.send(&ToNode::Heartbeat { node: me, stats: stats.clone() });
                            next = Instant::now() + Duration::from_secs(1);
                        }
                        match rx.read::<FromNode>() {
                            Ok(FromNode::Ack { error: None, .. }) if !was_joined => {
                                was_joined = true;
                                joined.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(FromNode::NodeDied { node, .. }) if node == victim => {
                                told.lock().unwrap().push(Instant::now());
                            }
                            Ok(_) => {}
                            Err(ferry_proto::FrameError::Io(e))
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                })
                .expect("a thread per simulated node"),
        );
    }
    let end = Instant::now() + Duration::from_secs(120);
    while joined.load(Ordering::Relaxed) < n && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let j = joined.load(Ordering::Relaxed);
    emit(&format!("sim_{n}_join_s"), t_join.elapsed().as_secs_f64(), "s");
    if j < n {
        info(&format!("only {j} of {n} simulated nodes joined"));
    }
    // Steady heartbeating: 10 s of the control store's CPU, and its memory.
    std::thread::sleep(Duration::from_secs(2));
    let (c0, _) = cpu_and_rss(pid);
    let secs = 10.0;
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (c1, rss) = cpu_and_rss(pid);
    emit(&format!("sim_{n}_control_store_cpu_percent"), (c1 - c0) / secs * 100.0, "%");
    emit(&format!("sim_{n}_control_store_cpu_us_per_heartbeat"), (c1 - c0) / (j as f64 * secs) * 1e6, "us");
    emit(&format!("sim_{n}_control_store_rss_MiB"), (rss >> 20) as f64, "MiB");
    // One node's process dies: its connection closes; every other node must be told.
    *victim_gone.lock().unwrap() = Some(Instant::now());
    let end = Instant::now() + Duration::from_secs(30);
    while told.lock().unwrap().len() < j.saturating_sub(1) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
    let t_death = victim_gone.lock().unwrap().expect("set above");
    let mut ms: Vec<f64> = told.lock().unwrap().iter().map(|t| (*t - t_death).as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.len() < j.saturating_sub(1) {
        info(&format!("only {} of {} nodes were told of the death within 30 s", ms.len(), j - 1));
    }
    emit(&format!("sim_{n}_death_told_all_ms"), ms.last().copied().unwrap_or(f64::NAN), "ms");
    emit(&format!("sim_{n}_death_told_median_ms"), median(&mut ms), "ms");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
}
