//! `ferry-bench cluster`: figures across nodes, on network-namespace hosts this group builds
//! itself (root and `ip` needed), each node a `ferry start` process (the `ferry` binary next to
//! this one). The job runs on the head's host: this binary again, with `FERRY_BENCH_JOB` set.
//!
//! - `single_node_task_throughput_per_s` / `xnode_task_throughput_per_s`: no-op tasks
//!   submitted from nested tasks, one submitter per CPU, spread over the nodes, on one node
//!   and on three (same CPUs per node).
//! - `xnode_driver_task_throughput_per_s`: no-op tasks from the driver, spilling over.
//! - `xnode_transfer_1GiB_GB_per_s`: a 1 GiB object made on one node, read by the driver on
//!   another (pulled between the daemons).
//! - `raw_tcp_GB_per_s`: 1 GiB over one plain TCP connection between the same two hosts.
//! - `broadcast_1GiB_3nodes_s`: a 1 GiB object put on the head, read (zero-copy, as numpy
//!   arrays are in Ray) by a task on each other node: both pull it at once.

use crate::{emit, info, length, median, produce, MIB};
use ferry::prelude::*;
use ferry::{NodeId, SchedulingStrategy};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const GIB: usize = 1024 * MIB;
const CPUS_PER_NODE: &str = "2";

#[ferry::remote]
fn nothing() {}

/// Submits `n` no-op tasks from wherever it runs and waits for them (`local`: kept on this
/// node, for comparison).
#[ferry::remote]
pub(crate) fn submitter(n: u64, local: bool) -> u64 {
    let here = SchedulingStrategy::NodeAffinity { node: ferry::node_id().unwrap(), soft: true };
    let refs: Vec<_> = (0..n)
        .map(|_| if local { nothing::options().scheduling_strategy(here.clone()).remote() } else { nothing::remote() })
        .collect();
    ferry::get_all(&refs).unwrap();
    n
}

fn on(n: NodeId) -> SchedulingStrategy {
    SchedulingStrategy::NodeAffinity { node: n, soft: false }
}

/// One link of the recovery chain: 10 ms of work on the previous link's value.
#[ferry::remote]
fn link(prev: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    prev + 1
}

/// A link of the 10 MiB chain: 10 ms, then a new 10 MiB object from the previous one.
#[ferry::remote]
fn big_link(prev: ferry::Bytes, ms: u64) -> ferry::Bytes {
    std::thread::sleep(Duration::from_millis(ms));
    let mut next = ferry::BytesMut::zeroed(prev.len()).unwrap();
    next.copy_from_slice(&prev);
    next[0] = next[0].wrapping_add(1);
    next.freeze()
}

/// A named actor the recovery job finds again after the control store restarts.
#[ferry::actor]
#[derive(Default)]
pub struct Probe {
    n: u64,
}

