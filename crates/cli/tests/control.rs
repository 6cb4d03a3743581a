//! The control store killed with -9 while a job runs (DESIGN §8, "control store death"): the
//! head starts it again on its state directory; tasks running meanwhile finish without a
//! retry, new tasks and actor calls go on during the outage, the nodes join again and
//! re-report the actors they host, so a named detached actor is found under its name with its
//! state (the same process, not a restart), a named actor that is not detached lives while its
//! handle does (its holder holds it again) and ends when it goes, names can be taken again,
//! jobs are still listed, and the restarted control store still detects a node's death.

use ferry::prelude::*;
use ferry_testkit::{signal, wait_exit, Cluster, Hosts};
use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

#[ferry::remote]
fn slow(ms: u64, x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * 2
}

#[ferry::actor]
#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[ferry::actor]
impl Counter {
    pub fn new() -> Self {
        Counter::default()
    }
    pub fn add(&mut self, by: u64) -> (u64, u32) {
        self.n += by;
        (self.n, std::process::id())
    }
}

ferry_testkit::job!("FERRY_TEST_CONTROL_JOB", control_job);

fn control_job(address: &str) {
    ferry::init(ferry::Config::default().address(address)).unwrap();
    let say = |s: String| {
        println!("{s}");
        let _ = std::io::stdout().flush();
    };
    let counter = Counter::options().name("counter").detached().max_restarts(0).remote().unwrap();
    let (n, pid) = ferry::get(&counter.add(5)).unwrap();
    assert_eq!(n, 5);
    // Named, not detached: it lives while a handle does, across the restart too.
    let session = Counter::options().name("session").remote().unwrap();
    ferry::get(&session.add(1)).unwrap();
    // Tasks running on every node when the control store dies.
    let spread = SchedulingStrategy::Spread;
    let running: Vec<_> = (0..6).map(|i| slow::options().scheduling_strategy(spread.clone()).remote(1500, i)).collect();
    std::thread::sleep(Duration::from_millis(300));
    say("kill control".into());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    // The control store is down (its restart is delayed by 500 ms here): a name lookup waits
    // for it; tasks and actor calls go on.
    let t = std::time::Instant::now();
    let found = ferry::get_actor::<Counter>("counter").map(|c| c.id() == counter.id());
    say(format!("lookup during outage: {found:?}, waited {}", t.elapsed() > Duration::from_millis(100)));
    let during: Vec<_> =
        (0..30).map(|i| slow::options().scheduling_strategy(spread.clone()).remote(10, 100 + i)).collect();
    let ok = ferry::get_all(&during).map(|v| v == (100..130).map(|x| x * 2).collect::<Vec<u64>>());
    say(format!("during outage: tasks {ok:?}, actor {:?}", ferry::get(&counter.add(1)).map(|r| r.0)));
    let ok = ferry::get_all(&running).map(|v| v == (0..6).map(|x| x * 2).collect::<Vec<u64>>());
    say(format!("running tasks: {ok:?}, retries {}", ferry::recovery_stats().unwrap().task_retries));
    drop(counter);
    say("wait for the restart".into());
    line.clear();
    std::io::stdin().read_line(&mut line).unwrap();
    // Started again: the named actor is there under its name, the same process with its state.
    match ferry::get_actor::<Counter>("counter") {
        Ok(c) => match ferry::get_timeout(&c.add(1), Duration::from_secs(20)) {
            Ok((n, p)) => say(format!("named actor after restart: n={n} same_process={}", p == pid)),
            Err(e) => say(format!("named actor after restart: call failed: {e}")),
        },
        Err(e) => say(format!("named actor after restart: not found: {e}")),
    }
    // Past the restored control store's grace for holders to hold again: still held.
    std::thread::sleep(Duration::from_millis(1500));
    let alive = ferry::get_timeout(&session.add(1), Duration::from_secs(20)).map(|r| r.0);
    drop(session);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while ferry::get_actor::<Counter>("session").is_ok() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    say(format!("session: {alive:?}, ended {}", ferry::get_actor::<Counter>("session").is_err()));
    let other = Counter::options().name("another").detached().remote().unwrap();
    let found = ferry::get_actor::<Counter>("another").map(|a| a.id() == other.id());
    let taken = Counter::options().name("counter").remote().map(|_| ());
    say(format!("names after restart: new {found:?}, taken {}", taken.is_err()));
    let after: Vec<_> = (0..12).map(|i| slow::options().scheduling_strategy(spread.clone()).remote(10, i)).collect();
    say(format!("tasks after restart: {:?}", ferry::get_all(&after).map(|v| v.len())));
    ferry::kill(&ferry::get_actor::<Counter>("counter").unwrap()).unwrap();
    ferry::kill(&other).unwrap();
    ferry::shutdown();
    std::process::exit(0);
}

