//! Where a task or actor may run (Ray's scheduling strategies), as scheduling and the wire
//! both name it.

use crate::NodeId;
use serde::{Deserialize, Serialize};

/// Where a task may run (Ray's scheduling strategies).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum Placement {
    /// This node first; another when this one can never fit the task or is busy and another
    /// has room (power of two choices on load).
    #[default]
    Default,
    /// Round-robin over the nodes that can fit the task.
    Spread,
    /// On `node`; with `soft`, elsewhere when that node is dead or cannot fit the task.
    Node { node: NodeId, soft: bool },
    /// On the node asked and no other (a request another node spilled back to it).
    Here,
}

/// How a placement group's bundles are laid over the nodes (Ray's strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum GroupStrategy {
    /// As few nodes as possible; more when one cannot hold them all.
    #[default]
    Pack,
    /// As many nodes as possible; some share a node when there are too few.
    Spread,
    /// All on one node, or the group waits.
    StrictPack,
    /// Each on a node of its own, or the group waits.
    StrictSpread,
}

impl GroupStrategy {
    pub fn name(&self) -> &'static str {
        match self {
            GroupStrategy::Pack => "PACK",
            GroupStrategy::Spread => "SPREAD",
            GroupStrategy::StrictPack => "STRICT_PACK",
            GroupStrategy::StrictSpread => "STRICT_SPREAD",
        }
    }
}

/// The name under which a node offers resource `name` reserved for bundle `index` of
/// placement group `group` (`None`: any of the group's bundles on that node), as Ray renames
/// them: a task placed in a bundle asks for these instead of the plain resource, so the
/// ordinary scheduler finds the bundle's node and keeps the task within the bundle.
pub fn bundle_resource(name: &str, group: u64, index: Option<u32>) -> String {
    match index {
        Some(i) => format!("{name}_group_{i}_{group:016x}"),
        None => format!("{name}_group_{group:016x}"),
    }
}

/// Every committed bundle also offers this resource (1000 of it), so that a task that needs
/// nothing else still lands on its bundle's node.
pub const BUNDLE: &str = "bundle";

/// Whether resource `name` was made for placement group `group` (see [`bundle_resource`]).
pub fn is_bundle_resource_of(name: &str, group: u64) -> bool {
    name.contains("_group_") && name.ends_with(&format!("_{group:016x}"))
}
