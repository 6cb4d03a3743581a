//! ferry's owner and worker core. Users reach it through the `ferry` facade.
//!
//! - [`ObjectRef`]: a typed future for an object this process owns.
//! - [`init`], [`get`], [`put`], [`wait`], [`cancel`]: the calls of the programming model.
//! - `owner`: the owner's table and the submitter (pure state, see its docs).
//! - `runtime`: the process's connections and threads.
//! - `executor`: how a worker runs tasks.
//!
//! **Architecture Invariant:** the process that submits a task (or calls `put`) owns the
//! returned object: its table alone says whether the object is pending, where its value is,
//! and when it can be freed. No central service is on the path of a task.

mod actor;
mod bytes;
mod codec;
mod config;
mod context;
mod error;
mod executor;
mod groups;
mod logs;
mod memory;
mod object_ref;
mod owner;
mod refs;
pub mod registry;
mod runtime;
mod session;
pub mod state;
mod stream;
mod task;
mod why;
mod worker;

pub use actor::{
    exit_actor, get_actor, get_actor_in, kill, Actor, ActorHandle, ActorOptions, ActorOptionsBuilder, ActorProxy,
    MethodOptions, RawActor, SplitCall, SplitProxy,
};
pub use bytes::{ArgData, Bytes, BytesMut};
pub use config::{Config, UnhandledHook};
pub use context::{runtime_context, RuntimeContext};
pub use error::{Error, Result};
pub use ferry_proto::msg::ActorId;
pub use ferry_proto::msg::GroupView;
pub use ferry_proto::msg::NodeStats;
/// One node as the cluster sees it (see [`nodes`]).
pub use ferry_proto::msg::NodeView as NodeInfo;
pub use ferry_proto::{GroupStrategy, CPU, MEMORY};
pub use ferry_proto::{NodeId, ObjectId, Shape, TaskId, WorkerId};
pub use groups::{
    placement_group, placement_group_named, placement_groups, remove_placement_group, GroupPhase, PlacementGroup,
};
pub use memory::{memory_summary, Location, MemorySummary, ObjectSummary};
pub use object_ref::{get_async, GetFuture, ObjectRef};
pub use owner::UnhandledError;
pub use runtime::block_on;
pub use stream::RefStream;
pub use task::{
    submit, submit_returning, IntoArg, Priority, RemoteOptions, SchedulingStrategy, TaskArg, TaskOptions,
    DEFAULT_MAX_PREEMPTIONS,
};

use runtime::{runtime, try_runtime, Runtime};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Worker mode

/// Runs before `main`: a process started by a node daemon as a worker becomes one here and
/// never reaches `main`. This is why any binary that links ferry (tests, benches, examples)
/// can be its own worker without special code in `main`.
#[used]
#[link_section = ".init_array"]
static WORKER_ENTRY: extern "C" fn() = worker_entry;

extern "C" fn worker_entry() {
    if std::env::var_os(ferry_proto::layout::worker_env::WORKER).is_some_and(|v| v == "1") {
        worker::main();
    }
}

/// Enters worker mode if this process was started as a worker (`#[ferry::main]` calls it
/// first thing; the constructor above has normally done so already).
pub fn worker_entry_point() {
    worker_entry();
}

// ---------------------------------------------------------------------------------------
// Starting and stopping

/// Starts ferry in this process: with no cluster address, an embedded local cluster (a node
/// daemon on background threads and one worker process per core, started from this very
/// binary). Call once, early in `main`; other calls start it with `Config::default()` if
/// it is not running.
pub fn init(cfg: Config) -> Result<()> {
    let _g = Runtime::init_lock();
    if Runtime::is_set() {
        return Err(Error::AlreadyInitialized);
    }
    // Keep the worker constructor linked into every binary that starts a cluster.
    std::hint::black_box(&WORKER_ENTRY);
    session::start_embedded(cfg)?;
    Ok(())
}

/// Stops ferry: pending objects fail with `NotRunning`, and the embedded cluster's
/// processes and files are removed. ferry cannot be started again in this process.
pub fn shutdown() {
    if let Some(rt) = try_runtime() {
        rt.shutdown();
    }
}

/// Figures of the local node: store usage, workers, resources.
pub fn node_stats() -> Result<NodeStats> {
    runtime()?.node_stats()
}

/// What this process's owner table did to recover, so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Task runs repeated: after a lost worker or node, a panic with `retry_exceptions`, or an
    /// argument that had to be made again.
    pub task_retries: u64,
    /// Objects made again from their lineage after every copy was lost.
    pub reconstructions: u64,
    /// Task runs preempted (reset: their worker killed for real-time work or to free
    /// memory) and run again, or failed past their `max_preemptions`; not retries.
    pub preemptions: u64,
}

/// Retries and reconstructions of the tasks and objects this process owns.
pub fn recovery_stats() -> Result<RecoveryStats> {
    let (task_retries, reconstructions, preemptions) = runtime()?.lock().recovery();
    Ok(RecoveryStats { task_retries, reconstructions, preemptions })
}

