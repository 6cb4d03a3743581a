//! A peer that stops reading stalls nobody else: a real daemon, a driver that registers and
//! then never reads (its socket fills), a client flooding the daemon with lines for the
//! drivers, and a third client whose requests must keep being answered at once. The daemon
//! queues what it sends under its lock and writes after releasing it; a write to the stuck
//! driver waits up to its 5 s timeout on the flooding client's thread alone.

use ferry_node::NodeOptions;
use ferry_proto::conn::connect;
use ferry_proto::msg::{FromNode, ProcKind, Shape, ToNode};
use ferry_proto::{Addr, WorkerId};
use ferry_sched::PoolOptions;
use std::time::{Duration, Instant};

const TOKEN: &str = "slow-peer-test-token-0123456789abcdef";

fn options() -> NodeOptions {
    let base = std::env::temp_dir().join(format!("ferry-slow-peer-test-{}", std::process::id()));
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&base).unwrap();
    NodeOptions {
        session_dir: base.join("session"),
        store_dir: base.join("store"),
        store_capacity: 1 << 30,
        spill_dir: None,
        token: TOKEN.into(),
        resources: Shape::cpus(1.0),
        // No worker program: this test runs no tasks.
        pool: PoolOptions { prestart: 0, max_workers: 1, idle_timeout: Duration::from_secs(1) },
        worker_program: None,
        tcp: None,
        head_timeout: None,
        control_only: false,
        head_grace: Duration::from_secs(60),
        join: None,
        state_dir: None,
        worker_env: Vec::new(),
        max_frame: 64 << 20,
    }
}

fn register(addr: &Addr, kind: ProcKind) -> (ferry_proto::Conn, ferry_proto::FrameReader<ferry_proto::Stream>) {
    let (conn, mut rx, _) = connect(addr, TOKEN, WorkerId(ferry_proto::ids::random_u64()), 64 << 20).unwrap();
    rx.get_ref().set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    conn.send(&ToNode::register_tool(kind)).unwrap();
    assert!(matches!(rx.read::<FromNode>().unwrap(), FromNode::Registered { .. }));
    (conn, rx)
}

#[test]
fn a_driver_that_stops_reading_stalls_no_other_client() {
    let node = ferry_node::start(options()).unwrap();
    let addr = node.addr();
    // Registered as a driver, so every line tasks print is sent to it; it never reads.
    let _stuck = register(&addr, ProcKind::Driver);
    let flooder = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let (conn, _rx) = register(&addr, ProcKind::Tool);
            let line = "x".repeat(64 << 10);
            // 32 MiB of lines: far more than the stuck driver's socket holds.
            for _ in 0..512 {
                if conn.send(&ToNode::Log { stderr: false, lines: vec![line.clone()], node: None }).is_err() {
                    break;
                }
            }
        }
    });
    let (probe, mut rx) = register(&addr, ProcKind::Tool);
    let end = Instant::now() + Duration::from_secs(6);
    let mut slowest = Duration::ZERO;
    let mut req = 0;
    while Instant::now() < end {
        req += 1;
        let t = Instant::now();
        probe.send(&ToNode::Stats { req }).unwrap();
        loop {
            match rx.read::<FromNode>().expect("the daemon answers within the read timeout") {
                FromNode::Stats { req: r, .. } if r == req => break,
                _ => {}
            }
        }
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A blocked write would hold the daemon for its 5 s timeout; nothing else takes long.
    assert!(slowest < Duration::from_secs(2), "a request waited {slowest:?} behind the stuck driver");
    assert!(req > 15, "only {req} requests answered in 6 s");
    flooder.join().unwrap();
    node.shutdown();
}
