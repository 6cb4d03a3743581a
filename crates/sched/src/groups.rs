//! Placement groups: where a group's bundles go (pure: bundles, a strategy and the cluster's
//! view in, a plan out). The daemon that keeps the group then reserves every bundle on its
//! node, two-phase (prepare everywhere, then commit; or give back what was prepared): see
//! `ferry_node`'s `groups` module.
//!
//! A plan is made against what the nodes have free; a group that could not fit even on
//! empty nodes (their totals) is infeasible and fails at once rather than wait for ever.

use crate::place::{fits, take, NodeRoom};
use ferry_types::{GroupStrategy, NodeId, Shape};

/// Where a group's bundles go.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// The node of each bundle to place, in the order asked.
    Place(Vec<NodeId>),
    /// Not now: the nodes are too busy (the reason says which bundle).
    Wait(String),
    /// Never: no set of nodes alive can hold the group under its strategy, even empty.
    Infeasible(String),
}

/// Places `bundles` (those not placed yet) under `strategy` over `nodes` (alive, not the
/// control store), given `placed`, the nodes of the group's other bundles (rescheduling
/// after a node died: strict strategies keep to them).
pub fn plan(bundles: &[Shape], strategy: GroupStrategy, nodes: &[NodeRoom], placed: &[NodeId]) -> Plan {
    let usable: Vec<&NodeRoom> = nodes.iter().filter(|n| n.alive && !n.head).collect();
    let free: Vec<(NodeId, Shape)> = usable.iter().map(|n| (n.node, n.available.clone())).collect();
    let total: Vec<(NodeId, Shape)> = usable.iter().map(|n| (n.node, n.total.clone())).collect();
    match try_plan(bundles, strategy, &free, placed) {
        Some(p) => Plan::Place(p),
        None => match try_plan(bundles, strategy, &total, placed) {
            Some(_) => Plan::Wait(format!(
                "the nodes have not enough free for its bundles {} under {} now",
                list(bundles),
                strategy.name()
            )),
            None => Plan::Infeasible(format!(
                "no set of the {} nodes alive can hold the bundles {} under {}, even idle",
                usable.len(),
                list(bundles),
                strategy.name()
            )),
        },
    }
}

fn list(bundles: &[Shape]) -> String {
    bundles.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
}

fn try_plan(
    bundles: &[Shape],
    strategy: GroupStrategy,
    nodes: &[(NodeId, Shape)],
    placed: &[NodeId],
) -> Option<Vec<NodeId>> {
    let mut room: Vec<(NodeId, Shape)> = nodes.to_vec();
    // Most room first: packing then fills the emptiest node, spreading starts with it.
    room.sort_by_key(|(n, s)| (std::cmp::Reverse(s.get_milli(ferry_types::CPU)), *n));
    match strategy {
        GroupStrategy::StrictPack => {
            // One node: the one already holding the group's bundles, if any.
            let sum = bundles.iter().fold(Shape::default(), |mut acc, b| {
                for (n, v) in &b.0 {
                    acc.set(n, (acc.get_milli(n) + v) as f64 / 1000.0);
                }
                acc
            });
            let (node, _) = room.iter().find(|(n, s)| placed.first().is_none_or(|p| p == n) && fits(&sum, s))?;
            Some(vec![*node; bundles.len()])
        }
        GroupStrategy::StrictSpread => {
            let mut out = Vec::new();
            for b in bundles {
                let i = room.iter().position(|(n, s)| !placed.contains(n) && !out.contains(n) && fits(b, s))?;
                out.push(room[i].0);
            }
            Some(out)
        }
        GroupStrategy::Pack => {
            let mut out = Vec::new();
            for b in bundles {
                // The node used last (or one holding the group already), else the roomiest.
                let prefer = out.last().or(placed.first()).copied();
                let i = prefer
                    .and_then(|p| room.iter().position(|(n, s)| *n == p && fits(b, s)))
                    .or_else(|| room.iter().position(|(_, s)| fits(b, s)))?;
                take(&mut room[i].1, b);
                out.push(room[i].0);
            }
            Some(out)
        }
        GroupStrategy::Spread => {
            let mut out: Vec<NodeId> = Vec::new();
            for b in bundles {
                // A node not used yet by the group, else the least used one.
                let used = |n: &NodeId| out.iter().chain(placed).filter(|x| *x == n).count();
                let i = (0..room.len()).filter(|i| fits(b, &room[*i].1)).min_by_key(|i| used(&room[*i].0))?;
                take(&mut room[i].1, b);
                out.push(room[i].0);
            }
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, cpus: f64, free: f64) -> NodeRoom {
        NodeRoom {
            node: NodeId(id),
            addr: "x".into(),
            head: false,
            alive: true,
            total: Shape::cpus(cpus),
            available: Shape::cpus(free),
        }
    }

    /// Each strategy's plan on three nodes, and when it waits or can never fit.
    #[test]
    fn strategies_place_wait_or_fail() {
        let nodes = [node(1, 4.0, 4.0), node(2, 4.0, 4.0), node(3, 2.0, 2.0)];
        let b = |n: usize, c: f64| vec![Shape::cpus(c); n];
        let on = |p: Plan| match p {
            Plan::Place(v) => v.into_iter().map(|n| n.0).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(on(plan(&b(3, 1.0), GroupStrategy::Pack, &nodes, &[])), vec![1, 1, 1]);
        assert_eq!(on(plan(&b(3, 2.0), GroupStrategy::Pack, &nodes, &[])), vec![1, 1, 2]);
        assert_eq!(on(plan(&b(3, 1.0), GroupStrategy::Spread, &nodes, &[])), vec![1, 2, 3]);
        assert_eq!(on(plan(&b(4, 1.0), GroupStrategy::Spread, &nodes, &[])).len(), 4);
        assert_eq!(on(plan(&b(2, 2.0), GroupStrategy::StrictPack, &nodes, &[])), vec![1, 1]);
        assert_eq!(on(plan(&b(3, 1.0), GroupStrategy::StrictSpread, &nodes, &[])), vec![1, 2, 3]);
        assert!(matches!(plan(&b(4, 1.0), GroupStrategy::StrictSpread, &nodes, &[]), Plan::Infeasible(_)));
        assert!(matches!(plan(&b(3, 2.0), GroupStrategy::StrictPack, &nodes, &[]), Plan::Infeasible(_)));
        // Busy nodes: wait, not fail.
        let busy = [node(1, 4.0, 0.0), node(2, 4.0, 1.0)];
        assert!(matches!(plan(&b(2, 2.0), GroupStrategy::Pack, &busy, &[]), Plan::Wait(_)));
        // Rescheduling one bundle of a strict-spread group avoids the nodes of the others;
        // of a strict-pack group, keeps to theirs.
        assert_eq!(on(plan(&b(1, 1.0), GroupStrategy::StrictSpread, &nodes, &[NodeId(1), NodeId(2)])), vec![3]);
        assert_eq!(on(plan(&b(1, 1.0), GroupStrategy::StrictPack, &nodes, &[NodeId(2)])), vec![2]);
        // Dead nodes and the control store are never chosen.
        let mut dead = node(1, 4.0, 4.0);
        dead.alive = false;
        let mut head = node(2, 4.0, 4.0);
        head.head = true;
        assert!(matches!(plan(&b(1, 1.0), GroupStrategy::Pack, &[dead, head], &[]), Plan::Infeasible(_)));
    }
}