/// The node this process runs on (for [`SchedulingStrategy::NodeAffinity`]).
pub fn node_id() -> Result<NodeId> {
    Ok(runtime()?.node_id())
}

/// Every node of the cluster, alive or dead, with its resources (this node alone when it is
/// not part of a cluster).
pub fn nodes() -> Result<Vec<NodeInfo>> {
    use ferry_proto::msg::{FromNode, ToNode};
    match runtime()?.node_call(|req| ToNode::ClusterStatus { req })? {
        // The control store runs no work: it is not one of the nodes tasks can use.
        FromNode::Cluster { nodes, .. } => Ok(nodes.into_iter().filter(|n| !n.head).collect()),
        other => Err(Error::Connection { detail: format!("unexpected reply to a cluster status: {other:?}") }),
    }
}

// ---------------------------------------------------------------------------------------
// get / put / wait / cancel: each a call into the runtime (`runtime::objects`)

/// Waits for the object and returns its value.
pub fn get<T: DeserializeOwned + 'static>(r: &ObjectRef<T>) -> Result<T> {
    runtime()?.get(r.id(), None)
}

/// Like [`get`], giving up with [`Error::Timeout`] after `timeout`.
pub fn get_timeout<T: DeserializeOwned + 'static>(r: &ObjectRef<T>, timeout: Duration) -> Result<T> {
    runtime()?.get(r.id(), Some(timeout))
}

/// Gets every object, in order. The first error known is returned as soon as it is known (as
/// Ray's `get` does), without waiting for the other objects.
pub fn get_all<T: DeserializeOwned + 'static>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    runtime()?.get_all(&ids)
}

/// Waits for a byte vector (`Vec<u8>` or [`Bytes`]) and returns a zero-copy view of it: a
/// slice of the shared-memory store, or of the owner's memory for small values.
pub fn get_bytes<T: bytes::ByteValue>(r: &ObjectRef<T>) -> Result<Bytes> {
    runtime()?.get::<Bytes>(r.id(), None)
}

/// Stores a value and returns an owned reference to it. Small values stay in this
/// process's memory; large ones go to the node's shared-memory store.
pub fn put<T: Serialize + 'static>(value: T) -> Result<ObjectRef<T>> {
    runtime()?.put(&value).map(ObjectRef::from_id)
}

/// [`put`] of a value the caller keeps: encoded straight into the store, nothing cloned.
pub fn put_from<T: Serialize + 'static>(value: &T) -> Result<ObjectRef<T>> {
    runtime()?.put(value).map(ObjectRef::from_id)
}

