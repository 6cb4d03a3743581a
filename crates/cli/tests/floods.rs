//! Floods from strangers (no token), run for real and bounded in time: a slowloris flood from
//! another host against a head while a job of the cluster runs, and a flood that exhausts a
//! node's descriptors. The node must stay within its bounds, keep serving its own peers, log
//! at a bounded rate, and never spin.

use ferry::prelude::*;
use ferry_testkit::{Head, Hosts};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

#[ferry::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[ferry::remote]
fn node() -> ferry::NodeId {
    ferry::node_id().unwrap()
}

ferry_testkit::job!("FERRY_TEST_FLOOD", flood_job);
ferry_testkit::job!("FERRY_TEST_FLOOD_PEER", peer_job);

/// Keeps `FLOOD_CONNS` connections open to `address` for `FLOOD_MS`, each sending one byte of
/// a frame that never ends every half second (slowloris), opening a new one for each the node
/// closes. Prints what it saw.
fn flood_job(address: &str) {
    let conns: usize = std::env::var("FLOOD_CONNS").unwrap().parse().unwrap();
    let ms: u64 = std::env::var("FLOOD_MS").unwrap().parse().unwrap();
    let (opened, closed) = slowloris(address, conns, Duration::from_millis(ms));
    println!("flood: opened {opened}, closed by the node {closed}");
    std::process::exit(0);
}

