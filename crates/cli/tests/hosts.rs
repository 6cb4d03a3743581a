//! Several hosts as network namespaces on this machine (`ferry-testkit`): a head node on one,
//! `ferry status` and `ferry stop` from another, a job joining by address from a third, and
//! the root namespace unable to reach any of them. Everything is torn down at the end.

use ferry_testkit::{signal, wait_exit, Head, Hosts};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[ferry::remote]
fn square(x: u64) -> u64 {
    x * x
}

ferry_testkit::job!("FERRY_TEST_JOIN_ADDRESS", join_job);

/// With `FERRY_TEST_JOIN_ADDRESS` set this test binary is a job that joins that node, sums
/// squares on it, prints the sum and exits (entered before `main`, like worker mode).
fn join_job(address: &str) {
    let r = (|| -> ferry::Result<u64> {
        ferry::init(ferry::Config::default().address(address))?;
        let refs: Vec<_> = (0..20u64).map(square::remote).collect();
        Ok(ferry::get_all(&refs)?.into_iter().sum())
    })();
    match r {
        Ok(sum) => println!("sum={sum}"),
        Err(e) => println!("error={e}"),
    }
    ferry::shutdown();
    std::process::exit(0);
}

#[test]
fn a_head_on_one_host_serves_tools_and_a_job_on_others() {
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut cmd = hosts.command(0, ferry);
    cmd.args(["start", "--head", "--host", hosts.addr(0), "--port", "0", "--num-cpus", "2", "--block"]);
    let mut head = Head::start(cmd, T).unwrap();
    let (address, token) = (head.address.clone(), head.token.clone());
    assert!(address.starts_with(hosts.addr(0)), "{address}");

    // Another host sees it over the network.
    let st = hosts.command(1, ferry).args(["status", "--address", &address, "--token", &token]).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success() && text.contains("alive"), "{text}{}", String::from_utf8_lossy(&st.stderr));

    // The root namespace has no route to the hosts: they are isolated.
    let sock: std::net::SocketAddr = address.parse().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)).is_err());

    // A job on a third host joins by address (token from the environment) and runs tasks on
    // the head's workers.
    let mut job = hosts
        .command(2, std::env::current_exe().unwrap())
        .env("FERRY_TEST_JOIN_ADDRESS", &address)
        .env("FERRY_TOKEN", &token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_exit(&mut job, T);
    if exited.is_err() {
        let _ = job.kill();
    }
    assert!(exited.unwrap(), "the job fails");
    let mut printed = String::new();
    job.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    assert!(printed.contains("sum=2470"), "{printed}");

    let stop = hosts.command(1, ferry).args(["stop", "--address", &address, "--token", &token]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(head.wait_exit(T).unwrap(), "the head exits cleanly after ferry stop");

    hosts.tear_down().unwrap();
}

fn status_of(hosts: &Hosts, on: usize, address: &str, token: &str) -> String {
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let out = hosts.command(on, ferry).args(["status", "--address", address, "--token", token]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Polls the head's status until `f` holds; returns how long that took.
fn until(hosts: &Hosts, head: &Head, what: &str, f: impl Fn(&str) -> bool) -> Duration {
    let t = std::time::Instant::now();
    loop {
        let s = status_of(hosts, 0, &head.address, &head.token);
        if f(&s) {
            return t.elapsed();
        }
        assert!(t.elapsed() < T, "timed out waiting for: {what}; last status:\n{s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn nodes_join_the_head_and_dead_ones_are_detected() {
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut cmd = hosts.command(0, ferry);
    cmd.args(["start", "--head", "--host", hosts.addr(0), "--port", "0", "--num-cpus", "1", "--block"]);
    cmd.args(["--node-timeout-ms", "1000"]);
    let mut head = Head::start(cmd, T).unwrap();
    let mut members = Vec::new();
    for i in 1..3 {
        let mut cmd = hosts.command(i, ferry);
        cmd.args(["start", "--address", &head.address, "--token", &head.token, "--host", hosts.addr(i)]);
        cmd.args(["--heartbeat-ms", "100"]);
        cmd.args(["--port", "0", "--num-cpus", "1", "--block"]);
        members.push(Head::start(cmd, T).unwrap());
    }
    until(&hosts, &head, "three nodes alive", |s| s.contains("cluster: 3 nodes, 3 alive"));

    // A frozen node keeps its sockets open: only the missing heartbeats show it is gone.
    let frozen = members[0].child.id();
    signal(frozen, 19); // SIGSTOP
    let took = until(&hosts, &head, "the frozen node declared dead", |s| s.contains("3 nodes, 2 alive"));
    eprintln!("frozen node detected dead after {took:?} (timeout 1 s)");
    // The timeout given on the command line (the default is 5 s).
    assert!(took < Duration::from_secs(4), "{took:?}");
    // A killed node's connection closes: it is dead at once.
    signal(members[1].child.id(), 9);
    until(&hosts, &head, "the killed node declared dead", |s| s.contains("3 nodes, 1 alive"));
    // The frozen one, thawed, is heard from again.
    signal(frozen, 18); // SIGCONT
    until(&hosts, &head, "the thawed node alive again", |s| s.contains("3 nodes, 2 alive"));

    let stop = hosts.command(0, ferry).args(["stop", "--address", &head.address, "--token", &head.token]).output();
    assert!(stop.unwrap().status.success());
    assert!(head.wait_exit(T).unwrap());
    drop(members);
    hosts.tear_down().unwrap();
}

/// The head's control store persists: after `kill -9` and a start on the same state directory
/// and port, the head lists the jobs that ran before, and the member (which retries on its
/// own) is alive in it again.
#[test]
fn a_restarted_head_finds_its_nodes_and_jobs_again() {
    let hosts = Hosts::new(2).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let state = std::env::temp_dir().join(format!("ferry-test-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let start_head = || {
        let mut cmd = hosts.command(0, ferry);
        cmd.args(["start", "--head", "--host", hosts.addr(0), "--port", "7001", "--num-cpus", "1", "--block"]);
        cmd.arg("--state-dir").arg(&state).env("FERRY_NODE_TIMEOUT_MS", "1000");
        Head::start(cmd, T).unwrap()
    };
    let mut head = start_head();
    let mut cmd = hosts.command(1, ferry);
    cmd.env("FERRY_HEARTBEAT_MS", "100");
    cmd.args(["start", "--address", &head.address, "--token", &head.token, "--host", hosts.addr(1)]);
    cmd.args(["--port", "0", "--num-cpus", "1", "--block"]);
    let _member = Head::start(cmd, T).unwrap();
    until(&hosts, &head, "two nodes alive", |s| s.contains("cluster: 2 nodes, 2 alive"));

    // Any program can be a job; this one is shipped to the head and prints.
    let out = hosts
        .command(1, ferry)
        .args(["submit", "--address", &head.address, "--token", &head.token, "--", "/bin/echo", "hello from a job"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a job\n");

    signal(head.child.id(), 9);
    let _ = head.wait_exit(T);
    let token = head.token.clone();
    drop(head);
    let head = start_head();
    assert_eq!(head.token, token, "the token is the cluster's: the member keeps using it");
    let s = until(&hosts, &head, "the member back", |s| s.contains("cluster: 2 nodes, 2 alive"));
    eprintln!("the member was back {s:?} after the head restarted");
    let status = status_of(&hosts, 0, &head.address, &head.token);
    assert!(
        status.contains("jobs: 1") && status.contains("exited with 0") && status.contains("hello from a job"),
        "{status}"
    );
    drop(head);
    let _ = std::fs::remove_dir_all(&state);
}

/// A member whose head is gone for good (longer than its grace) stops by itself, saying why,
/// rather than retrying for ever.
#[test]
fn a_member_whose_head_is_gone_stops_after_its_grace() {
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut cmd = std::process::Command::new(ferry);
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "1", "--block"]);
    let mut head = Head::start(cmd, T).unwrap();
    let mut cmd = std::process::Command::new(ferry);
    cmd.env("FERRY_TOKEN", &head.token).env("FERRY_HEARTBEAT_MS", "100");
    cmd.args(["start", "--address", &head.address, "--port", "0", "--num-cpus", "1", "--block"]);
    cmd.args(["--head-grace-ms", "1500"]).stderr(std::process::Stdio::piped());
    let mut member = Head::start(cmd, T).unwrap();
    let mut err = member.child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    until_local(&head, "the member joined", |s| s.contains("cluster: 2 nodes, 2 alive"));
    // The head and its control store go at once, for good.
    signal(head.child.id(), 9);
    let _ = head.wait_exit(T);
    let t = Instant::now();
    assert!(member.wait_exit(T).unwrap(), "the member did not stop cleanly");
    let took = t.elapsed();
    let said = log.join().unwrap();
    assert!(said.contains("its head is gone: stopping this node"), "{said}");
    assert!(took >= Duration::from_millis(1000) && took < Duration::from_secs(15), "stopped after {took:?}");
}

fn until_local(head: &Head, what: &str, ok: impl Fn(&str) -> bool) {
    let end = Instant::now() + T;
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .env("FERRY_TOKEN", &head.token)
            .args(["status", "--address", &head.address])
            .output()
            .unwrap();
        if ok(&String::from_utf8_lossy(&out.stdout)) {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
