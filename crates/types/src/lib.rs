//! ferry's base types, under every other crate: the ids that name processes, nodes, tasks,
//! objects and actors, and the resource shapes that scheduling counts. No IO here.

pub mod defaults;
pub mod ids;
pub mod placement;
pub mod shape;

pub use ids::{random_bytes, random_u64, ActorId, NodeId, ObjectId, TaskId, WorkerId};
pub use placement::Placement;
pub use shape::{Shape, CPU};
