//! Placement groups (DESIGN §6; Ray's placement groups): resources reserved for a group of
//! bundles, atomically across nodes.
//!
//! A group lives at its *home*: the control store in a cluster (as Ray's GCS keeps them),
//! or the node when it is alone. The home places one group at a time, two-phase: it plans
//! where each bundle goes ([`ferry_sched::groups::plan`]), asks each node chosen to reserve
//! its bundles (`PrepareBundles`: taken out of what is free, or refused), and once every
//! node said yes tells them to commit (`CommitBundles`); if one says no, or does not answer
//! within [`ROUND_TIMEOUT`], every reservation of the round is given back (`ReturnBundles`)
//! and the group waits for its next turn. Because only one round is open at a time and a
//! failed round keeps nothing, two groups competing for the same resources never hold
//! halves of them each (ray#65147): one is placed, the other waits.
//!
//! A committed bundle's resources are offered under new names ([`bundle_resource`]): a
//! task placed in a bundle asks for those, so the ordinary scheduler and spillback find the
//! bundle's node and keep the task inside the bundle. When a node holding bundles dies,
//! its bundles are reserved again elsewhere under the group's strategy.

use crate::{Node, State};
use ferry_proto::msg::{FromNode, GroupPhase, GroupView, ToNode};
use ferry_proto::NodeId;
use ferry_sched::groups::{plan, Plan};
use ferry_sched::ConnId;
use ferry_types::sync::MutexExt;
use ferry_types::{bundle_resource, GroupStrategy, Shape, BUNDLE};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A round of placing whose nodes do not all answer within this is given up.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(2);
/// Removed and infeasible groups kept for listing, at most.
const ENDED_KEPT: usize = 1000;
/// Bundles of one group, at most (a bound on what one request can make the home keep).
pub const MAX_BUNDLES: usize = 10_000;

/// Whether a bundle asks more of some resource than any node can have (what a peer sends is
/// checked before it is counted).
fn too_big(s: &Shape) -> bool {
    s.0.iter().any(|(_, v)| *v > ferry_sched::MAX_AMOUNT)
}

/// Groups homed here and bundles reserved here.
#[derive(Default)]
pub(crate) struct Groups {
    /// Groups homed here, in the order they were made (placed in that order).
    homed: Vec<Group>,
    placing: Option<Round>,
    next_round: u64,
    /// Bundles reserved on this node, by group and index.
    reserved: HashMap<(u64, u32), Reserved>,
}

struct Group {
    id: u64,
    name: String,
    strategy: GroupStrategy,
    bundles: Vec<Shape>,
    nodes: Vec<Option<NodeId>>,
    phase: GroupPhase,
    reason: Option<String>,
}

/// The open round: which group, what goes where, who has not answered yet.
struct Round {
    group: u64,
    round: u64,
    started: Instant,
    targets: Vec<(u32, NodeId)>,
    waiting: BTreeSet<NodeId>,
    refused: bool,
}

struct Reserved {
    shape: Shape,
    round: u64,
    committed: bool,
    /// When it was prepared: one not committed within [`PREPARED_TIMEOUT`] goes back.
    since: Instant,
}

/// A bundle prepared here and not committed this long is given back: its home died or gave
/// the round up (and its word was lost), or a peer asked that never meant to commit.
pub const PREPARED_TIMEOUT: Duration = Duration::from_secs(5);

/// What a committed bundle offers: its resources renamed for the bundle and for the group,
/// and the `bundle` resource.
fn renamed(group: u64, index: u32, shape: &Shape) -> Shape {
    let mut out = Shape::default();
    let mut add = |name: String, milli: u64| {
        let now = out.get_milli(&name);
        out.set(&name, (now + milli) as f64 / 1000.0);
    };
    for (n, v) in &shape.0 {
        add(bundle_resource(n, group, Some(index)), *v);
        add(bundle_resource(n, group, None), *v);
    }
    add(bundle_resource(BUNDLE, group, Some(index)), 1_000_000);
    add(bundle_resource(BUNDLE, group, None), 1_000_000);
    out
}