fn status(hosts: &Hosts, cluster: &Cluster) -> String {
    cluster.status(hosts, env!("CARGO_BIN_EXE_ferry")).unwrap()
}

fn control_pid(state: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(state.join("control.pid")).ok()?.trim().parse().ok()
}

#[test]
fn the_control_store_killed_and_started_again_loses_nothing() {
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let state = std::env::temp_dir().join(format!("ferry-test-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let head_args = vec!["--num-cpus".into(), "2".into(), "--state-dir".into(), state.display().to_string()];
    let two = vec!["--num-cpus".to_string(), "2".to_string()];
    // Nothing here waits for a node to be declared dead; a node starved for over a second by
    // a loaded 2-core machine (the whole suite at once) must not be, so the timeout is loose.
    let env = [("FERRY_NODE_TIMEOUT_MS", "3000"), ("FERRY_CONTROL_RESTART_DELAY_MS", "500")];
    let mut cluster = Cluster::start_with(&hosts, ferry, &[head_args, two.clone(), two], &env, T).unwrap();
    let out = hosts
        .command(1, ferry)
        .args(["submit", "--address", &cluster.head.address, "--token", &cluster.head.token, "--", "/bin/echo", "hi"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut job = cluster
        .job(&hosts, 0, std::env::current_exe().unwrap(), "FERRY_TEST_CONTROL_JOB", &cluster.head.address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = job.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = job.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next = |what: &str| rx.recv_timeout(T).unwrap_or_else(|_| panic!("the job did not get to: {what}"));

    assert_eq!(next("kill control"), "kill control");
    let first = control_pid(&state).expect("the control store writes its pid");
    signal(first, 9);
    let killed = Instant::now();
    writeln!(stdin, "go").unwrap();
    assert_eq!(next("lookup"), "lookup during outage: Ok(true), waited true");
    let during = next("the outage");
    assert_eq!(during, "during outage: tasks Ok(true), actor Ok(6)");
    let running = next("running tasks");
    assert_eq!(running, "running tasks: Ok(true), retries 0", "tasks running went on, none retried");
    assert_eq!(next("wait"), "wait for the restart");

    // The head starts it again; every node joins it again.
    loop {
        assert!(killed.elapsed() < T, "the control store was not started again");
        if control_pid(&state).is_some_and(|p| p != first) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("control store started again after {:?}", killed.elapsed());
    writeln!(stdin, "go").unwrap();
    let named = next("named actor");
    assert_eq!(named, "named actor after restart: n=7 same_process=true", "re-attached, not started anew");
    assert_eq!(next("session"), "session: Ok(2), ended true", "held across the restart, ended when dropped");
    assert_eq!(next("names"), "names after restart: new Ok(true), taken true");
    assert_eq!(next("tasks after"), "tasks after restart: Ok(12)");
    assert!(wait_exit(&mut job, T).unwrap(), "the job failed");
    let end = Instant::now() + T;
    let s = loop {
        let s = status(&hosts, &cluster);
        if s.contains("cluster: 3 nodes, 3 alive") && s.contains("control store at ") {
            break s;
        }
        assert!(Instant::now() < end, "the nodes did not join the restarted control store:\n{s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(s.contains("jobs: 1") && s.contains("exited with 0"), "{s}");

    // The restarted control store still sees a node die.
    let m = &mut cluster.members[1];
    let _ = m.child.kill();
    let _ = m.child.wait();
    loop {
        let s = status(&hosts, &cluster);
        if s.contains("cluster: 3 nodes, 2 alive") {
            break;
        }
        assert!(Instant::now() < end, "the killed node was not declared dead:\n{s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(cluster);
    hosts.tear_down().unwrap();
    let _ = std::fs::remove_dir_all(&state);
}

/// Restarts slowly: its constructor sleeps when the marker file exists (a later incarnation).
#[ferry::actor]
pub struct Phoenix {
    incarnation: u32,
}

#[ferry::actor]
impl Phoenix {
    pub fn new(marker: String) -> Self {
        let again = std::fs::metadata(&marker).is_ok();
        if again {
            std::thread::sleep(Duration::from_millis(800));
        }
        let _ = std::fs::write(&marker, b"x");
        Phoenix { incarnation: again as u32 }
    }
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
    pub fn slow(&self, ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        self.incarnation
    }
}

ferry_testkit::job!("FERRY_TEST_LOST_RESOLVE_JOB", lost_resolve_job);

/// Calls a named actor (homed at the control store), kills the actor's process and, while
/// the caller's request for its new address waits at the control store, kills that too.
fn lost_resolve_job(address: &str) {
    ferry::init(ferry::Config::default().address(address)).unwrap();
    let state = std::path::PathBuf::from(std::env::var("FERRY_TEST_STATE").unwrap());
    let marker = std::env::var("FERRY_TEST_SLOW_RESTART").unwrap();
    let p = Phoenix::options().name("phoenix").detached().max_restarts(1).max_task_retries(1).remote(marker).unwrap();
    let pid = ferry::get(&p.pid()).unwrap();
    let call = p.slow(1000);
    std::thread::sleep(Duration::from_millis(200));
    signal(pid, 9);
    // The call goes back to the actor's queue and its new address is asked of the control
    // store, which restarts it slowly: meanwhile the control store dies.
    std::thread::sleep(Duration::from_millis(150));
    signal(control_pid(&state).unwrap(), 9);
    let t = Instant::now();
    let r = ferry::get_timeout(&call, Duration::from_secs(30));
    println!("call: {r:?} after {:?}", t.elapsed());
    let after = ferry::get_timeout(&p.slow(1), Duration::from_secs(30));
    println!("after: {after:?}");
    let _ = ferry::kill(&p);
    std::process::exit(0);
}

/// The same class as the calls lost with a restarting actor: a caller's request for an
/// actor's address, sent to the control store just before it died, was never answered, so
/// the calls waiting on it hung. Now such requests are asked again once it is back.
#[test]
fn a_resolve_lost_with_the_control_store_is_asked_again() {
    let state = std::env::temp_dir().join(format!("ferry-test-lost-resolve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let marker = std::env::temp_dir().join(format!("ferry-test-phoenix-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block", "--state-dir"]).arg(&state);
    cmd.env("FERRY_CONTROL_RESTART_DELAY_MS", "500").env("FERRY_NODE_TIMEOUT_MS", "2000");
    let head = ferry_testkit::Head::start(cmd, T).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("FERRY_TEST_LOST_RESOLVE_JOB", &head.address)
        .env("FERRY_TOKEN", &head.token)
        .env("FERRY_TEST_STATE", &state)
        .env("FERRY_TEST_SLOW_RESTART", &marker)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, text) = {
        let mut child = out;
        let mut s = String::new();
        let mut stdout = child.stdout.take().unwrap();
        let done = wait_exit(&mut child, T);
        use std::io::Read;
        let _ = stdout.read_to_string(&mut s);
        (done, s)
    };
    assert!(ok.clone().is_ok_and(|clean| clean), "the job hung or failed: {ok:?}\n{text}");
    let call = text.lines().find(|l| l.starts_with("call: ")).unwrap_or_default();
    assert!(call.starts_with("call: Ok(1)") || call.contains("ActorDied"), "{text}");
    assert!(text.contains("after: Ok(1)"), "{text}");
    eprintln!("{text}");
    drop(head);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&marker);
}
