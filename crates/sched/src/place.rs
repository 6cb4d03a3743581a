//! Which node a lease request goes to (DESIGN §6, bottom-up): this node first (it queues what
//! it cannot grant yet: the daemon's rebalancing moves requests that keep waiting to nodes
//! with room); another node at once only when this one can never fit the request, or when the
//! node holding the task's arguments has room. Among nodes with room, two are drawn at random
//! and the less loaded wins (power of two choices), so a burst placed from stale load figures
//! does not pile onto one node.
//!
//! Why not spill a request the moment this node is busy: short tasks finish in microseconds,
//! so a busy node frees a CPU long before another node's lease pays for itself; spilling at
//! once sent a third of a burst of no-op tasks over TCP and cut the cluster's throughput to
//! under a single node's (measured).
//!
//! Pure: the cluster view, the strategy and a random number in, a decision out.

use ferry_types::{NodeId, Placement, Shape, CPU};

/// One node as placement sees it: what choosing a node needs of the cluster's view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeRoom {
    pub node: NodeId,
    /// Where its daemon is reached (`host:port`); empty if unknown.
    pub addr: String,
    /// The control store: never chosen.
    pub head: bool,
    pub alive: bool,
    pub total: Shape,
    pub available: Shape,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Queue or grant it here.
    Local,
    /// Ask that node (with `Placement::Here`).
    Spill { node: NodeId, addr: String },
    /// It can never run: fail with this reason.
    Fail(String),
    /// No node alive can fit it now; wait here for one that can (with a warning).
    Wait(String),
}

/// Whether `have` holds at least `need` of every resource.
pub fn fits(need: &Shape, have: &Shape) -> bool {
    need.0.iter().all(|(n, v)| have.get_milli(n) >= *v)
}

/// Takes `need` out of `have` (a node's free resources, as a view shows them).
pub fn take(have: &mut Shape, need: &Shape) {
    for (n, v) in &need.0 {
        let left = have.get_milli(n).saturating_sub(*v);
        have.set(n, left as f64 / 1000.0);
    }
}

/// Load of a node: the fraction of its CPUs in use (0 when it has none).
fn load(v: &NodeRoom) -> f64 {
    let total = v.total.get_milli(CPU);
    if total == 0 {
        return 0.0;
    }
    1.0 - v.available.get_milli(CPU) as f64 / total as f64
}

/// Decides where a request of `shape` under `placement` goes. `me` is this node's own entry
/// (its live figures; never chosen when it is the control store, `head`); `others` every other node the cluster knows; `rr` a counter for
/// `Spread`; `rand` any random number.
pub fn place(
    shape: &Shape,
    placement: &Placement,
    prefer: Option<NodeId>,
    me: &NodeRoom,
    others: &[NodeRoom],
    rr: u64,
    rand: u64,
) -> Decision {
    let spill = |v: &NodeRoom| Decision::Spill { node: v.node, addr: v.addr.clone() };
    let alive = || others.iter().filter(|v| v.alive && !v.addr.is_empty());
    match placement {
        Placement::Here => Decision::Local,
        Placement::Node { node, soft } => {
            if *node == me.node && !me.head && fits(shape, &me.total) {
                return Decision::Local;
            }
            if let Some(v) = alive().find(|v| v.node == *node && fits(shape, &v.total)) {
                return spill(v);
            }
            if *soft {
                return place(shape, &Placement::Default, prefer, me, others, rr, rand);
            }
            let why = match others.iter().find(|v| v.node == *node) {
                Some(v) if !v.alive => "is dead",
                Some(_) => "cannot fit it",
                None if *node == me.node => "cannot fit it",
                None => "is not in the cluster",
            };
            Decision::Fail(format!(
                "node affinity: node {node} {why} (needs {shape}); use a soft affinity to run elsewhere"
            ))
        }
        Placement::Spread => {
            let mut feasible: Vec<&NodeRoom> = std::iter::once(me)
                .filter(|v| !v.head && fits(shape, &v.total))
                .chain(alive().filter(|v| fits(shape, &v.total)))
                .collect();
            if feasible.is_empty() {
                return wait(shape, me, others);
            }
            feasible.sort_by_key(|v| v.node);
            let v = feasible[(rr % feasible.len() as u64) as usize];
            if v.node == me.node {
                Decision::Local
            } else {
                spill(v)
            }
        }
        Placement::Default => {
            if let Some(v) = prefer.filter(|p| *p != me.node).and_then(|p| alive().find(|v| v.node == p)) {
                if fits(shape, &v.available) {
                    return spill(v);
                }
            }
            if !me.head && fits(shape, &me.total) {
                return Decision::Local;
            }
            if let Some(v) = two_choices(shape, others, rand) {
                return spill(v);
            }
            match alive().filter(|v| fits(shape, &v.total)).min_by(|a, b| load(a).total_cmp(&load(b))) {
                Some(v) => spill(v),
                None => wait(shape, me, others),
            }
        }
    }
}

