//! `memory_summary`: every object in the cluster's tables, where it is, and why it is alive.
//!
//! Built by asking the node for its processes and stored objects, then every process for
//! its table (owned and borrowed entries), and joining the answers by object.

use crate::error::{Error, Result};
use crate::runtime::runtime;
use ferry_proto::msg::{FromNode, FromWorker, RefInfo, ToNode, ToWorker};
use ferry_proto::{ObjectId, WorkerId};
use std::collections::BTreeMap;
use std::fmt;

/// Where an object's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Its task has not finished.
    Pending,
    /// Small: in its owner's memory.
    Inline,
    /// In the node's shared-memory store.
    InStore,
    /// Spilled to the node's disk (read back on demand).
    Spilled,
    /// Its task failed; the error is kept.
    Failed,
}

/// One object, across every process that holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectSummary {
    pub object: ObjectId,
    pub owner: WorkerId,
    pub size: u64,
    pub location: Location,
    /// Live `ObjectRef` handles, in all processes.
    pub local_refs: u32,
    /// Processes other than the owner that hold it (borrowers).
    pub borrowers: u32,
    /// Unfinished tasks that take it as an argument (or carry it inside one).
    pub task_args: u32,
    /// Live objects whose values contain it.
    pub contained_in: u32,
}

impl ObjectSummary {
    /// Why the object is alive, in words.
    pub fn reasons(&self) -> Vec<String> {
        let mut r = RefInfo::reasons(self.local_refs, self.borrowers, self.task_args, self.contained_in);
        if r.is_empty() && self.location == Location::Pending {
            r.push("its task is running".into());
        }
        r
    }
}

/// What [`memory_summary`] returns; `Display` prints it as a table grouped by owner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemorySummary {
    pub objects: Vec<ObjectSummary>,
    /// Bytes of the node's store in memory, and its capacity.
    pub store_used_bytes: u64,
    pub store_capacity_bytes: u64,
    pub spilled_objects: u64,
    pub spilled_bytes: u64,
    /// Unfinished tasks, over all processes' tables.
    pub pending_tasks: u64,
    /// Processes asked; those that did not answer are listed.
    pub processes: usize,
    pub unreachable: Vec<WorkerId>,
}

/// Lists every object in the cluster: owner, size, location (inline, in the store,
/// spilled) and why it is alive (local refs, borrowers, pending tasks, containing objects).
pub fn memory_summary() -> Result<MemorySummary> {
    let rt = runtime()?;
    let (processes, stored) = match rt.node_call(|req| ToNode::Inventory { req })? {
        FromNode::Inventory { processes, objects, .. } => (processes, objects),
        other => return Err(Error::Connection { detail: format!("unexpected reply to inventory: {other:?}") }),
    };
    let stats = rt.node_stats()?;
    let mut infos: Vec<RefInfo> = rt.lock().summary();
    let mut pending_tasks = rt.lock().table_sizes().1 as u64;
    let mut unreachable = Vec::new();
    for p in processes.iter().filter(|p| **p != rt.me()) {
        match rt.peer_call(*p, |req| ToWorker::Summary { req }) {
            Ok(FromWorker::Summary { refs, tasks, .. }) => {
                infos.extend(refs);
                pending_tasks += tasks;
            }
            _ => unreachable.push(*p),
        }
    }
    let spilled: BTreeMap<ObjectId, (u64, bool)> = stored.iter().map(|s| (s.object, (s.size, s.spilled))).collect();
    let mut by_object: BTreeMap<ObjectId, ObjectSummary> = BTreeMap::new();
    for i in infos {
        let o = by_object.entry(i.object).or_insert_with(|| ObjectSummary {
            object: i.object,
            owner: i.object.owner(),
            size: 0,
            location: Location::Pending,
            local_refs: 0,
            borrowers: 0,
            task_args: 0,
            contained_in: 0,
        });
        o.local_refs += i.local;
        o.task_args += i.submitted;
        o.contained_in += i.contained_in;
        if i.owned {
            o.borrowers = i.borrowers;
            o.size = i.size;
            o.location = match i.state.as_str() {
                "inline" => Location::Inline,
                "stored" if spilled.get(&i.object).is_some_and(|s| s.1) => Location::Spilled,
                "stored" => Location::InStore,
                "failed" => Location::Failed,
                _ => Location::Pending,
            };
        }
    }
    Ok(MemorySummary {
        objects: by_object.into_values().collect(),
        store_used_bytes: stats.store_used_bytes,
        store_capacity_bytes: stats.store_capacity_bytes,
        spilled_objects: stats.spilled_objects,
        spilled_bytes: stats.spilled_bytes,
        pending_tasks,
        processes: processes.len(),
        unreachable,
    })
}

impl fmt::Display for MemorySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "store: {} of {} bytes in memory; {} object(s), {} bytes spilled; {} pending task(s); {} process(es)",
            self.store_used_bytes,
            self.store_capacity_bytes,
            self.spilled_objects,
            self.spilled_bytes,
            self.pending_tasks,
            self.processes
        )?;
        let mut owner = None;
        for o in &self.objects {
            if owner != Some(o.owner) {
                owner = Some(o.owner);
                writeln!(f, "owner {}:", o.owner)?;
            }
            writeln!(
                f,
                "  {:?}  {:>12} B  {:<8}  {}",
                o.object,
                o.size,
                format!("{:?}", o.location),
                o.reasons().join(", ")
            )?;
        }
        for p in &self.unreachable {
            writeln!(f, "process {p} did not answer")?;
        }
        Ok(())
    }
}
