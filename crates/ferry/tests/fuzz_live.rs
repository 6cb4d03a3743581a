//! A structured fuzzer against a live cluster: a peer holding the token sends thousands of
//! well-formed but random messages (every variant of the protocol, random fields, generated
//! by proptest) to the node daemon, to a worker and to the driver's own socket, on several
//! connections. Bounded in count and time. Nothing may panic, every process must live, and
//! the cluster must still run tasks afterwards.
//!
//! Left out, because a token holder may do them on purpose: `StopNode`, messages that set
//! the program workers run (`Register` beyond the first, `HostActor` with a program), and
//! detached actors (they live, holding workers, until killed: their creator leaving does not
//! end them).

mod common;

use common::{cluster, pid_alive, T};
use ferry_proto::conn::connect;
use ferry_proto::msg::{FromWorker, ProcKind, ToNode, ToWorker};
use ferry_proto::{Addr, WorkerId};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[ferry::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn runner(seed: u8) -> TestRunner {
    TestRunner::new_with_rng(Config::default(), TestRng::from_seed(Default::default(), &[seed; 32]))
}

fn sample<T: Arbitrary>(r: &mut TestRunner) -> T {
    any::<T>().new_tree(r).expect("a value").current()
}

/// A random message to a daemon, bar the few a token holder sends on purpose (module docs).
fn to_node(r: &mut TestRunner) -> ToNode {
    loop {
        match sample::<ToNode>(r) {
            ToNode::StopNode | ToNode::Register { .. } | ToNode::Log { .. } => continue,
            ToNode::HostActor { actor, mut spec, home, .. } => {
                spec.detached = false;
                return ToNode::HostActor { actor, spec, home, exe: None };
            }
            ToNode::CreateActor { req, actor, mut spec } => {
                spec.detached = false;
                return ToNode::CreateActor { req, actor, spec };
            }
            m => return m,
        }
    }
}

/// Sends `n` messages from `make` on `conns` connections to `addr`, draining what comes back.
fn blast<M: serde::Serialize>(
    addr: &Addr,
    token: &str,
    conns: usize,
    n: usize,
    register: bool,
    mut make: impl FnMut() -> M,
) {
    let end = Instant::now() + Duration::from_secs(20);
    let mut open = Vec::new();
    for _ in 0..conns {
        let (c, mut rx, _) = connect(addr, token, WorkerId(ferry_proto::ids::random_u64()), 64 << 20).unwrap();
        if register {
            c.send(&ToNode::register_tool(ProcKind::Tool)).unwrap();
        }
        // Whatever comes back is read and dropped, so that no answer ever blocks the peer.
        std::thread::spawn(move || while rx.read_raw().is_ok() {});
        open.push(c);
    }
    for i in 0..n {
        if Instant::now() > end {
            break;
        }
        let c = &open[i % open.len()];
        if c.send(&make()).is_err() {
            // The peer closed this connection (a message it refused): a new one.
            let (nc, mut rx, _) = connect(addr, token, WorkerId(ferry_proto::ids::random_u64()), 64 << 20)
                .unwrap_or_else(|e| panic!("{addr} is gone after {i} messages: {e}"));
            if register {
                nc.send(&ToNode::register_tool(ProcKind::Tool)).unwrap();
            }
            std::thread::spawn(move || while rx.read_raw().is_ok() {});
            open[i % conns] = nc;
        }
    }
    // This peer leaves: its connections close (their readers hold the sockets open until
    // then), and with them what it held.
    for c in open {
        c.shutdown();
    }
}

#[test]
fn random_well_formed_messages_from_a_token_holder_break_nothing() {
    ferry_testkit::own_process!();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |p| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        hook(p)
    }));
    cluster();
    let info = ferry::__private::session_info().unwrap();

    // The daemon. Random lease requests lease workers to this peer, and its connections
    // closing then ends those leases: the workers are replaced, as for any owner that goes.
    let mut r = runner(1);
    blast(&info.node_addr, &info.token, 4, 4000, true, || to_node(&mut r));
    // Answers a process might get, sent the wrong way.
    let mut r = runner(4);
    blast(&info.node_addr, &info.token, 1, 500, true, || sample::<FromWorker>(&mut r));
    let mut last = None;
    let back = std::time::Instant::now() + T;
    while std::time::Instant::now() < back {
        let s = ferry::node_stats().unwrap();
        if s.workers == 2 {
            break;
        }
        last = Some(s);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::time::Instant::now() < back, "the pool is not back at its size: {last:?}");

    // A worker: it must live through it.
    let (sock, pid) = a_worker(&info);
    let mut r = runner(2);
    blast(&Addr::Unix(sock), &info.token, 2, 2000, false, || sample::<ToWorker>(&mut r));
    // The driver's own socket (an owner's).
    let mut r = runner(3);
    blast(&info.listen, &info.token, 2, 2000, false, || sample::<ToWorker>(&mut r));

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked on a message (see above)");
    assert!(pid_alive(pid), "worker {pid} died of a message");
    // The cluster still works: tasks, and large objects through the store.
    let refs: Vec<_> = (0..100).map(|i| add::remote(i, 1)).collect();
    assert_eq!(ferry::get_all(&refs).unwrap(), (1..=100).collect::<Vec<i64>>());
    let big = ferry::put(vec![9u8; 1 << 20]).unwrap();
    assert_eq!(ferry::get_bytes(&big).unwrap()[12345], 9);
    assert_eq!(ferry::get_timeout(&add::remote(40, 2), T).unwrap(), 42);
}

/// A live worker of this cluster: its socket and its pid (from its environment).
fn a_worker(info: &ferry::__private::SessionInfo) -> (std::path::PathBuf, u32) {
    let pids = ferry::__private::session_info().unwrap().worker_pids;
    for pid in pids {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let id = env
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("FERRY_WORKER_ID="))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(id) = id {
            let sock = info.session_dir.join(format!("p-{}.sock", WorkerId(id)));
            if sock.exists() {
                return (sock, pid);
            }
        }
    }
    panic!("no live worker with a socket");
}