/// Of the live nodes with room for `shape` now, the less loaded of two drawn at random.
pub fn two_choices<'a>(shape: &Shape, nodes: &'a [NodeRoom], rand: u64) -> Option<&'a NodeRoom> {
    let roomy: Vec<&NodeRoom> =
        nodes.iter().filter(|v| v.alive && !v.addr.is_empty() && fits(shape, &v.available)).collect();
    if roomy.is_empty() {
        return None;
    }
    let a = roomy[(rand % roomy.len() as u64) as usize];
    let b = roomy[((rand >> 32) % roomy.len() as u64) as usize];
    Some(if load(b) < load(a) { b } else { a })
}

fn wait(shape: &Shape, me: &NodeRoom, others: &[NodeRoom]) -> Decision {
    let mut have: Vec<String> = vec![format!("{} (this node)", me.total)];
    have.extend(others.iter().filter(|v| v.alive).map(|v| v.total.to_string()));
    Decision::Wait(format!(
        "no node alive can ever fit {shape} (nodes have {}); it waits until one joins that can",
        have.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, cpus: f64, free: f64) -> NodeRoom {
        NodeRoom {
            node: NodeId(id),
            addr: format!("10.0.0.{id}:1"),
            head: false,
            alive: true,
            total: Shape::cpus(cpus),
            available: Shape::cpus(free),
        }
    }

    #[test]
    fn local_first_while_it_has_room() {
        let me = node(1, 2.0, 1.0);
        let d = place(&Shape::cpus(1.0), &Placement::Default, None, &me, &[node(2, 2.0, 2.0)], 0, 7);
        assert_eq!(d, Decision::Local);
    }

    #[test]
    fn a_busy_node_queues_and_rebalancing_picks_the_less_loaded_of_two() {
        let me = node(1, 2.0, 0.0);
        let others = [node(2, 4.0, 1.0), node(3, 4.0, 4.0)];
        assert_eq!(place(&Shape::cpus(1.0), &Placement::Default, None, &me, &others, 0, 1 << 32), Decision::Local);
        // rand picks index 0 then 1: node 3 is less loaded.
        assert_eq!(two_choices(&Shape::cpus(1.0), &others, 1 << 32).map(|v| v.node), Some(NodeId(3)));
        assert_eq!(two_choices(&Shape::cpus(1.0), &[node(2, 4.0, 0.0)], 0), None);
    }

    #[test]
    fn infeasible_here_goes_where_it_fits_or_waits() {
        let me = node(1, 2.0, 2.0);
        let mut gpu = node(2, 2.0, 0.0);
        gpu.total.set("GPU", 1.0);
        let want = Shape::with_resources(1.0, &[("GPU".into(), 1.0)]);
        let d = place(&want, &Placement::Default, None, &me, &[gpu.clone()], 0, 0);
        assert_eq!(d, Decision::Spill { node: NodeId(2), addr: gpu.addr.clone() });
        gpu.alive = false;
        assert!(
            matches!(place(&want, &Placement::Default, None, &me, &[gpu], 0, 0), Decision::Wait(m) if m.contains("GPU"))
        );
    }

    #[test]
    fn spread_goes_round_robin_over_feasible_nodes() {
        let me = node(1, 1.0, 1.0);
        let others = [node(2, 1.0, 1.0), node(3, 1.0, 0.0)];
        let picks: Vec<Decision> =
            (0..3).map(|rr| place(&Shape::cpus(1.0), &Placement::Spread, None, &me, &others, rr, 0)).collect();
        assert_eq!(picks[0], Decision::Local);
        assert!(matches!(&picks[1], Decision::Spill { node, .. } if *node == NodeId(2)));
        assert!(matches!(&picks[2], Decision::Spill { node, .. } if *node == NodeId(3)));
    }

    #[test]
    fn node_affinity_hard_and_soft() {
        let me = node(1, 1.0, 1.0);
        let mut other = node(2, 1.0, 1.0);
        let hard = Placement::Node { node: NodeId(2), soft: false };
        assert!(matches!(place(&Shape::cpus(1.0), &hard, None, &me, &[other.clone()], 0, 0), Decision::Spill { .. }));
        other.alive = false;
        assert!(
            matches!(place(&Shape::cpus(1.0), &hard, None, &me, &[other.clone()], 0, 0), Decision::Fail(m) if m.contains("dead"))
        );
        let soft = Placement::Node { node: NodeId(2), soft: true };
        assert_eq!(place(&Shape::cpus(1.0), &soft, None, &me, &[other], 0, 0), Decision::Local);
    }

    #[test]
    fn prefers_the_node_holding_the_arguments_when_it_has_room() {
        let me = node(1, 2.0, 2.0);
        let d = place(&Shape::cpus(1.0), &Placement::Default, Some(NodeId(2)), &me, &[node(2, 2.0, 1.0)], 0, 0);
        assert!(matches!(d, Decision::Spill { node, .. } if node == NodeId(2)));
        let d = place(&Shape::cpus(1.0), &Placement::Default, Some(NodeId(2)), &me, &[node(2, 2.0, 0.0)], 0, 0);
        assert_eq!(d, Decision::Local);
    }
}
