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