fn slowloris(address: &str, conns: usize, for_: Duration) -> (usize, usize) {
    let addr: std::net::SocketAddr = address.parse().unwrap();
    let end = Instant::now() + for_;
    let mut open: Vec<std::net::TcpStream> = Vec::new();
    let (mut opened, mut closed) = (0, 0);
    while Instant::now() < end {
        while open.len() < conns && Instant::now() < end {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => {
                    let _ = s.set_nonblocking(true);
                    opened += 1;
                    open.push(s);
                }
                Err(_) => break,
            }
        }
        // One byte each (a length prefix that announces a frame, never finished); those the
        // node closed are dropped and opened again next round.
        open.retain(|mut s| {
            let mut b = [0u8; 64];
            let gone = matches!(s.read(&mut b), Ok(0)) || s.write(&[0x10]).is_err();
            if gone {
                closed += 1;
            }
            !gone
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    (opened, closed)
}

/// A real job of the cluster, on a peer's host, during the flood: tasks on both nodes.
fn peer_job(address: &str) {
    ferry::init(ferry::Config::default().address(address)).expect("join the head during the flood");
    let t = Instant::now();
    let refs: Vec<_> = (0..2000u64).map(square::remote).collect();
    let sum: u64 = ferry::get_all(&refs).unwrap().into_iter().sum();
    assert_eq!(sum, (0..2000u64).map(|x| x * x).sum::<u64>());
    let nodes: std::collections::HashSet<_> = ferry::get_all(
        &(0..40)
            .map(|_| node::options().scheduling_strategy(ferry::SchedulingStrategy::Spread).remote())
            .collect::<Vec<_>>(),
    )
    .unwrap()
    .into_iter()
    .collect();
    println!("job: 2000 tasks in {:?}, {} nodes used", t.elapsed(), nodes.len());
    std::process::exit(0);
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
}

fn ticks_per_s() -> u64 {
    extern "C" {
        fn sysconf(name: i32) -> i64;
    }
    // SAFETY: sysconf(_SC_CLK_TCK) has no preconditions.
    (unsafe { sysconf(2) }).max(1) as u64
}

/// Starts `cmd` (a `ferry start ... --block`) with its standard error kept in a string.
fn start_logged(mut cmd: Command) -> (Head, std::sync::Arc<std::sync::Mutex<String>>) {
    cmd.stderr(Stdio::piped());
    let mut head = Head::start(cmd, T).unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut err = head.child.stderr.take().unwrap();
    let l = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            l.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (head, log)
}

/// The finding: each connection cost a thread and two descriptors with no bound, and the
/// handshake's timeout restarted with every byte, so ~10,000 connections sending a byte every
/// few seconds exhausted the node. Now a source has a bound on its handshakes, the whole
/// handshake a deadline, and the cluster's own work goes on through the flood.
#[test]
fn a_slowloris_flood_from_another_host_neither_exhausts_the_head_nor_starves_its_job() {
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let exe = std::env::current_exe().unwrap();
    let mut cmd = hosts.command(0, ferry);
    cmd.args(["start", "--head", "--host", hosts.addr(0), "--port", "0", "--num-cpus", "1", "--block"]);
    let (head, log) = start_logged(cmd);
    let mut cmd = hosts.command(1, ferry);
    cmd.env("FERRY_TOKEN", &head.token).env("FERRY_HEARTBEAT_MS", "100");
    cmd.args([
        "start",
        "--address",
        &head.address,
        "--host",
        hosts.addr(1),
        "--port",
        "0",
        "--num-cpus",
        "1",
        "--block",
    ]);
    let _member = Head::start(cmd, T).unwrap();
    let pid = head.child.id();
    let (fds_before, ticks_before, t0) = (fds_of(pid), cpu_ticks(pid), Instant::now());

    // 3,000 connections from host 2 for 12 s.
    let mut flood = hosts.command(2, &exe);
    flood.env("FERRY_TEST_FLOOD", &head.address).env("FLOOD_CONNS", "3000").env("FLOOD_MS", "12000");
    let flood = flood.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // Meanwhile: the node stays within its bounds...
    let mut peak = 0;
    // ...and a job on the member's host, joined to the head, runs on both nodes...
    let mut job = hosts.command(1, &exe);
    job.env("FERRY_TEST_FLOOD_PEER", &head.address).env("FERRY_TOKEN", &head.token);
    let job = job.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        peak = peak.max(fds_of(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...and `ferry status` from the head's own host answers.
    let st = hosts
        .command(0, ferry)
        .env("FERRY_TOKEN", &head.token)
        .args(["status", "--address", &head.address])
        .output()
        .unwrap();
    assert!(
        st.status.success() && String::from_utf8_lossy(&st.stdout).contains("cluster: 2 nodes, 2 alive"),
        "{}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    let out = wait_output(job, T);
    assert!(out.0, "the job failed during the flood: {}", out.1);
    assert!(out.1.contains("2 nodes used"), "{}", out.1);
    let flood_out = wait_output(flood, T);
    let elapsed = t0.elapsed();
    let used = (cpu_ticks(pid) - ticks_before) as f64 / ticks_per_s() as f64;
    eprintln!(
        "{} | {}descriptors {fds_before} -> peak {peak}; head CPU {used:.2} s in {elapsed:.1?}",
        flood_out.1.trim(),
        out.1
    );

    // Bounded: 64 handshakes from one source (two descriptors each), not 3,000.
    assert!(flood_out.1.contains("flood: opened"), "{}", flood_out.1);
    assert!(peak < fds_before + 300, "the head held {peak} descriptors (from {fds_before}) under the flood");
    // No spinning: a fraction of one CPU over the flood.
    assert!(used < elapsed.as_secs_f64() * 0.5, "the head used {used:.2} s of CPU in {elapsed:?}");
    // Refusals are logged at a bounded rate (at most about one line a second per listener).
    let lines = log.lock().unwrap().lines().filter(|l| l.contains("refus") || l.contains("handshake")).count();
    assert!(lines <= 2 * elapsed.as_secs() as usize + 10, "{lines} log lines about refusals:\n{}", log.lock().unwrap());
    drop(head);
    hosts.tear_down().unwrap();
}

fn wait_output(mut child: std::process::Child, within: Duration) -> (bool, String) {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take();
    let end = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_string(&mut text);
            }
            return (s.success(), text);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("a process did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Out of descriptors, a node waits instead of spinning on `EMFILE`, and serves again once
/// the flood is gone. (The bounds on handshakes are lifted here so that the flood can reach
/// the descriptor limit at all.)
#[test]
fn out_of_descriptors_a_node_backs_off_and_recovers() {
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=200:200", ferry, "start", "--head", "--port", "0", "--num-cpus", "1", "--block"]);
    cmd.env("FERRY_MAX_HANDSHAKES", "100000").env("FERRY_MAX_HANDSHAKES_PER_SOURCE", "100000");
    let (head, log) = start_logged(cmd);
    let pid = head.child.id();
    let address = head.address.clone();
    let flooder = std::thread::spawn(move || slowloris(&address, 400, Duration::from_secs(6)));
    std::thread::sleep(Duration::from_secs(2));
    let (ticks, t) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - ticks) as f64 / ticks_per_s() as f64;
    let (opened, _) = flooder.join().unwrap();
    eprintln!("flood opened {opened}; head CPU {used:.2} s in {:?} while out of descriptors", t.elapsed());
    assert!(log.lock().unwrap().contains("cannot accept connections"), "{}", log.lock().unwrap());
    assert!(used < 1.0, "the head spun: {used:.2} s of CPU in 3 s");
    // The flood is gone: the node answers again (its handshakes ran out of time meanwhile).
    let end = Instant::now() + T;
    loop {
        let st = Command::new(ferry)
            .env("FERRY_TOKEN", &head.token)
            .args(["status", "--address", &head.address])
            .output()
            .unwrap();
        if st.status.success() {
            break;
        }
        assert!(Instant::now() < end, "the node did not recover: {}", String::from_utf8_lossy(&st.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = log.lock().unwrap().lines().filter(|l| l.contains("cannot accept")).count();
    assert!(lines < 20, "{lines} lines about descriptors:\n{}", log.lock().unwrap());
}

/// A flood on loopback (another user of the host, say) has the same source address as this
/// user's own tools and drivers on the host: those reach the node through its Unix socket,
/// which strangers cannot (its directory is private), and keep working.
#[test]
fn a_loopback_flood_does_not_shut_out_this_users_tools_and_jobs() {
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut cmd = Command::new(ferry);
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "1", "--block"]);
    let (head, _log) = start_logged(cmd);
    let address = head.address.clone();
    let flooder = std::thread::spawn(move || slowloris(&address, 2000, Duration::from_secs(8)));
    std::thread::sleep(Duration::from_secs(2));
    // The TCP port is saturated for this source...
    let tcp = std::net::TcpStream::connect(&head.address).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = [0u8; 1];
        s.read(&mut b)
    });
    assert!(matches!(tcp, Ok(0) | Err(_)), "a stranger's connection was kept: {tcp:?}");
    // ...and this user's commands and jobs on the host go on.
    let st = Command::new(ferry)
        .env("FERRY_TOKEN", &head.token)
        .args(["status", "--address", &head.address])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let mut job = Command::new(std::env::current_exe().unwrap());
    job.env("FERRY_TEST_FLOOD_PEER", &head.address).env("FERRY_TOKEN", &head.token);
    let out = wait_output(job.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(), T);
    assert!(out.0 && out.1.contains("2000 tasks"), "{}", out.1);
    let (opened, closed) = flooder.join().unwrap();
    eprintln!("loopback flood: opened {opened}, closed by the node {closed}; {}", out.1.trim());
}
