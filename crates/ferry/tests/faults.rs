//! Failures and bad input, with real processes: a worker that dies, a driver that shuts down,
//! and bytes on every socket that no well-behaved peer would send.

mod common;

use common::{cluster, eventually, pid_alive, T};
use ferry::Error;
use ferry_proto::conn::{connect, Conn};
use ferry_proto::msg::{Arg, FromNode, FromWorker, Shape, TaskError, TaskSpec, ToNode, ToWorker};
use ferry_proto::{FrameReader, ObjectId, Stream, TaskId, WorkerId};
use std::io::Write;

#[ferry::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[ferry::remote]
fn pid() -> u32 {
    std::process::id()
}

#[ferry::remote(max_retries = 0)]
fn die() -> u32 {
    std::process::abort()
}

/// Dies the first time it runs for `marker`, succeeds on the retry.
#[ferry::remote]
fn die_once(marker: String) -> String {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"x").unwrap();
        std::process::exit(3);
    }
    "survived".into()
}

#[test]
fn worker_death_fails_the_task_and_the_driver_goes_on() {
    ferry_testkit::own_process!();
    cluster();
    let r = die::remote();
    match ferry::get_timeout(&r, T) {
        Err(e @ Error::WorkerDied { .. }) => assert!(e.to_string().contains("die"), "{e}"),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // Downstream of the dead task fails the same way, and new tasks run.
    assert!(matches!(ferry::get_timeout(&add::remote(1, 1), T), Ok(2)));
    // The pool is back at its size.
    eventually("the pool replaced the dead worker", T, || ferry::node_stats().unwrap().workers == 2);
}

#[test]
fn worker_death_is_retried() {
    ferry_testkit::own_process!();
    cluster();
    let marker = std::env::temp_dir().join(format!("ferry-die-once-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let r = die_once::remote(marker.to_string_lossy().into_owned());
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), "survived");
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn shutdown_leaves_no_process_and_no_file_behind() {
    ferry_testkit::own_process!();
    cluster();
    let mut pids: Vec<u32> = (0..10).map(|_| ferry::get_timeout(&pid::remote(), T).unwrap()).collect();
    pids.extend(ferry::__private::session_info().unwrap().worker_pids);
    pids.sort_unstable();
    pids.dedup();
    assert!(!pids.is_empty() && !pids.contains(&std::process::id()));
    let info = ferry::__private::session_info().unwrap();
    let slow = add::remote(1, 1);
    ferry::shutdown();
    for p in &pids {
        eventually(&format!("worker {p} gone"), T, || !pid_alive(*p));
    }
    assert!(!info.store_dir.exists(), "store directory left behind");
    assert!(!info.session_dir.exists(), "session directory left behind");
    // Calls after shutdown say so instead of hanging.
    let after = add::remote(1, 2);
    assert!(matches!(ferry::get_timeout(&after, T), Err(Error::NotRunning { .. })));
    assert!(matches!(ferry::get_timeout(&slow, T), Ok(2) | Err(Error::NotRunning { .. })));
}

// ---- raw protocol ----

fn raw_node() -> (Conn, FrameReader<Stream>) {
    let info = ferry::__private::session_info().unwrap();
    let (c, r, _) = connect(&info.node_addr, &info.token, WorkerId(42), 1 << 20).unwrap();
    (c, r)
}

/// Leases a worker straight from the daemon and connects to it, as an owner would.
fn raw_worker() -> (Conn, FrameReader<Stream>, Conn) {
    let info = ferry::__private::session_info().unwrap();
    let (node, mut node_rx) = raw_node();
    node.send(&ToNode::Register {
        kind: ferry_proto::msg::ProcKind::Driver,
        pid: std::process::id(),
        listen: ferry_proto::Addr::Unix("/nonexistent".into()),
        tcp: None,
        exe: None,
        node: None,
    })
    .unwrap();
    assert!(matches!(node_rx.read::<FromNode>().unwrap(), FromNode::Registered { .. }));
    node.send(&ToNode::RequestLease {
        req: 1,
        shape: Shape::cpus(1.0),
        depth: 1,
        placement: Default::default(),
        prefer: None,
        priority: Default::default(),
        job: Default::default(),
        weight: None,
    })
    .unwrap();
    let addr = loop {
        match node_rx.read::<FromNode>().unwrap() {
            FromNode::LeaseGranted { addr, .. } => break addr,
            _ => continue,
        }
    };
    let (w, wrx, _) = connect(&addr, &info.token, WorkerId(43), 1 << 20).unwrap();
    (w, wrx, node)
}

fn spec(function: &str, args: Vec<Arg>) -> TaskSpec {
    TaskSpec {
        task: TaskId { owner: WorkerId(43), seq: 1 },
        function: function.into(),
        args,
        depth: 1,
        num_returns: None,
        job: WorkerId(43),
        namespace: None,
        attempt: 0,
        resources: None,
        stream: None,
        timed: false,
    }
}

fn cluster_still_works() {
    assert_eq!(ferry::get_timeout(&add::remote(40, 2), T).unwrap(), 42);
}

#[test]
fn wrong_or_missing_token_is_refused_with_a_reason() {
    ferry_testkit::own_process!();
    cluster();
    let info = ferry::__private::session_info().unwrap();
    match connect(&info.node_addr, "not-the-token", WorkerId(1), 1 << 20) {
        Err(ferry_proto::conn::ConnectError::Refused(r)) => assert!(r.contains("token"), "{r}"),
        other => panic!("expected refusal, got {:?}", other.map(|_| ())),
    }
    match connect(&info.node_addr, "", WorkerId(1), 1 << 20) {
        Err(ferry_proto::conn::ConnectError::Refused(_)) => {}
        other => panic!("expected refusal, got {:?}", other.map(|_| ())),
    }
    cluster_still_works();
}

#[test]
fn garbage_and_oversized_frames_close_only_that_connection() {
    ferry_testkit::own_process!();
    cluster();
    let info = ferry::__private::session_info().unwrap();
    let path = match &info.node_addr {
        ferry_proto::Addr::Unix(p) => p.clone(),
        _ => unreachable!(),
    };
    // Not a ferry peer at all.
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf); // closed by the daemon
                                                          // An authenticated peer that sends an oversized frame, then garbage.
    let (c, mut rx) = raw_node();
    c.send_raw(&(u32::MAX - 1).to_le_bytes()).unwrap();
    assert!(rx.read::<FromNode>().is_err(), "the daemon must close the connection");
    let (c, mut rx) = raw_node();
    c.send_raw(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(rx.read::<FromNode>().is_err(), "the daemon must close the connection");
    // Requests before registering, and a worker registration from a process the daemon did
    // not start, are refused, not obeyed.
    let (c, mut rx) = raw_node();
    c.send(&ToNode::ReturnLease { lease: 12345, kill: true }).unwrap();
    assert!(rx.read::<FromNode>().is_err(), "a request before registration closes the connection");
    let (c, mut rx) = raw_node();
    c.send(&ToNode::Register {
        kind: ferry_proto::msg::ProcKind::Worker,
        pid: 1,
        listen: ferry_proto::Addr::Unix("/x".into()),
        tcp: None,
        exe: None,
        node: None,
    })
    .unwrap();
    assert!(rx.read::<FromNode>().is_err(), "an unexpected worker registration closes the connection");
    cluster_still_works();
}

#[test]
fn unknown_function_and_bad_arguments_are_typed_errors_and_the_worker_survives() {
    ferry_testkit::own_process!();
    cluster();
    let (w, mut wrx, _node) = raw_worker();
    w.send(&ToWorker::Push(vec![spec("no::such::function", vec![])])).unwrap();
    match wrx.read::<FromWorker>().unwrap() {
        FromWorker::Failed { error: TaskError::UnknownFunction { function }, .. } => {
            assert_eq!(function, "no::such::function")
        }
        other => panic!("{other:?}"),
    }
    // `add` takes two i64: give it a string and too few arguments.
    let add_id = "faults::add";
    let bad = ferry::__private::encode_vec(&"not a number".to_string()).unwrap();
    w.send(&ToWorker::Push(vec![spec(add_id, vec![Arg::Inline(bad.clone()), Arg::Inline(bad)])])).unwrap();
    match wrx.read::<FromWorker>().unwrap() {
        FromWorker::Failed { error: TaskError::BadArgument { index: 0, .. }, .. } => {}
        other => panic!("{other:?}"),
    }
    w.send(&ToWorker::Push(vec![spec(add_id, vec![])])).unwrap();
    assert!(matches!(
        wrx.read::<FromWorker>().unwrap(),
        FromWorker::Failed { error: TaskError::BadArgument { .. }, .. }
    ));
    // An argument said to be in the store that is not there.
    let missing = Arg::Stored { object: Default::default(), size: 10, node: Default::default() };
    w.send(&ToWorker::Push(vec![spec(add_id, vec![missing.clone(), missing])])).unwrap();
    assert!(matches!(
        wrx.read::<FromWorker>().unwrap(),
        FromWorker::Failed { error: TaskError::ArgumentUnavailable { .. }, .. }
    ));
    // A well-formed call on the same connection still works.
    let one = ferry::__private::encode_vec(&1i64).unwrap();
    w.send(&ToWorker::Push(vec![spec(add_id, vec![Arg::Inline(one.clone()), Arg::Inline(one)])])).unwrap();
    match wrx.read::<FromWorker>().unwrap() {
        FromWorker::Done { returns, .. } => match &returns[0] {
            ferry_proto::msg::Return::Inline(b) => assert_eq!(ferry::__private::decode::<i64>(b).unwrap(), 2),
            r => panic!("{r:?}"),
        },
        other => panic!("{other:?}"),
    }
    // Garbage on the worker's socket closes that connection only.
    w.send_raw(&[3, 0, 0, 0, 9, 9, 9]).unwrap();
    assert!(wrx.read::<FromWorker>().is_err());
    cluster_still_works();
}

#[test]
fn garbage_never_crashes_a_daemon_or_a_worker() {
    ferry_testkit::own_process!();
    cluster();
    let pids = ferry::__private::session_info().unwrap().worker_pids;
    // Many random frames from authenticated peers, each on its own connection.
    let mut x: u32 = 0x9e3779b9;
    for i in 0..200 {
        let mut frame = Vec::new();
        let len = (i % 60) as u32;
        frame.extend_from_slice(&len.to_le_bytes());
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            frame.push(x as u8);
        }
        let (c, mut rx) = raw_node();
        c.send_raw(&frame).unwrap();
        c.shutdown();
        let _ = rx.read::<FromNode>();
    }
    for p in pids {
        assert!(pid_alive(p), "worker {p} died");
    }
    cluster_still_works();
}

/// With `FERRY_TEST_CHILD_DRIVER=1`, this test binary is a driver that prints its workers'
/// pids and waits to be killed (entered before `main`, like worker mode).
#[used]
#[link_section = ".init_array"]
static CHILD_DRIVER: extern "C" fn() = child_driver;

extern "C" fn child_driver() {
    if std::env::var_os("FERRY_TEST_CHILD_DRIVER").is_none() {
        return;
    }
    // SAFETY: single-threaded here, before main; the workers must not inherit it.
    unsafe { std::env::remove_var("FERRY_TEST_CHILD_DRIVER") };
    ferry::init(ferry::Config::default().num_cpus(2)).unwrap();
    let info = ferry::__private::session_info().unwrap();
    let pids: Vec<u32> = (0..4).map(|_| ferry::get_timeout(&pid::remote(), T).unwrap()).collect();
    println!("session {}", info.session_dir.display());
    println!("store {}", info.store_dir.display());
    for p in pids {
        println!("pid {p}");
    }
    println!("ready");
    std::thread::sleep(std::time::Duration::from_secs(120));
    std::process::exit(1);
}

#[test]
fn a_killed_driver_takes_its_workers_with_it() {
    ferry_testkit::own_process!();
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("FERRY_TEST_CHILD_DRIVER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut pids, mut dirs) = (Vec::new(), Vec::new());
    loop {
        let line = rx.recv_timeout(T).expect("the child driver did not report its workers");
        match line.split_once(' ') {
            Some(("pid", p)) => pids.push(p.parse::<u32>().unwrap()),
            Some(("session" | "store", d)) => dirs.push(std::path::PathBuf::from(d)),
            _ if line == "ready" => break,
            _ => {}
        }
    }
    assert!(!pids.is_empty() && pids.iter().all(|p| pid_alive(*p)));
    child.kill().unwrap();
    child.wait().unwrap();
    for p in &pids {
        eventually(&format!("worker {p} of the killed driver gone"), T, || !pid_alive(*p));
    }
    // The next init on the machine removes what the dead driver left.
    cluster();
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn a_peer_that_stops_reading_cannot_stall_the_daemon() {
    ferry_testkit::own_process!();
    cluster();
    let (c, _rx_never_read) = raw_node();
    c.send(&ToNode::Register {
        kind: ferry_proto::msg::ProcKind::Driver,
        pid: std::process::id(),
        listen: ferry_proto::Addr::Unix("/nonexistent".into()),
        tcp: None,
        exe: None,
        node: None,
    })
    .unwrap();
    // Ask for far more answers than a socket buffer holds, and read none of them.
    let flood = std::thread::spawn(move || {
        for req in 0..200_000u64 {
            if c.send(&ToNode::Stats { req }).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The daemon gives up on that peer after its write timeout, and serves everyone else.
    let start = std::time::Instant::now();
    cluster_still_works();
    assert!(start.elapsed() < T);
    flood.join().unwrap();
}

#[test]
fn bad_requests_to_a_drivers_own_socket_close_that_connection_only() {
    ferry_testkit::own_process!();
    cluster();
    let info = ferry::__private::session_info().unwrap();
    let x = ferry::put(vec![1u8; 3]).unwrap();
    // Well-formed but bogus requests about objects: answered, and nothing breaks.
    let (c, mut rx, _) = connect(&info.listen, &info.token, WorkerId(77), 1 << 20).unwrap();
    let nobody = ObjectId { task: TaskId { owner: info.me, seq: 1 << 60 }, index: 0 };
    c.send(&ToWorker::GetObject { object: nobody }).unwrap();
    assert!(matches!(
        rx.read::<FromWorker>().unwrap(),
        FromWorker::Object { answer: ferry_proto::msg::ObjectAnswer::Unknown, .. }
    ));
    c.send(&ToWorker::ReleaseBorrows { objects: vec![(x.id(), u32::MAX), (nobody, 7)] }).unwrap();
    c.send(&ToWorker::AddBorrower { req: 5, objects: vec![nobody], borrower: WorkerId(77) }).unwrap();
    assert!(matches!(rx.read::<FromWorker>().unwrap(), FromWorker::Ack { req: 5 }));
    // Tasks pushed to a driver, then garbage: each closes its own connection.
    c.send(&ToWorker::Push(vec![spec("nothing", vec![])])).unwrap();
    assert!(rx.read::<FromWorker>().is_err());
    let (g, mut grx, _) = connect(&info.listen, &info.token, WorkerId(78), 1 << 20).unwrap();
    g.send_raw(&[9, 0, 0, 0, 0xff, 0xfe, 0xfd, 1, 2, 3, 4, 5, 6]).unwrap();
    assert!(grx.read::<FromWorker>().is_err());
    // The driver goes on: its own object reads back, and tasks run.
    assert_eq!(ferry::get(&x).unwrap(), vec![1u8; 3]);
    cluster_still_works();
}

#[ferry::remote]
fn slow_child(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(200));
    x * 10
}

/// Submits children and waits for them; on its first run it writes its pid to `marker` so
/// that the test can kill it while its children run.
#[ferry::remote]
fn parent_of_children(marker: String) -> u64 {
    let first = !std::path::Path::new(&marker).exists();
    if first {
        std::fs::write(&marker, std::process::id().to_string()).unwrap();
    }
    let kids: Vec<_> = (1..=3u64).map(slow_child::remote).collect();
    if first {
        // Give the test time to kill this process while the children run.
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
    ferry::get_all(&kids).unwrap().into_iter().sum()
}

/// An owner that is itself a task dies while its children run: its caller runs it again (it
/// has retries left), which makes the children again, and the result is the same.
#[test]
fn a_task_that_owns_children_is_run_again_when_it_dies() {
    ferry_testkit::own_process!();
    cluster();
    let marker = std::env::temp_dir().join(format!("ferry-parent-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let r = parent_of_children::remote(marker.display().to_string());
    eventually("the parent started", T, || marker.exists());
    let pid: u32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    common::sigkill(pid);
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 60);
    assert!(!pid_alive(pid));
    let _ = std::fs::remove_file(&marker);
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok());
    kb.unwrap_or(0u64) * 1024
}

/// The finding: a token holder that sent a 64 MiB frame header and one byte made the daemon
/// commit 64 MiB at once (twenty connections: +1.3 GiB). Now a frame's buffer grows as its
/// bytes arrive: twenty such connections to the daemon and twenty to a worker cost little.
#[test]
fn frame_headers_announcing_gigabytes_cost_only_the_bytes_sent() {
    ferry_testkit::own_process!();
    cluster();
    // The workers are up (they listen once registered).
    eventually("both workers registered", T, || ferry::node_stats().unwrap().workers == 2);
    let info = ferry::__private::session_info().unwrap();
    let worker_sock = std::fs::read_dir(&info.session_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("p-") && n.ends_with(".sock") && *p != info.session_dir.join(format!("p-{}.sock", info.me))
        })
        .expect("a worker's socket");
    let me = std::process::id();
    let workers_rss = || info.worker_pids.iter().map(|p| rss(*p)).sum::<u64>();
    let (before_me, before_workers) = (rss(me), workers_rss());
    let mut held = Vec::new();
    for target in [info.node_addr.clone(), ferry_proto::Addr::Unix(worker_sock)] {
        for _ in 0..20 {
            let (c, r, _) = connect(&target, &info.token, WorkerId(ferry_proto::ids::random_u64()), 64 << 20).unwrap();
            let mut frame = ((64u32 << 20) - 1).to_le_bytes().to_vec();
            frame.push(0);
            c.send_raw(&frame).unwrap();
            held.push((c, r));
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (grew_me, grew_workers) = (rss(me).saturating_sub(before_me), workers_rss().saturating_sub(before_workers));
    eprintln!("40 announced 64 MiB frames: daemon +{} KiB, workers +{} KiB", grew_me >> 10, grew_workers >> 10);
    assert!(grew_me < 64 << 20, "the daemon's process grew by {} MiB", grew_me >> 20);
    assert!(grew_workers < 64 << 20, "the workers grew by {} MiB", grew_workers >> 20);
    drop(held);
    cluster_still_works();
}