impl Node {
    /// Placement groups' messages. Routed here by `handle`.
    pub(crate) fn on_groups(&self, st: &mut State, conn: ConnId, msg: ToNode) {
        match msg {
            ToNode::CreateGroup { req, group, name, bundles, strategy } => {
                let error = if bundles.is_empty() || bundles.iter().any(|b| b.0.is_empty()) {
                    Some("a placement group needs one bundle or more, each with some resource".to_string())
                } else if bundles.len() > MAX_BUNDLES || bundles.iter().any(too_big) {
                    Some(format!(
                        "a placement group has at most {MAX_BUNDLES} bundles, each of amounts a node can have"
                    ))
                } else if st.groups.homed.iter().any(|g| g.id == group) {
                    Some(format!("placement group {group:016x} exists already"))
                } else {
                    let n = bundles.len();
                    st.groups.homed.push(Group {
                        id: group,
                        name,
                        strategy,
                        bundles,
                        nodes: vec![None; n],
                        phase: GroupPhase::Pending,
                        reason: None,
                    });
                    None
                };
                self.send(st, conn, &FromNode::Ack { req, error });
                self.pump_groups(st);
            }
            ToNode::RemoveGroup { req, group } => {
                let error = self.remove_group(st, group);
                self.send(st, conn, &FromNode::Ack { req, error });
                self.pump_groups(st);
            }
            ToNode::ListGroups { req, group } => {
                let groups = st.groups.homed.iter().filter(|g| group.is_none_or(|id| id == g.id)).map(view).collect();
                self.send(st, conn, &FromNode::Groups { req, groups });
            }
            ToNode::PrepareBundles { group, round, home, bundles } => {
                self.prepare_bundles(st, group, round, home, bundles)
            }
            ToNode::BundlesPrepared { group, round, node, ok } => self.bundles_prepared(st, group, round, node, ok),
            ToNode::CommitBundles { group, round } => {
                let mut extra = Shape::default();
                for ((g, i), r) in st.groups.reserved.iter_mut() {
                    if *g == group && r.round == round && !r.committed {
                        r.committed = true;
                        for (n, v) in &renamed(group, *i, &r.shape).0 {
                            extra.set(n, (extra.get_milli(n) + v) as f64 / 1000.0);
                        }
                    }
                }
                let actions = st.pool.sched.add_resources(&extra);
                self.apply(st, actions);
            }
            ToNode::ReturnBundles { group, round } => {
                self.return_bundles(st, group, round);
                if round.is_none() {
                    self.refuse_group_tasks(st, group, "was removed");
                }
            }
            // Routed elsewhere by `handle`.
            _ => {}
        }
    }

    /// Sends a group message to node `to` (handled at once when it is this node).
    fn to_group_node(&self, st: &mut State, to: NodeId, msg: ToNode) {
        if to == self.id {
            self.on_groups(st, ConnId::MAX, msg);
        } else if let Some(addr) = self.node_addr(st, to) {
            let _ = self.links_tx.locked().send((to, addr, msg));
        } else {
            tracing::warn!("placement groups: no address for node {to}");
        }
    }

    /// Reserves bundles here for `home`'s round, all or none, and answers.
    fn prepare_bundles(&self, st: &mut State, group: u64, round: u64, home: NodeId, bundles: Vec<(u32, Shape)>) {
        let mut taken = Vec::new();
        for (i, shape) in bundles.iter().take_while(|(_, s)| !too_big(s)) {
            let again = st.groups.reserved.contains_key(&(group, *i)) || taken.iter().any(|(j, _)| j == i);
            if again || !st.pool.sched.reserve(shape) {
                break;
            }
            taken.push((*i, shape.clone()));
        }
        let ok = taken.len() == bundles.len();
        if ok {
            for (i, shape) in taken {
                let since = Instant::now();
                st.groups.reserved.insert((group, i), Reserved { shape, round, committed: false, since });
            }
        } else {
            for (_, shape) in taken {
                let actions = st.pool.sched.unreserve(&shape);
                self.apply(st, actions);
            }
        }
        self.to_group_node(st, home, ToNode::BundlesPrepared { group, round, node: self.id, ok });
    }

