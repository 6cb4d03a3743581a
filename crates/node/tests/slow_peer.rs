//! A peer that stops reading stalls nobody else: a real daemon, a driver that registers and
//! then never reads (its socket fills), a client flooding the daemon with lines for the
//! drivers, and a third client whose requests must keep being answered at once. The daemon
//! queues what it sends under its lock and writes after releasing it; a write to the stuck
//! driver waits up to its 5 s timeout on the flooding client's thread alone, and then ends
//! that connection.

use ferry_node::NodeOptions;
use ferry_proto::msg::{FromNode, ProcKind, ToNode};
use std::time::{Duration, Instant};

mod common;

use common::register;

fn options() -> NodeOptions {
    common::options("slow-peer", "node")
}

#[test]
fn a_driver_that_stops_reading_stalls_no_other_client() {
    let node = ferry_node::start(options()).unwrap();
    let addr = node.addr();
    // Registered as a driver, so every line tasks print is sent to it; it never reads.
    let (_stuck_conn, mut stuck) = register(&addr, ProcKind::Driver);
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
    // The write that timed out ended the connection: the stuck driver, reading at last, gets
    // what was written before and then the end, not a wait for lines that were dropped.
    let mut read = 0;
    let end = loop {
        match stuck.read::<FromNode>() {
            Ok(_) => read += 1,
            Err(e) => break e,
        }
    };
    assert!(read < 512, "all {read} messages arrived: no write timed out, the test proves nothing");
    assert!(
        !matches!(&end, ferry_proto::frame::FrameError::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the stuck driver waited for frames that were dropped (its connection stayed open): {end:?}"
    );
    node.shutdown();
}
