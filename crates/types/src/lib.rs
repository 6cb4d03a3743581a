//! ferry's base types, under every other crate: the ids that name processes, nodes, tasks,
//! objects and actors, the resource shapes that scheduling counts, every policy default,
//! and the one way ferry takes a lock. No IO here.

pub mod defaults;
pub mod ids;
pub mod placement;
pub mod priority;
pub mod shape;
pub mod sync;

pub use ids::{random_bytes, random_u64, ActorId, NodeId, ObjectId, TaskId, WorkerId};
pub use placement::{bundle_resource, is_bundle_resource_of, GroupStrategy, Placement, BUNDLE};
pub use priority::Priority;
pub use shape::{Shape, CPU, MEMORY};