    /// Gives back this node's bundles of `group` (of `round`, or all).
    fn return_bundles(&self, st: &mut State, group: u64, round: Option<u64>) {
        let keys: Vec<(u64, u32)> = st
            .groups
            .reserved
            .iter()
            .filter(|((g, _), r)| *g == group && round.is_none_or(|x| x == r.round))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let Some(r) = st.groups.reserved.remove(&k) else { continue };
            if r.committed {
                let actions = st.pool.sched.remove_resources(&renamed(group, k.1, &r.shape));
                self.apply(st, actions);
            }
            let actions = st.pool.sched.unreserve(&r.shape);
            self.apply(st, actions);
        }
    }

    /// An answer to the open round: once all are in, commit or give everything back.
    fn bundles_prepared(&self, st: &mut State, group: u64, round: u64, node: NodeId, ok: bool) {
        let Some(r) = st.groups.placing.as_mut().filter(|r| r.group == group && r.round == round) else {
            if ok {
                // A round given up already: its reservation there goes back.
                self.to_group_node(st, node, ToNode::ReturnBundles { group, round: Some(round) });
            }
            return;
        };
        r.waiting.remove(&node);
        r.refused |= !ok;
        if !r.waiting.is_empty() {
            return;
        }
        let r = st.groups.placing.take().expect("checked");
        let nodes: BTreeSet<NodeId> = r.targets.iter().map(|(_, n)| *n).collect();
        if r.refused {
            for n in nodes {
                self.to_group_node(st, n, ToNode::ReturnBundles { group, round: Some(round) });
            }
        } else {
            for n in nodes {
                self.to_group_node(st, n, ToNode::CommitBundles { group, round });
            }
            if let Some(g) = st.groups.homed.iter_mut().find(|g| g.id == group) {
                for (i, n) in &r.targets {
                    g.nodes[*i as usize] = Some(*n);
                }
                g.phase = GroupPhase::Created;
                g.reason = None;
            }
        }
        self.pump_groups(st);
    }

    /// Gives up the open round (timed out, or its group removed or a node of it dead).
    fn abort_round(&self, st: &mut State) {
        if let Some(r) = st.groups.placing.take() {
            let nodes: BTreeSet<NodeId> = r.targets.iter().map(|(_, n)| *n).collect();
            for n in nodes {
                self.to_group_node(st, n, ToNode::ReturnBundles { group: r.group, round: Some(r.round) });
            }
        }
    }

    /// Opens a round for the first waiting group that can be placed now; marks those that
    /// never can infeasible.
    pub(crate) fn pump_groups(&self, st: &mut State) {
        if st.groups.placing.is_some() {
            return;
        }
        let mut rooms = crate::members::rooms(&self.others(st));
        rooms.push(crate::members::room(&self.my_view(st)));
        for gi in 0..st.groups.homed.len() {
            let g = &st.groups.homed[gi];
            if !matches!(g.phase, GroupPhase::Pending | GroupPhase::Rescheduling) {
                continue;
            }
            let todo: Vec<u32> = (0..g.bundles.len() as u32).filter(|i| g.nodes[*i as usize].is_none()).collect();
            let shapes: Vec<Shape> = todo.iter().map(|i| g.bundles[*i as usize].clone()).collect();
            let placed: Vec<NodeId> = g.nodes.iter().flatten().copied().collect();
            match plan(&shapes, g.strategy, &rooms, &placed) {
                Plan::Place(nodes) => {
                    let (group, round) = (g.id, st.groups.next_round);
                    st.groups.next_round += 1;
                    let targets: Vec<(u32, NodeId)> = todo.into_iter().zip(nodes).collect();
                    let waiting: BTreeSet<NodeId> = targets.iter().map(|(_, n)| *n).collect();
                    st.groups.placing = Some(Round {
                        group,
                        round,
                        started: Instant::now(),
                        targets: targets.clone(),
                        waiting: waiting.clone(),
                        refused: false,
                    });
                    for n in waiting {
                        let bundles: Vec<(u32, Shape)> = targets
                            .iter()
                            .filter(|(_, t)| *t == n)
                            .map(|(i, _)| (*i, st.groups.homed[gi].bundles[*i as usize].clone()))
                            .collect();
                        self.to_group_node(st, n, ToNode::PrepareBundles { group, round, home: self.id, bundles });
                    }
                    return;
                }
                Plan::Wait(why) => st.groups.homed[gi].reason = Some(why),
                Plan::Infeasible(why) if st.groups.homed[gi].phase == GroupPhase::Pending => {
                    tracing::warn!("placement group {:016x} is infeasible: {why}", st.groups.homed[gi].id);
                    st.groups.homed[gi].phase = GroupPhase::Infeasible;
                    st.groups.homed[gi].reason = Some(why.clone());
                    let id = st.groups.homed[gi].id;
                    self.refuse_group_tasks(st, id, &format!("can never be placed: {why}"));
                }
                // Rescheduling after a death: it waits for nodes to join.
                Plan::Infeasible(why) => st.groups.homed[gi].reason = Some(why),
            }
        }
        trim_ended(&mut st.groups.homed);
    }

    /// The home's clock: a round not answered in time is given up; waiting groups try again.
    pub(crate) fn tick_groups(&self, st: &mut State) {
        let stale: Vec<(u64, u64)> = st
            .groups
            .reserved
            .iter()
            .filter(|(_, r)| !r.committed && r.since.elapsed() >= PREPARED_TIMEOUT)
            .map(|((g, _), r)| (*g, r.round))
            .collect();
        for (group, round) in stale {
            tracing::warn!("placement group {group:016x}: a reservation never committed is given back");
            self.return_bundles(st, group, Some(round));
        }
        if st.groups.placing.as_ref().is_some_and(|r| r.started.elapsed() >= ROUND_TIMEOUT) {
            self.abort_round(st);
        }
        if st.groups.homed.iter().any(|g| matches!(g.phase, GroupPhase::Pending | GroupPhase::Rescheduling)) {
            self.pump_groups(st);
        }
    }

    fn remove_group(&self, st: &mut State, group: u64) -> Option<String> {
        let Some(gi) = st.groups.homed.iter().position(|g| g.id == group) else {
            return Some(format!("no placement group {group:016x} is known here"));
        };
        if st.groups.placing.as_ref().is_some_and(|r| r.group == group) {
            self.abort_round(st);
        }
        let g = &mut st.groups.homed[gi];
        if matches!(g.phase, GroupPhase::Removed) {
            return None;
        }
        g.phase = GroupPhase::Removed;
        g.reason = Some("removed".into());
        let nodes: BTreeSet<NodeId> = std::mem::take(&mut g.nodes).into_iter().flatten().collect();
        g.nodes = vec![None; g.bundles.len()];
        for n in nodes {
            self.to_group_node(st, n, ToNode::ReturnBundles { group, round: None });
        }
        self.refuse_group_tasks(st, group, "was removed");
        None
    }

    /// Refuses the lease requests waiting here for group `group`'s resources: it will never
    /// have any (removed, or infeasible).
    fn refuse_group_tasks(&self, st: &mut State, group: u64, why: &str) {
        let reason = format!("its placement group {group:016x} {why}");
        let doomed = |n: &str| ferry_types::is_bundle_resource_of(n, group);
        let actions = st.pool.sched.refuse_queued(doomed, &reason);
        self.apply(st, actions);
        let waiting = std::mem::take(&mut st.placing.infeasible);
        for w in waiting {
            if w.2 .0.iter().any(|(n, _)| doomed(n)) {
                self.send(st, w.0, &FromNode::LeaseInfeasible { req: w.1, reason: reason.clone() });
            } else {
                st.placing.infeasible.push(w);
            }
        }
    }

    /// Why a request for `shape` can never be granted, if it asks for the resources of a
    /// group homed here that was removed or is infeasible.
    pub(crate) fn ended_group_of(&self, st: &State, shape: &Shape) -> Option<String> {
        shape.0.iter().filter(|(n, _)| n.contains("_group_")).find_map(|(n, _)| {
            let id = u64::from_str_radix(n.rsplit('_').next()?, 16).ok()?;
            let g = st.groups.homed.iter().find(|g| g.id == id)?;
            match g.phase {
                GroupPhase::Removed => Some(format!("its placement group {id:016x} was removed")),
                GroupPhase::Infeasible => Some(format!(
                    "its placement group {id:016x} can never be placed: {}",
                    g.reason.clone().unwrap_or_default()
                )),
                _ => None,
            }
        })
    }

    /// Node `dead` died: its bundles are reserved again elsewhere.
    pub(crate) fn groups_node_died(&self, st: &mut State, dead: NodeId) {
        if st.groups.placing.as_ref().is_some_and(|r| r.targets.iter().any(|(_, n)| *n == dead)) {
            self.abort_round(st);
        }
        for g in st.groups.homed.iter_mut() {
            // Also a group already placing its bundles again: a second death counts too.
            let placed = matches!(g.phase, GroupPhase::Created | GroupPhase::Rescheduling);
            if placed && g.nodes.contains(&Some(dead)) {
                for n in g.nodes.iter_mut().filter(|n| **n == Some(dead)) {
                    *n = None;
                }
                g.phase = GroupPhase::Rescheduling;
                tracing::warn!("placement group {:016x}: node {dead} died; its bundles are placed again", g.id);
            }
        }
        self.pump_groups(st);
    }
}

fn view(g: &Group) -> GroupView {
    GroupView {
        group: g.id,
        name: g.name.clone(),
        strategy: g.strategy,
        phase: g.phase,
        reason: g.reason.clone(),
        bundles: g.bundles.iter().cloned().zip(g.nodes.iter().copied()).collect(),
    }
}

/// Keeps at most [`ENDED_KEPT`] removed or infeasible groups, the newest.
fn trim_ended(homed: &mut Vec<Group>) {
    let ended = homed.iter().filter(|g| matches!(g.phase, GroupPhase::Removed | GroupPhase::Infeasible)).count();
    if ended > ENDED_KEPT {
        let mut drop = ended - ENDED_KEPT;
        homed.retain(|g| {
            let old = drop > 0 && matches!(g.phase, GroupPhase::Removed | GroupPhase::Infeasible);
            drop -= old as usize;
            !old
        });
    }
}
