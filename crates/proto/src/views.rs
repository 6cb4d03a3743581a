//! What a daemon reports of itself and of what it holds: its figures, its stored objects,
//! actors and processes, and where an object is in its store.

use crate::ids::{NodeId, ObjectId, WorkerId};
use crate::msg::ProcKind;
use ferry_types::{ActorId, Shape};
use serde::{Deserialize, Serialize};

/// Figures a daemon reports about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct NodeStats {
    pub node: Option<NodeId>,
    pub store_objects: u64,
    pub store_used_bytes: u64,
    pub store_capacity_bytes: u64,
    pub workers: u64,
    pub idle_workers: u64,
    pub leased_workers: u64,
    pub pending_lease_requests: u64,
    pub total: Shape,
    pub available: Shape,
    /// Actors not yet dead.
    pub actors: u64,
    pub spilled_objects: u64,
    pub spilled_bytes: u64,
    /// Bytes spilled since the node started, and the time the copies took.
    pub spill_total_bytes: u64,
    pub spill_total_ns: u64,
    /// Objects this node sent to other nodes, and copied from them (transfers, not requests:
    /// concurrent pulls of one object are one transfer), with their bytes.
    pub transfers_out: u64,
    pub transfers_in: u64,
    pub transfer_bytes_out: u64,
    pub transfer_bytes_in: u64,
    /// Best-effort workers suspended now for real-time work, and suspensions since the node
    /// started (preemptions that lose nothing).
    pub suspended_workers: u64,
    pub suspensions: u64,
    /// Leases reset since the node started (their workers killed for real-time work or to
    /// free memory; their tasks run again), and of those, resets to free memory.
    pub resets: u64,
    pub memory_resets: u64,
    /// The store's arena: its size, bytes free, the largest free extent, the number of free
    /// extents (fragments), and extents pinned by readers now.
    pub arena_bytes: u64,
    pub arena_free_bytes: u64,
    pub arena_largest_free_bytes: u64,
    pub arena_free_extents: u64,
    pub arena_pinned_extents: u64,
    /// Objects that found no free extent large enough and got a file of their own, and of
    /// those the ones that would have fit in the free bytes (fragmentation).
    pub store_fallback_files: u64,
    pub store_fragmented_fallbacks: u64,
}

/// A stored object as the node lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct StoredInfo {
    pub object: ObjectId,
    pub size: u64,
    pub spilled: bool,
}

/// An actor as the node that keeps its record lists it (`ferry list actors`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct ActorView {
    pub actor: ActorId,
    pub class: String,
    /// "pending" (waiting for a worker or a node), "starting", "alive", "restarting" or "dead".
    pub state: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// The job (driver) it belongs to.
    pub job: WorkerId,
    pub detached: bool,
    /// The node keeping its record, and the node and worker running it.
    pub home: NodeId,
    pub node: Option<NodeId>,
    pub worker: Option<WorkerId>,
    /// Times it was started again, and how many more it may be.
    pub restarts: u32,
    pub restarts_left: u32,
    /// Why it died.
    pub death: Option<String>,
}

/// A process connected to a node (`ferry list workers`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct ProcView {
    pub worker: WorkerId,
    pub kind: ProcKind,
    pub node: NodeId,
    pub pid: Option<u32>,
    /// "idle", "leased", "actor", or for other kinds their kind.
    pub state: String,
    /// The actor it runs.
    pub actor: Option<ActorId>,
}

/// Where an object is in a node's store (`Pinned`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum StorePlace {
    /// `size` bytes at `at` in the arena, pinned for the asker.
    Arena { at: u64, size: u64 },
    /// In a file of its own, in the store directory or spilled.
    File,
}
