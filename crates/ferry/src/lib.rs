//! **ferry**: distributed futures for Rust.
//!
//! Remote functions return typed futures ([`ObjectRef`]) at once; large values live in a
//! shared-memory object store; the process that creates a future owns its metadata (the
//! *Ownership* design of Ray's core). This crate is the only one users depend on.
//!
//! ```no_run
//! use ferry::prelude::*;
//!
//! #[ferry::remote]
//! fn add(a: i64, b: i64) -> i64 { a + b }
//!
//! #[ferry::main]
//! fn main() -> ferry::Result<()> {
//!     ferry::init(ferry::Config::default())?;
//!     let a = add::remote(1, 2);
//!     let b = add::remote(&a, 10);
//!     assert_eq!(ferry::get(&b)?, 13);
//!     Ok(())
//! }
//! ```
//!
//! Any binary that links ferry can serve as its own worker: worker processes are started from
//! the same executable and enter worker mode before `main` runs.

pub use ferry_core::{
    block_on, cancel, decode, encode_vec, get, get_actor, get_all, get_async, get_bytes, get_timeout, init, kill,
    memory_summary, node_id, node_stats, nodes, put, recovery_stats, shutdown, store_return, wait, Actor, ActorHandle,
    ActorId, ActorOptions, ActorOptionsBuilder, ActorProxy, Bytes, BytesMut, Config, Error, GetFuture, IntoArg,
    Location, MemorySummary, NodeId, NodeInfo, NodeStats, ObjectId, ObjectRef, ObjectSummary, RawActor, RecoveryStats,
    RemoteOptions, Result, SchedulingStrategy, TaskArg, TaskOptions, WaitResult, WorkerId,
};
pub use ferry_macros::{actor, main, remote};

/// The names most programs need: `use ferry::prelude::*;`.
pub mod prelude {
    pub use crate::{ActorHandle, ActorOptionsBuilder, IntoArg, ObjectRef, RemoteOptions, SchedulingStrategy};
    pub use std::time::Duration;
}

#[doc(hidden)]
pub mod __private {
    pub use ferry_core::__private::*;
    pub use ferry_core::submit;
    pub use ferry_core::worker_entry_point;
    pub use ferry_core::{session_info, SessionInfo};
}
