//! The cluster's objects as `ferry memory` and the dashboard show them: every node's answer
//! to `Memory` (its processes' tables and its store) joined by object: its owner, size,
//! where it is, and why it is alive.

use crate::client::{NodeMemory, NodeView};
use std::collections::BTreeMap;

/// One object across the cluster, as `ferry memory` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Obj {
    pub object: String,
    pub owner: String,
    pub size: u64,
    /// pending, inline, in store, spilled, failed.
    pub location: &'static str,
    pub node: Option<String>,
    pub local_refs: u32,
    pub borrowers: u32,
    pub task_args: u32,
    pub contained_in: u32,
}

impl Obj {
    /// Why it is alive, in words.
    pub fn why(&self) -> String {
        let mut r = crate::client::RefInfo::reasons(self.local_refs, self.borrowers, self.task_args, self.contained_in);
        if r.is_empty() {
            r.push(if self.location == "pending" { "its task is running".into() } else { "held by its owner".into() });
        }
        r.join(", ")
    }
}

/// The cluster's objects, joined.
#[derive(Debug, Clone, Default)]
pub struct ClusterMemory {
    pub objects: Vec<Obj>,
    pub pending_tasks: u64,
    /// Processes that did not answer.
    pub unreachable: Vec<String>,
}

/// Joins every node's answer by object.
pub fn join(per_node: &[(NodeView, NodeMemory)]) -> ClusterMemory {
    let mut objects: BTreeMap<String, Obj> = BTreeMap::new();
    let mut stored_at: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let (mut pending_tasks, mut unreachable) = (0, Vec::new());
    for (n, m) in per_node {
        pending_tasks += m.pending_tasks;
        unreachable.extend(m.unreachable.iter().map(|w| w.to_string()));
        for s in &m.stored {
            stored_at.insert(s.object.to_string(), (n.node.to_string(), s.spilled));
        }
    }
    for i in per_node.iter().flat_map(|(_, m)| &m.refs) {
        let key = i.object.to_string();
        let o = objects.entry(key.clone()).or_insert_with(|| Obj {
            object: key.clone(),
            owner: i.object.owner().to_string(),
            location: "pending",
            ..Default::default()
        });
        o.local_refs += i.local;
        o.task_args += i.submitted;
        o.contained_in += i.contained_in;
        if i.owned {
            o.borrowers = i.borrowers;
            o.size = i.size;
            let at = stored_at.get(&key);
            o.node = at.map(|(n, _)| n.clone());
            o.location = match i.state.as_str() {
                "inline" => "inline",
                "stored" if at.is_some_and(|s| s.1) => "spilled",
                "stored" => "in store",
                "failed" => "failed",
                _ => "pending",
            };
        }
    }
    ClusterMemory { objects: objects.into_values().collect(), pending_tasks, unreachable }
}
