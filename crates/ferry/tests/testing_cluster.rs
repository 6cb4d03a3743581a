//! `ferry::testing::Cluster`, used as Ray's `cluster_utils.Cluster` is in its multi-node tests
//! (test_multi_node, test_failure's node deaths): nodes with resources of their own in one
//! test, tasks placed by resource, a node removed under a running task (which runs again on
//! another node) and under an actor (which restarts on another node). No root needed.

mod common;

use common::T;
use ferry::prelude::*;
use ferry::testing::{Cluster, NodeConfig};
use std::time::Duration;

#[ferry::remote]
fn where_am_i(ms: u64) -> ferry::NodeId {
    std::thread::sleep(Duration::from_millis(ms));
    ferry::node_id().unwrap()
}

#[ferry::actor]
struct Here;

#[ferry::actor]
impl Here {
    fn new() -> Self {
        Here
    }
    fn node(&self) -> ferry::NodeId {
        ferry::node_id().unwrap()
    }
}

fn alive(id: ferry::NodeId) -> bool {
    ferry::nodes().unwrap().iter().any(|n| n.node == id && n.alive)
}

#[test]
fn tasks_and_actors_survive_a_node_removed_from_a_test_cluster() {
    ferry_testkit::own_process!();
    let mut cluster = Cluster::new(NodeConfig::cpus(1)).unwrap();
    let a = cluster.add_node(NodeConfig::cpus(1).resource("spot", 1.0)).unwrap();
    let b = cluster.add_node(NodeConfig::cpus(1).resource("spot", 1.0)).unwrap();
    cluster.connect().unwrap();
    common::eventually("the head sees all three nodes", T, || {
        ferry::nodes().unwrap().iter().filter(|n| n.alive).count() == 3
    });
    // Placed by resource: on one of the two spot nodes.
    let first = ferry::get_timeout(&where_am_i::options().resource("spot", 1.0).remote(0), T).unwrap();
    assert!(first == a || first == b, "{first:?}");

    // A long task on one spot node; that node is removed under it: it runs again on the other.
    let on_a = SchedulingStrategy::NodeAffinity { node: a, soft: true };
    let r = where_am_i::options().resource("spot", 1.0).scheduling_strategy(on_a.clone()).remote(1500);
    let actor = Here::options().max_restarts(1).scheduling_strategy(on_a).remote().unwrap();
    assert_eq!(ferry::get_timeout(&actor.node(), T).unwrap(), a);
    std::thread::sleep(Duration::from_millis(300));
    assert!(cluster.remove_node(a));
    common::eventually("the removed node is declared dead", T, || !alive(a));
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), b, "the task ran again on the other spot node");
    // The actor restarts on a node still alive.
    let mut now_on = None;
    let mut last = None;
    let end = std::time::Instant::now() + T;
    while now_on.is_none() {
        match ferry::get_timeout(&actor.node(), Duration::from_secs(2)) {
            Ok(n) => now_on = Some(n),
            Err(e) => last = Some(e),
        }
        assert!(std::time::Instant::now() < end, "the actor never answered again: {last:?}");
    }
    let now_on = now_on.unwrap();
    assert!(now_on != a && alive(now_on), "it restarted on a live node: {now_on:?}");
    assert_eq!(cluster.node_ids().len(), 2);
    ferry::shutdown();
}

#[ferry::remote]
fn blob() -> Vec<u8> {
    vec![3u8; 8 << 20]
}

#[test]
fn a_get_of_an_object_on_another_node_shows_as_a_wait_and_a_transfer() {
    ferry_testkit::own_process!();
    let mut cluster = Cluster::new(NodeConfig::cpus(1)).unwrap();
    let b = cluster.add_node(NodeConfig::cpus(1)).unwrap();
    cluster.connect().unwrap();
    common::eventually("the head sees both nodes", T, || {
        ferry::nodes().unwrap().iter().filter(|n| n.alive).count() == 2
    });
    // Made on the other node; read here: copied between the nodes.
    let r = blob::options().scheduling_strategy(SchedulingStrategy::NodeAffinity { node: b, soft: false }).remote();
    assert_eq!(ferry::get_timeout(&r, T).unwrap().len(), 8 << 20);
    ferry::state::flush_task_events().unwrap();
    use ferry::state::SpanKind;
    common::eventually("the get and the transfer in the history", T, || {
        let spans = ferry::state::list_spans(None).unwrap();
        let of = |k: SpanKind| spans.iter().find(|s| s.kind == k && s.object == r.id()).cloned();
        match (of(SpanKind::Get), of(SpanKind::Transfer)) {
            (Some(g), Some(t)) => {
                // The copy happened inside the wait, in this process, on this node.
                assert!(g.start_us <= t.start_us && t.end_us <= g.end_us, "{g:?} {t:?}");
                assert_eq!((t.worker, t.task), (g.worker, None));
                assert_ne!(t.node, b);
                true
            }
            _ => false,
        }
    });
}
