//! Placement groups as the wire shows them (`ListGroups`, answered by `Groups`).

use crate::ids::NodeId;
use ferry_types::{GroupStrategy, Shape};
use serde::{Deserialize, Serialize};

/// Where a placement group is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum GroupPhase {
    /// Waiting for room (or being reserved).
    Pending,
    /// Every bundle reserved.
    Created,
    /// A node holding bundles died: they are reserved again elsewhere.
    Rescheduling,
    Removed,
    /// It can never fit (`reason` says why).
    Infeasible,
}

/// A placement group as `ListGroups` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct GroupView {
    pub group: u64,
    pub name: String,
    pub strategy: GroupStrategy,
    pub phase: GroupPhase,
    pub reason: Option<String>,
    /// Each bundle and the node holding it.
    pub bundles: Vec<(Shape, Option<NodeId>)>,
}
