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

mod embed;
pub mod testing;

pub use ferry_core::state;

pub use ferry_core::{
    block_on, cancel, cancel_with, exit_actor, free, get, get_all, get_async, get_bytes, get_timeout, is_cancelled,
    kill, shutdown, wait, wait_with, Actor, ActorHandle, ActorId, ActorOptions, ActorOptionsBuilder, ActorProxy, Bytes,
    BytesMut, CancelOptions, Config, Error, GetFuture, IntoArg, Location, MemorySummary, MethodOptions, NodeId,
    NodeInfo, NodeStats, ObjectId, ObjectRef, ObjectSummary, Priority, RawActor, RecoveryStats, RefStream,
    RemoteOptions, Result, RuntimeContext, SchedulingStrategy, Shape, SplitCall, SplitProxy, TaskArg, TaskId,
    TaskOptions, UnhandledError, UnhandledHook, WaitOptions, WaitResult, WorkerId, CPU, DEFAULT_MAX_PREEMPTIONS,
    MEMORY,
};
pub use ferry_core::{placement_groups, remove_placement_group, GroupPhase, GroupStrategy, GroupView, PlacementGroup};
pub use ferry_macros::{actor, main, method, remote};

/// The names most programs need: `use ferry::prelude::*;`.
pub mod prelude {
    pub use crate::{
        ActorHandle, ActorOptionsBuilder, IntoArg, ObjectRef, Priority, RemoteOptions, SchedulingStrategy,
    };
    pub use std::time::Duration;
}

// The entry points that may start the runtime: each makes sure it can start an embedded
// node first (see `embed`). The rest of the API takes a ref or handle, which one of these made.

/// Starts ferry in this process: with no cluster address (`Config::address`, or
/// `FERRY_ADDRESS`), an embedded local cluster (a node daemon on background threads and one
/// worker process per core, started from this very binary); with one, joins that cluster.
/// Call once, early in `main`; without it, the first ferry call starts ferry with
/// `Config::default()`, as Ray does.
pub fn init(cfg: Config) -> Result<()> {
    embed::ready();
    ferry_core::init(cfg)
}

/// Stores a value and returns an owned reference to it. Small values stay in this process's
/// memory; large ones go to the node's shared-memory store.
pub fn put<T: serde::Serialize + 'static>(value: T) -> Result<ObjectRef<T>> {
    embed::ready();
    ferry_core::put(value)
}

/// [`put`] of a value the caller keeps (as Ray's `put` does): it is encoded straight into the
/// store, with no clone and nothing freed on the caller's time.
///
/// ```no_run
/// let frame = vec![0u8; 64 << 20];
/// let r = ferry::put_from(&frame)?;
/// // `frame` is still ours.
/// # Ok::<(), ferry::Error>(())
/// ```
pub fn put_from<T: serde::Serialize + 'static>(value: &T) -> Result<ObjectRef<T>> {
    embed::ready();
    ferry_core::put_from(value)
}

/// The actor named `name` in this job's namespace (`Config::namespace`, else the job's own
/// anonymous one, as in Ray), as a handle of type `T`.
pub fn get_actor<T: Actor>(name: &str) -> Result<ActorHandle<T>> {
    embed::ready();
    ferry_core::get_actor(name)
}

/// The actor named `name` in `namespace` (another job's, say), as a handle of type `T`.
pub fn get_actor_in<T: Actor>(name: &str, namespace: &str) -> Result<ActorHandle<T>> {
    embed::ready();
    ferry_core::get_actor_in(name, namespace)
}

/// Reserves resources for a group of bundles, atomically across nodes (Ray's
/// `placement_group`), laid out by `strategy`; see [`PlacementGroup`]. Tasks and actors run
/// in a bundle with `.placement_group(&pg, Some(i))`.
///
/// ```no_run
/// use ferry::{GroupStrategy, Shape};
/// let pg = ferry::placement_group(vec![Shape::cpus(1.0); 2], GroupStrategy::StrictSpread).unwrap();
/// ferry::get(&pg.ready()).unwrap();
/// pg.remove().unwrap();
/// ```
pub fn placement_group(bundles: impl IntoIterator<Item = Shape>, strategy: GroupStrategy) -> Result<PlacementGroup> {
    embed::ready();
    ferry_core::placement_group(bundles, strategy)
}

