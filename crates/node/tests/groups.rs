//! A placement-group reservation that is never committed (its home died, or a peer asked
//! and never meant to commit) does not hold the node's resources for ever: it is given back
//! after `PREPARED_TIMEOUT`. On a real daemon, through its protocol.

mod common;

use common::{call, register, T};
use ferry_proto::msg::{FromNode, ProcKind, Shape, ToNode};
use ferry_proto::NodeId;
use std::time::{Duration, Instant};

fn free_cpus(c: &mut common::Client) -> u64 {
    call(c, ToNode::Stats { req: 7 }, |m| match m {
        FromNode::Stats { stats, .. } => Some(stats.available.get_milli("CPU")),
        _ => None,
    })
}

#[test]
fn a_reservation_never_committed_is_given_back() {
    let mut o = common::options("groups", "stale");
    o.resources = Shape::cpus(2.0);
    let node = ferry_node::start(o).unwrap();
    let mut c = register(&node.addr(), ProcKind::Driver);
    assert_eq!(free_cpus(&mut c), 2000);
    // A home that does not exist asks for two bundles of one CPU, and is never heard again.
    let bundles = vec![(0, Shape::cpus(1.0)), (1, Shape::cpus(1.0))];
    c.0.send(&ToNode::PrepareBundles { group: 42, round: 1, home: NodeId(0xdead), bundles }).unwrap();
    let end = Instant::now() + T;
    while free_cpus(&mut c) != 0 {
        assert!(Instant::now() < end, "the bundles were never reserved");
        std::thread::sleep(Duration::from_millis(20));
    }
    let reserved = Instant::now();
    while free_cpus(&mut c) != 2000 {
        assert!(Instant::now() < end, "the reservation was never given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = reserved.elapsed();
    assert!(held >= ferry_node::PREPARED_TIMEOUT - Duration::from_millis(200), "given back too soon: {held:?}");
    // An amount past any node's is refused, not counted.
    let absurd = vec![(0, Shape(vec![("CPU".to_string(), u64::MAX)]))];
    c.0.send(&ToNode::PrepareBundles { group: 43, round: 1, home: NodeId(0xdead), bundles: absurd }).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(free_cpus(&mut c), 2000);
    node.shutdown();
}