/// `(ready, not_ready)`, as [`wait`] returns them.
pub type WaitResult<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_ready` of `refs` are ready (a failed object counts as ready) or the
/// timeout passes, and returns `(ready, not_ready)`: at most `num_ready` refs in the first
/// list, every other ref in the second, each in the order given. The refs must be unique
/// ([`Error::InvalidArgument`] otherwise), as in Ray.
pub fn wait<T>(refs: &[ObjectRef<T>], num_ready: usize, timeout: Option<Duration>) -> Result<WaitResult<T>> {
    wait_with(refs, WaitOptions { num_ready, timeout, fetch_local: true })
}

/// How [`wait_with`] waits (Ray's `wait` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// Return once this many are ready (at most the number of refs).
    pub num_ready: usize,
    /// Return what is ready after this long (`None`: no limit).
    pub timeout: Option<Duration>,
    /// Copy the ready values stored on other nodes to this node before returning, so a
    /// following `get` costs no transfer (default true, as in Ray).
    pub fetch_local: bool,
}

impl WaitOptions {
    /// Wait for `num_ready` refs, with no time limit, fetching values here.
    pub fn new(num_ready: usize) -> WaitOptions {
        WaitOptions { num_ready, timeout: None, fetch_local: true }
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    pub fn fetch_local(mut self, fetch: bool) -> Self {
        self.fetch_local = fetch;
        self
    }
}

/// [`wait`] with all of Ray's options (see [`WaitOptions`]).
pub fn wait_with<T>(refs: &[ObjectRef<T>], opts: WaitOptions) -> Result<WaitResult<T>> {
    let WaitOptions { num_ready, timeout, fetch_local } = opts;
    let rt = runtime()?;
    let mut seen = rustc_hash::FxHashSet::with_capacity_and_hasher(refs.len(), Default::default());
    if let Some(dup) = refs.iter().find(|r| !seen.insert(r.id())) {
        return Err(Error::InvalidArgument {
            detail: format!(
                "ferry::wait needs unique refs: {:?} is in the list more than once (each ref counts once \
                 towards num_ready; deduplicate the list)",
                dup.id()
            ),
        });
    }
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    let found = rt.wait(&ids, num_ready.min(refs.len()), timeout.map(|d| Instant::now() + d), fetch_local);
    // `wait` took one more handle of each, for these.
    let mut ready = Vec::with_capacity(found.len());
    let mut pending = Vec::with_capacity(refs.len() - found.len());
    let mut next = found.iter().peekable();
    for (i, id) in ids.into_iter().enumerate() {
        let handle = ObjectRef::from_id(id);
        if next.peek() == Some(&&i) {
            next.next();
            ready.push(handle);
        } else {
            pending.push(handle);
        }
    }
    if executor::cancelled_now() {
        // The task waiting here was cancelled (its handles above are let go).
        return Err(runtime::cancelled_here());
    }
    Ok((ready, pending))
}

/// Deletes the values of `refs` from every store now (Ray's `free`): their refs stay valid
/// handles, but a later `get` of one fails with [`Error::ObjectFreed`], saying who freed it;
/// a freed object is not made again. For objects nothing will read again whose memory is
/// wanted back before their refs go. Refs this process borrowed are freed by their owners.
pub fn free<T>(refs: &[ObjectRef<T>]) -> Result<()> {
    let rt = runtime()?;
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    let me = rt.me();
    rt.with_state(|st, fx| st.free_values(&ids, me, fx));
    Ok(())
}

/// Cancels the task that produces `r`: a task not yet started never runs; one already
/// running is told ([`is_cancelled`] turns true in it, and a `get` or `wait` it waits in
/// returns [`Error::Cancelled`]), and its result, if it still comes, is dropped. Either way
/// `get(r)` returns [`Error::Cancelled`] at once. Cancelling a finished task or a `put`
/// object does nothing. See [`cancel_with`] to end the worker running it.
pub fn cancel<T>(r: &ObjectRef<T>) -> Result<()> {
    cancel_with(r, CancelOptions::default())
}

/// How [`cancel_with`] cancels (Ray's `cancel` arguments): `CancelOptions::default()` is
/// Ray's default (`force = false, recursive = true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelOptions {
    /// End the worker running the task (it is replaced; the tasks it had not started go
    /// back to their owners, uncharged). Without it a running task is told instead:
    /// [`is_cancelled`] turns true in it, and a `get` or `wait` it waits in returns
    /// [`Error::Cancelled`]. An actor's calls are never forced (its state would go).
    pub force: bool,
    /// Cancel the tasks the task submitted too, and theirs (default true, as in Ray).
    pub recursive: bool,
}

impl Default for CancelOptions {
    fn default() -> Self {
        CancelOptions { force: false, recursive: true }
    }
}

impl CancelOptions {
    /// With `force` set as given.
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }
    /// With `recursive` set as given.
    pub fn recursive(mut self, yes: bool) -> Self {
        self.recursive = yes;
        self
    }
}

/// [`cancel`] with Ray's options (see [`CancelOptions`]): `get(r)` returns
/// [`Error::Cancelled`] at once either way (for a borrowed ref, once its owner has it).
/// Actor calls: one not yet started is removed from the actor's queue; a running one of an
/// async actor is dropped at its next `.await`; a running one of a sync actor is told.
pub fn cancel_with<T>(r: &ObjectRef<T>, opts: CancelOptions) -> Result<()> {
    let id = r.id();
    runtime()?.with_state(|st, fx| st.cancel(id, opts.force, opts.recursive, fx));
    Ok(())
}

/// Whether the task running on this thread was cancelled (for tasks that check now and then
/// and stop early, as Ray's cooperative cancellation). False outside a task.
pub fn is_cancelled() -> bool {
    executor::cancelled_now()
}

/// Where this process's node and store are, and the token to reach them: for tools and
/// tests that speak the wire protocol directly.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub node_addr: ferry_proto::Addr,
    pub token: String,
    pub store_dir: std::path::PathBuf,
    pub session_dir: std::path::PathBuf,
    pub worker_pids: Vec<u32>,
    /// This process's id, and where it listens for other processes.
    pub me: WorkerId,
    pub listen: ferry_proto::Addr,
}

#[doc(hidden)]
pub fn session_info() -> Result<SessionInfo> {
    runtime().map(|rt| rt.session_info())
}

/// Private items for generated code.
#[doc(hidden)]
pub mod __private {
    pub use crate::actor::{begin_exports, create_actor};
    pub use crate::bytes::ArgData;
    pub use crate::codec::{decode, encode_vec};
    pub use crate::executor::{split_returns, store_return, Returned, Returns, StreamOut};
    pub use crate::registry::{
        await_catching, ActorClass, ActorInstance, ActorMethod, MethodFuture, ACTOR_CLASSES, ACTOR_METHODS,
    };
    pub use crate::registry::{check_arity, decode_arg, run_catching, RemoteFunction, REMOTE_FUNCTIONS};
    pub use crate::session::{set_embedder, Embedded, EmbeddedNode, Embedder};
    pub use crate::stream::submit_stream;
    pub use crate::task::adopt_ref;
    pub use ferry_proto::msg::TaskError;
    pub use linkme;
}