/// [`placement_group`] with a name, shown by `ferry status`.
pub fn placement_group_named(
    name: &str,
    bundles: impl IntoIterator<Item = Shape>,
    strategy: GroupStrategy,
) -> Result<PlacementGroup> {
    embed::ready();
    ferry_core::placement_group_named(name, bundles, strategy)
}

/// Every node of the cluster, alive or dead, with its resources.
pub fn nodes() -> Result<Vec<NodeInfo>> {
    embed::ready();
    ferry_core::nodes()
}

/// The node this process runs on (for [`SchedulingStrategy::NodeAffinity`]).
pub fn node_id() -> Result<NodeId> {
    embed::ready();
    ferry_core::node_id()
}

/// Figures of the local node: store usage, workers, resources.
pub fn node_stats() -> Result<NodeStats> {
    embed::ready();
    ferry_core::node_stats()
}

/// Every object of the cluster this process can see: owner, size, where it is, why alive.
pub fn memory_summary() -> Result<MemorySummary> {
    embed::ready();
    ferry_core::memory_summary()
}

/// Who and where the calling code is, as Ray's `get_runtime_context()`: job, node, process,
/// the task or actor it runs for, the task's attempt (a retry knows it is one), whether the
/// actor was restarted, and what the task holds.
pub fn runtime_context() -> Result<RuntimeContext> {
    embed::ready();
    ferry_core::runtime_context()
}

/// Retries and reconstructions of the tasks and objects this process owns.
pub fn recovery_stats() -> Result<RecoveryStats> {
    embed::ready();
    ferry_core::recovery_stats()
}

#[doc(hidden)]
pub mod __private {
    pub use ferry_core::__private::*;
    pub use ferry_core::{session_info, SessionInfo};

    /// Starts a remote function's task (the code `#[ferry::remote]` generates).
    pub fn submit<R>(
        function: &'static str,
        opts: &ferry_core::TaskOptions,
        args: Vec<ferry_core::TaskArg>,
    ) -> ferry_core::ObjectRef<R> {
        crate::embed::ready();
        ferry_core::submit(function, opts, args)
    }

    /// Starts a streaming task (`#[ferry::remote(streaming)]`).
    pub fn submit_stream<R>(
        function: &'static str,
        opts: &ferry_core::TaskOptions,
        args: Vec<ferry_core::TaskArg>,
    ) -> ferry_core::RefStream<R> {
        crate::embed::ready();
        ferry_core::__private::submit_stream(function, opts, args)
    }

    /// Starts a task whose value is split into `opts.num_returns` objects; their ids.
    pub fn submit_returning(
        function: &'static str,
        opts: &ferry_core::TaskOptions,
        args: Vec<ferry_core::TaskArg>,
    ) -> Vec<ferry_core::ObjectId> {
        crate::embed::ready();
        ferry_core::submit_returning(function, opts, args)
    }

    /// Begins encoding a call's arguments (generated code; the first thing a call does).
    pub fn begin_exports() {
        crate::embed::ready();
        ferry_core::__private::begin_exports()
    }

    /// Creates an actor (the code `#[ferry::actor]` generates).
    pub fn create_actor<T: ferry_core::Actor>(
        opts: &ferry_core::ActorOptions,
        args: Vec<ferry_core::TaskArg>,
    ) -> ferry_core::Result<ferry_core::ActorHandle<T>> {
        crate::embed::ready();
        ferry_core::__private::create_actor(opts, args)
    }

    /// Enters worker mode if this process was started as one (`#[ferry::main]`).
    pub fn worker_entry_point() {
        crate::embed::ready();
        ferry_core::worker_entry_point()
    }
}