#[ferry::actor]
impl Probe {
    pub fn new() -> Self {
        Probe::default()
    }
    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

#[ferry::remote]
fn first_big(n: usize) -> ferry::Bytes {
    ferry::BytesMut::zeroed(n).unwrap().freeze()
}

/// The recovery experiment's job (the Ownership paper's chains): 1,000 tasks of 10 ms each
/// passing a small value, then a 10 MiB object, along a chain on one member, without and then
/// with that member killed halfway (the parent kills it when this prints `kill ADDR`); the
/// small chain with the control store killed halfway (`kill-control`), and how long until a
/// named actor answers again after another kill; and how long the control store takes to
/// declare a frozen member dead (`freeze ADDR`, then `thaw ADDR`).
pub fn recovery_job(address: &str) {
    use std::io::Write;
    ferry::init(ferry::Config::default().address(address)).expect("join the cluster");
    let me = ferry::node_id().unwrap();
    let members: Vec<ferry::NodeInfo> = ferry::nodes().unwrap().into_iter().filter(|n| n.node != me).collect();
    let n = 1000u64;
    let chain = |victim: Option<&str>| {
        let on = SchedulingStrategy::NodeAffinity { node: members[0].node, soft: true };
        let t = Instant::now();
        let mut refs = Vec::with_capacity(n as usize);
        let mut prev = link::options().scheduling_strategy(on.clone()).remote(0u64, 10);
        refs.push(prev.clone());
        for _ in 1..n {
            prev = link::options().scheduling_strategy(on.clone()).remote(&prev, 10);
            refs.push(prev.clone());
        }
        if let Some(what) = victim {
            ferry::get(&refs[(n / 2) as usize]).unwrap();
            println!("{what}");
            std::io::stdout().flush().unwrap();
        }
        let last = ferry::get(&prev).expect("the chain finishes");
        assert_eq!(last, n);
        t.elapsed().as_secs_f64()
    };
    emit("recovery_chain_10ms_nofail_s", chain(None), "s");
    // The 10 MiB chain holds only its ends: links in between are held by the next link's
    // lineage alone (by name), so their values go as the chain moves on.
    let big_chain = |on: &ferry::NodeInfo, victim: bool| {
        let s = SchedulingStrategy::NodeAffinity { node: on.node, soft: true };
        let t = Instant::now();
        let mut prev = first_big::options().scheduling_strategy(s.clone()).remote(10 << 20);
        let mut half = None;
        for i in 1..n {
            prev = big_link::options().scheduling_strategy(s.clone()).remote(&prev, 10);
            if i == n / 2 {
                half = Some(prev.clone());
            }
        }
        if victim {
            ferry::wait(std::slice::from_ref(half.as_ref().unwrap()), 1, None).unwrap();
            println!("kill {}", on.addr);
            std::io::stdout().flush().unwrap();
        }
        drop(half);
        let last = ferry::get_bytes(&prev).expect("the chain finishes");
        assert_eq!(last[0], (n - 1) as u8);
        t.elapsed().as_secs_f64()
    };
    emit("recovery_chain_10MiB_nofail_s", big_chain(&members[1], false), "s");
    // Detection: a member frozen (sockets open, heartbeats stopped), then thawed.
    let frozen = &members[1];
    println!("freeze {}", frozen.addr);
    std::io::stdout().flush().unwrap();
    let t = Instant::now();
    while ferry::nodes().unwrap().iter().any(|v| v.node == frozen.node && v.alive) {
        assert!(t.elapsed() < Duration::from_secs(30), "never declared dead");
        std::thread::sleep(Duration::from_millis(5));
    }
    emit("node_death_detect_s", t.elapsed().as_secs_f64(), "s");
    println!("thaw {}", frozen.addr);
    std::io::stdout().flush().unwrap();
    while !ferry::nodes().unwrap().iter().any(|v| v.node == frozen.node && v.alive) {
        assert!(t.elapsed() < Duration::from_secs(60), "never back");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The control store killed halfway (the head starts it again): the chain goes on.
    let probe = Probe::options().name("probe").detached().remote().expect("a named actor");
    ferry::get(&probe.bump()).unwrap();
    emit("recovery_chain_10ms_control_killed_s", chain(Some("kill-control")), "s");
    // And killed again: how long until a named actor is found and answers through a new handle
    // (the control store is back, and its host has re-reported it).
    println!("kill-control");
    std::io::stdout().flush().unwrap();
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(30), "the control store never came back");
        if let Ok(p) = ferry::get_actor::<Probe>("probe") {
            if ferry::get_timeout(&p.bump(), Duration::from_secs(30)).is_ok() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    emit("control_store_restart_s", t.elapsed().as_secs_f64(), "s");
    ferry::kill(&probe).unwrap();
    emit("recovery_chain_10ms_fail_s", chain(Some(&format!("kill {}", members[0].addr))), "s");
    emit("recovery_chain_10MiB_fail_s", big_chain(&members[1], true), "s");
    info("heartbeat timeout 1 s (FERRY_NODE_TIMEOUT_MS=1000), heartbeats every 100 ms");
    ferry::shutdown();
}

/// `ferry-bench recovery`: the recovery job on three namespace nodes, the parent killing and
/// freezing members when it asks.
pub fn recovery_group() {
    use std::io::BufRead;
    let here = std::env::current_exe().unwrap();
    let ferry = here.with_file_name("ferry").to_string_lossy().to_string();
    let hosts = ferry_testkit::Hosts::new(3).expect("network namespaces (run as root, with `ip`)");
    let one = || vec!["--num-cpus".to_string(), "1".to_string()];
    let state = std::env::temp_dir().join(format!("ferry-bench-state-{}", std::process::id()));
    let mut head = one();
    head.extend(["--state-dir".to_string(), state.display().to_string()]);
    let mut cluster = ferry_testkit::Cluster::start_with(
        &hosts,
        &ferry,
        &[head, one(), one()],
        &[("FERRY_NODE_TIMEOUT_MS", "1000")],
        Duration::from_secs(60),
    )
    .expect("cluster");
    info("recovery: 3 namespace nodes, 1 CPU each; chains of 1,000 10 ms tasks on one member");
    let mut job = cluster
        .job(&hosts, 0, &here, "FERRY_BENCH_RECOVERY", &cluster.head.address)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the job");
    let mut frozen = None;
    for line in std::io::BufReader::new(job.stdout.take().unwrap()).lines().map_while(Result::ok) {
        if line == "kill-control" {
            let pid = std::fs::read_to_string(state.join("control.pid")).ok().and_then(|p| p.trim().parse().ok());
            if let Some(pid) = pid {
                // SAFETY: a plain syscall on a process of the cluster this bench started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        } else if let Some(addr) = line.strip_prefix("kill ") {
            if let Some(m) = cluster.members.iter_mut().find(|m| m.address == addr) {
                let _ = m.child.kill();
            }
        } else if let Some(addr) = line.strip_prefix("freeze ") {
            if let Some(m) = cluster.members.iter().find(|m| m.address == addr) {
                // SAFETY: a plain syscall on a process this bench started.
                unsafe { libc::kill(m.child.id() as i32, libc::SIGSTOP) };
                frozen = Some(m.child.id());
            }
        } else if line.starts_with("thaw ") {
            if let Some(pid) = frozen.take() {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            }
        } else {
            println!("{line}");
        }
    }
    let _ = job.wait();
    if let Some(pid) = frozen {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&state);
}

/// The job, on the head's host: prints figures for the parent to pass on.
pub fn job(address: &str) {
    ferry::init(ferry::Config::default().address(address)).expect("join the cluster");
    let me = ferry::node_id().unwrap();
    let nodes: Vec<NodeId> = ferry::nodes().unwrap().into_iter().filter(|n| n.alive).map(|n| n.node).collect();
    let cpus = nodes.len() * CPUS_PER_NODE.parse::<usize>().unwrap();
    // Warm every node's workers.
    let warm: Vec<_> =
        (0..cpus * 4).map(|_| nothing::options().scheduling_strategy(SchedulingStrategy::Spread).remote()).collect();
    ferry::get_all(&warm).unwrap();
    let per = 20_000 / cpus as u64;
    let nested = |local: bool| {
        let mut rates = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let subs: Vec<_> = (0..cpus)
                .map(|_| submitter::options().scheduling_strategy(SchedulingStrategy::Spread).remote(per, local))
                .collect();
            let done: u64 = ferry::get_all(&subs).unwrap().into_iter().sum();
            rates.push(done as f64 / t.elapsed().as_secs_f64());
        }
        median(&mut rates)
    };
    let name = if nodes.len() == 1 { "single_node_task_throughput_per_s" } else { "xnode_task_throughput_per_s" };
    emit(name, nested(false), "tasks/s");
    if nodes.len() > 1 {
        info(&format!("the same with every task kept on its submitter's node: {:.0} tasks/s", nested(true)));
    }
    if nodes.len() == 1 {
        ferry::shutdown();
        return;
    }
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let refs: Vec<_> = (0..20_000).map(|_| nothing::remote()).collect();
        ferry::get_all(&refs).unwrap();
        rates.push(20_000.0 / t.elapsed().as_secs_f64());
    }
    emit("xnode_driver_task_throughput_per_s", median(&mut rates), "tasks/s");

    let other = *nodes.iter().find(|n| **n != me).unwrap();
    let mut speeds = Vec::new();
    for _ in 0..5 {
        let r = produce::options().scheduling_strategy(on(other)).remote(GIB);
        // Ready where it was made, not yet here (as Ray's side, `fetch_local=False`): the
        // transfer is what `get` times.
        let opts = ferry::WaitOptions { num_ready: 1, timeout: None, fetch_local: false };
        ferry::wait_with(std::slice::from_ref(&r), opts).unwrap();
        let t = Instant::now();
        let b = ferry::get_bytes(&r).unwrap();
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(b.len(), GIB);
        speeds.push(GIB as f64 / dt / 1e9);
    }
    info(&format!("transfers: {speeds:.2?} GB/s"));
    emit("xnode_transfer_1GiB_GB_per_s", median(&mut speeds), "GB/s");

    let mut times = Vec::new();
    for _ in 0..3 {
        let mut b = ferry::BytesMut::zeroed(GIB).unwrap();
        b.fill(1);
        let obj = ferry::put(b.freeze()).unwrap();
        let t = Instant::now();
        let reads: Vec<_> = nodes
            .iter()
            .filter(|n| **n != me)
            .map(|n| length::options().scheduling_strategy(on(*n)).remote(&obj))
            .collect();
        ferry::get_all(&reads).unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    emit("broadcast_1GiB_3nodes_s", median(&mut times), "s");
    ferry::shutdown();
}

/// `__tcp_send ADDR`: listens on ADDR, sends 1 GiB to the first connection.
pub fn tcp_send(addr: &str) {
    let l = std::net::TcpListener::bind(addr).expect("bind");
    println!("listening");
    std::io::stdout().flush().unwrap();
    let buf = vec![1u8; 4 * MIB];
    for _ in 0..5 {
        let (mut s, _) = l.accept().expect("accept");
        for _ in 0..GIB / buf.len() {
            s.write_all(&buf).expect("send");
        }
    }
}

/// `__tcp_recv ADDR`: reads 1 GiB from ADDR, five times; prints the median speed.
pub fn tcp_recv(addr: &str) {
    let mut buf = vec![0u8; 4 * MIB];
    let mut speeds = Vec::new();
    for _ in 0..5 {
        let mut s = connect_retry(addr);
        let t = Instant::now();
        let mut got = 0;
        while got < GIB {
            let n = s.read(&mut buf).expect("recv");
            assert!(n > 0, "the sender closed early");
            got += n;
        }
        speeds.push(GIB as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    info(&format!("raw tcp: {speeds:.2?} GB/s"));
    emit("raw_tcp_GB_per_s", median(&mut speeds), "GB/s");
}

fn connect_retry(addr: &str) -> std::net::TcpStream {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() > end => panic!("cannot reach {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Builds the hosts and clusters, runs the job on each, and passes its figures on.
pub fn group() {
    let here = std::env::current_exe().unwrap();
    let ferry = here.with_file_name("ferry");
    if !ferry.exists() {
        eprintln!("ferry-bench cluster: {} not found; build it: cargo build --release -p ferry-cli", ferry.display());
        std::process::exit(2);
    }
    let ferry = ferry.to_string_lossy().to_string();
    let args = |_| vec!["--num-cpus".to_string(), CPUS_PER_NODE.to_string()];
    let t = Duration::from_secs(60);
    for n in [1, 3] {
        let hosts = ferry_testkit::Hosts::new(n).expect("network namespaces (run as root, with `ip`)");
        let cluster =
            ferry_testkit::Cluster::start(&hosts, &ferry, &(0..n).map(args).collect::<Vec<_>>(), t).expect("cluster");
        info(&format!("{n} namespace node(s), {CPUS_PER_NODE} CPUs each, head at {}", cluster.head.address));
        let out =
            cluster.job(&hosts, 0, &here, "FERRY_BENCH_JOB", &cluster.head.address).output().expect("run the job");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        if n == 3 {
            let addr = format!("{}:7999", hosts.addr(1));
            let mut send = hosts
                .command(1, &here)
                .args(["__tcp_send", &addr])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("tcp sender");
            let mut line = [0u8; 10];
            let _ = send.stdout.as_mut().unwrap().read_exact(&mut line);
            let out = hosts.command(0, &here).args(["__tcp_recv", &addr]).output().expect("tcp receiver");
            print!("{}", String::from_utf8_lossy(&out.stdout));
            let _ = send.kill();
            let _ = send.wait();
        }
    }
}
