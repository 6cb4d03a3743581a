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
mod error;
mod executor;
mod logs;
mod memory;
mod owner;
mod refs;
pub mod registry;
mod runtime;
mod session;
mod why;
mod worker;

pub use actor::{get_actor, kill, Actor, ActorHandle, ActorOptions, ActorOptionsBuilder, ActorProxy, RawActor};
pub use bytes::{ArgData, Bytes, BytesMut};
pub use codec::{decode, encode_vec};
pub use config::Config;
pub use error::{Error, Result};
pub use executor::store_return;
pub use ferry_proto::msg::ActorId;
pub use ferry_proto::msg::NodeStats;
/// One node as the cluster sees it (see [`nodes`]).
pub use ferry_proto::msg::NodeView as NodeInfo;
pub use ferry_proto::{NodeId, ObjectId, WorkerId};
pub use memory::{memory_summary, Location, MemorySummary, ObjectSummary};
pub use runtime::block_on;

use codec::Backing;
use ferry_proto::msg::RefWire;
use owner::{ArgDraft, Ready};
use runtime::{runtime, try_runtime, Runtime};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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

// ---------------------------------------------------------------------------------------
// Object references

/// An untyped handle that keeps its object alive in the owner's table.
struct RawRef {
    id: ObjectId,
}

impl Clone for RawRef {
    fn clone(&self) -> Self {
        if let Some(rt) = try_runtime() {
            rt.lock().add_local_ref(self.id);
        }
        RawRef { id: self.id }
    }
}

impl Drop for RawRef {
    fn drop(&mut self) {
        if let Some(rt) = try_runtime() {
            let id = self.id;
            rt.with_state(|st, fx| st.remove_local_ref(id, fx));
        }
    }
}

/// A typed future for an object: the return of a remote function or a `put`. It is ready
/// when the object is, and keeps the object alive while it exists.
///
/// ```no_run
/// # fn f() -> ferry_core::Result<()> {
/// let r = ferry_core::put(41u64)?;
/// assert_eq!(ferry_core::get(&r)?, 41);
/// # Ok(()) }
/// ```
pub struct ObjectRef<T> {
    raw: RawRef,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    fn from_id(id: ObjectId) -> Self {
        ObjectRef { raw: RawRef { id }, _t: PhantomData }
    }
    /// The object's id (which names its owner).
    pub fn id(&self) -> ObjectId {
        self.raw.id
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef { raw: self.raw.clone(), _t: PhantomData }
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef<{}>({:?})", std::any::type_name::<T>(), self.raw.id)
    }
}

/// A ref inside a value (`Vec<ObjectRef<T>>`, a struct field, a map) travels as a ref: the
/// process that decodes it becomes a borrower, and the object stays alive while any process
/// holds it. To pass a ref to a task without resolving it, make the parameter an
/// `ObjectRef<T>`; a `T` parameter receives the value.
/// A ref travels as its id and, in a cluster, its owner's TCP address, so that a process on
/// any node can reach the owner.
impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        refs::encoding_ref(self.raw.id);
        RefWire { id: self.raw.id, owner: refs::owner_addr(self.raw.id) }.serialize(s)
    }
}

impl<'de, T> serde::Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let RefWire { id, owner } = RefWire::deserialize(d)?;
        refs::decoded_ref(id, owner);
        Ok(ObjectRef::from_id(id))
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw.id == other.raw.id
    }
}
impl<T> Eq for ObjectRef<T> {}
impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.raw.id.hash(state)
    }
}

// ---------------------------------------------------------------------------------------
// Task arguments and options

enum ArgInner {
    Value(Vec<u8>),
    Ref(RawRef),
    Failed(Error),
}

/// A task argument: a value, or a reference whose value the task receives.
pub struct TaskArg(ArgInner);

/// What may be passed where a remote function takes a `T`: a `T`, or an
/// `ObjectRef<T>` (by value or by reference), resolved to its value before the task runs.
pub trait IntoArg<T> {
    fn into_arg(self) -> TaskArg;
}

impl<T: Serialize + 'static> IntoArg<T> for T {
    fn into_arg(self) -> TaskArg {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return TaskArg(ArgInner::Failed(e)),
        };
        match codec::encode(&self) {
            Ok(enc) if enc.len() <= rt.cfg.inline_max_bytes => TaskArg(ArgInner::Value(enc.into_vec())),
            // Large values go through the store, as if `put` first.
            Ok(enc) => match rt.put_encoded(enc) {
                Ok(id) => TaskArg(ArgInner::Ref(RawRef { id })),
                Err(e) => TaskArg(ArgInner::Failed(e)),
            },
            Err(e) => TaskArg(ArgInner::Failed(e)),
        }
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> TaskArg {
        TaskArg(ArgInner::Ref(self.raw.clone()))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> TaskArg {
        TaskArg(ArgInner::Ref(self.raw))
    }
}

// `&r` where a function takes an `ObjectRef<T>`: the ref itself is passed (cloned), unresolved.
impl<T: 'static> IntoArg<ObjectRef<T>> for &ObjectRef<T> {
    fn into_arg(self) -> TaskArg {
        IntoArg::<ObjectRef<T>>::into_arg(self.clone())
    }
}

// `&handle` where a function takes an `ActorHandle<A>`: the handle is passed (cloned).
impl<A: Actor> IntoArg<ActorHandle<A>> for &ActorHandle<A> {
    fn into_arg(self) -> TaskArg {
        IntoArg::<ActorHandle<A>>::into_arg(self.clone())
    }
}

// A `&str` where a `String` is expected, as a Rust user would write it.
impl IntoArg<String> for &str {
    fn into_arg(self) -> TaskArg {
        IntoArg::<String>::into_arg(self.to_string())
    }
}

// `Vec<u8>` and `Bytes` encode alike, so a function taking `Bytes` (to read a stored object
// without copying it) accepts byte vectors and refs to them as they are.
impl IntoArg<Bytes> for &ObjectRef<Vec<u8>> {
    fn into_arg(self) -> TaskArg {
        TaskArg(ArgInner::Ref(self.raw.clone()))
    }
}
impl IntoArg<Bytes> for ObjectRef<Vec<u8>> {
    fn into_arg(self) -> TaskArg {
        TaskArg(ArgInner::Ref(self.raw))
    }
}
impl IntoArg<Bytes> for Vec<u8> {
    fn into_arg(self) -> TaskArg {
        IntoArg::<Vec<u8>>::into_arg(self)
    }
}

/// Options of one task: resources, retries, a display name.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// CPUs the task holds while it runs (default 1).
    pub num_cpus: f64,
    /// Custom resources, e.g. `("gpu", 1.0)`.
    pub resources: Vec<(String, f64)>,
    /// Retries if the worker dies (default `Config::default_max_retries`).
    pub max_retries: Option<u32>,
    /// Name shown in errors (default: the function's name).
    pub name: Option<String>,
    /// Which node runs it (default: this node first, then where there is room).
    pub strategy: SchedulingStrategy,
    /// Retry when the task panics too (default: only when its worker or node is lost).
    pub retry_exceptions: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            num_cpus: 1.0,
            resources: Vec::new(),
            max_retries: None,
            name: None,
            strategy: Default::default(),
            retry_exceptions: false,
        }
    }
}

/// Which node a task runs on (Ray's `scheduling_strategy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum SchedulingStrategy {
    /// The submitting node while it has room; then another node with room (the less loaded
    /// of two drawn at random), preferring the node that holds most of the arguments' bytes.
    #[default]
    Default,
    /// Round-robin over the nodes that can fit the task.
    Spread,
    /// On `node`; if `soft`, elsewhere when that node is dead or cannot fit the task (if not,
    /// the task fails with `TaskError` saying why).
    NodeAffinity { node: NodeId, soft: bool },
}

impl SchedulingStrategy {
    pub(crate) fn placement(&self) -> ferry_proto::msg::Placement {
        use ferry_proto::msg::Placement;
        match self {
            SchedulingStrategy::Default => Placement::Default,
            SchedulingStrategy::Spread => Placement::Spread,
            SchedulingStrategy::NodeAffinity { node, soft } => Placement::Node { node: *node, soft: *soft },
        }
    }
}

impl TaskOptions {
    fn shape(&self) -> ferry_proto::msg::Shape {
        ferry_proto::msg::Shape::with_resources(self.num_cpus, &self.resources)
    }
}

/// Builder methods shared by the `Options` type each `#[ferry::remote]` function gets.
pub trait RemoteOptions: Sized {
    #[doc(hidden)]
    fn task_options(&mut self) -> &mut TaskOptions;

    /// CPUs the task needs (fractions allowed; 0 for none).
    fn num_cpus(mut self, n: f64) -> Self {
        self.task_options().num_cpus = n;
        self
    }
    /// A custom resource the task needs.
    fn resource(mut self, name: &str, amount: f64) -> Self {
        self.task_options().resources.push((name.to_string(), amount));
        self
    }
    /// Retries if the worker running it dies.
    fn max_retries(mut self, n: u32) -> Self {
        self.task_options().max_retries = Some(n);
        self
    }
    /// The task's display name.
    fn name(mut self, name: &str) -> Self {
        self.task_options().name = Some(name.to_string());
        self
    }
    /// Which node runs the task.
    fn scheduling_strategy(mut self, s: SchedulingStrategy) -> Self {
        self.task_options().strategy = s;
        self
    }
    /// Also retry (up to `max_retries`) when the task panics; the final error says how many
    /// attempts were made.
    fn retry_exceptions(mut self, yes: bool) -> Self {
        self.task_options().retry_exceptions = yes;
        self
    }
}

/// Splits encoded arguments into drafts and the handles that keep ref arguments alive
/// until the task has counted them.
fn drafts(args: Vec<TaskArg>) -> Result<(Vec<ArgDraft>, Vec<RawRef>)> {
    let mut drafts = Vec::with_capacity(args.len());
    let mut held = Vec::new();
    for a in args {
        match a.0 {
            ArgInner::Value(v) => drafts.push(ArgDraft::Value(v)),
            ArgInner::Ref(raw) => {
                drafts.push(ArgDraft::Ref(raw.id));
                held.push(raw);
            }
            ArgInner::Failed(e) => return Err(e),
        }
    }
    Ok((drafts, held))
}

/// What this process's owner table did to recover, so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Task runs repeated: after a lost worker or node, a panic with `retry_exceptions`, or an
    /// argument that had to be made again.
    pub task_retries: u64,
    /// Objects made again from their lineage after every copy was lost.
    pub reconstructions: u64,
}

/// Retries and reconstructions of the tasks and objects this process owns.
pub fn recovery_stats() -> Result<RecoveryStats> {
    let (task_retries, reconstructions) = runtime()?.lock().recovery();
    Ok(RecoveryStats { task_retries, reconstructions })
}

/// The node this process runs on (for [`SchedulingStrategy::NodeAffinity`]).
pub fn node_id() -> Result<NodeId> {
    Ok(runtime()?.node_id)
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

/// Submits a task (used by the code `#[ferry::remote]` generates, after `begin_exports`).
#[doc(hidden)]
pub fn submit<R>(function: &'static str, opts: &TaskOptions, args: Vec<TaskArg>) -> ObjectRef<R> {
    let exported = actor::end_exports();
    let rt = match runtime() {
        // A ref with no entry: its `get` reports why the runtime is not there.
        Err(_) => return ObjectRef::from_id(ObjectId::default()),
        Ok(rt) => rt,
    };
    let (drafts, held) = match drafts(args) {
        Ok(x) => x,
        Err(e) => {
            actor::unexport(exported);
            return ObjectRef::from_id(rt.failed_object(e));
        }
    };
    let name: Arc<str> = match &opts.name {
        Some(n) => Arc::from(n.as_str()),
        None => Arc::from(function.rsplit("::").next().unwrap_or(function)),
    };
    let retries = opts.max_retries.unwrap_or(rt.cfg.default_max_retries);
    let class = (&opts.shape(), &opts.strategy.placement());
    let id = rt.submit(function, name, drafts, class, (retries, opts.retry_exceptions), exported);
    // The task now counts its arguments itself.
    drop(held);
    ObjectRef::from_id(id)
}

// ---------------------------------------------------------------------------------------
// get / put / wait / cancel

/// Decodes a ready value; the borrowed refs inside it are registered with their owners
/// before it is returned (the value's own hold on them may end at any time after).
fn decode_ready<T: DeserializeOwned + 'static>(rt: &'static Runtime, id: ObjectId, ready: Ready) -> Result<T> {
    let (v, new) = refs::decoding(|| decode_ready_raw(rt, id, ready));
    rt.register_decoded(new);
    v.map_err(|e| match e {
        Error::Serialization { detail } => Error::Serialization { detail: format!("object {id:?}: {detail}") },
        e => e,
    })
}

fn decode_ready_raw<T: DeserializeOwned + 'static>(rt: &Runtime, id: ObjectId, ready: Ready) -> Result<T> {
    match ready {
        Ready::Inline(b) => codec::decode_backed(&b, Backing::Inline(&b)),
        Ready::Stored { view: Some(view), .. } => codec::decode_backed(&view, Backing::Mapped(&view)),
        Ready::Stored { view: None, node, .. } => {
            let view = rt.map_from(id, node)?;
            rt.lock().cache_view(id, view.clone());
            codec::decode_backed(&view, Backing::Mapped(&view))
        }
    }
}

fn wait_ready(rt: &'static Runtime, id: ObjectId, timeout: Option<Duration>) -> Result<Ready> {
    let deadline = timeout.map(|d| Instant::now() + d);
    match rt.block_until(deadline, |w| rt.poll_object(id, w)) {
        Some(r) => r,
        None => Err(Error::Timeout { waited: timeout.unwrap_or_default() }),
    }
}

/// Waits for `id` and decodes it. An owned object whose every copy was lost (its node died)
/// is made again from its lineage, and waited for again.
fn get_value<T: DeserializeOwned + 'static>(
    rt: &'static Runtime,
    id: ObjectId,
    timeout: Option<Duration>,
) -> Result<T> {
    let deadline = timeout.map(|d| Instant::now() + d);
    let mut remade = 0;
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ready = wait_ready(rt, id, left)?;
        match decode_ready(rt, id, ready) {
            // Bounded: each round re-runs the task, which has retries of its own.
            Err(Error::ObjectLost { .. }) if id.owner() == rt.me && remade < 16 => {
                remade += 1;
                rt.with_state(|st, fx| st.reconstruct(id, fx))?;
            }
            // Borrowed: its owner makes it again (or says why it cannot).
            Err(e @ Error::ObjectLost { .. }) if remade < 16 => {
                remade += 1;
                if !rt.with_state(|st, fx| st.ask_remake(id, fx)) {
                    return Err(e);
                }
            }
            r => return r,
        }
    }
}

/// Waits for the object and returns its value.
pub fn get<T: DeserializeOwned + 'static>(r: &ObjectRef<T>) -> Result<T> {
    get_value(runtime()?, r.id(), None)
}

/// Like [`get`], giving up with [`Error::Timeout`] after `timeout`.
pub fn get_timeout<T: DeserializeOwned + 'static>(r: &ObjectRef<T>, timeout: Duration) -> Result<T> {
    get_value(runtime()?, r.id(), Some(timeout))
}

/// Gets every object, in order. The first error known is returned as soon as it is known (as
/// Ray's `get` does), without waiting for the other objects.
///
/// Waits once for the whole list: a cursor moves past ready objects and only the first one
/// still pending is watched, plus any failure among the objects this process knows of; so a
/// task waiting on thousands of refs gives its CPU back once, not once per ref, and the list
/// is scanned again only when some object failed.
pub fn get_all<T: DeserializeOwned + 'static>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let rt = runtime()?;
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.raw.id).collect();
    let mut w8 = owner::AllWait::default();
    let failed = rt.block_until(None, |w| rt.with_state(|st, fx| st.poll_all(&ids, &mut w8, w, fx)));
    rt.with_state(|st, _| st.end_all_wait(w8));
    if let Some(Some(id)) = failed {
        if let Some(r) = refs.iter().find(|r| r.raw.id == id) {
            get(r)?;
        }
    }
    refs.iter().map(get).collect()
}

/// Waits for a byte vector (`Vec<u8>` or [`Bytes`]) and returns a zero-copy view of it: a
/// slice of the shared-memory store, or of the owner's memory for small values.
pub fn get_bytes<T: bytes::ByteValue>(r: &ObjectRef<T>) -> Result<Bytes> {
    get_value::<Bytes>(runtime()?, r.id(), None)
}

/// Stores a value and returns an owned reference to it. Small values stay in this
/// process's memory; large ones go to the node's shared-memory store.
pub fn put<T: Serialize + 'static>(value: T) -> Result<ObjectRef<T>> {
    let rt = runtime()?;
    // Refs inside the value are pinned by the new object while it lives.
    let (enc, inner) = refs::encoding(refs::Mode::Put, || codec::encode(&value));
    let put = enc.and_then(|enc| rt.put_encoded(enc));
    if !inner.refs.is_empty() || !inner.actors.is_empty() {
        // Held by the new object while it lives (or let go at once if there is none).
        let outer = put.as_ref().copied().unwrap_or_default();
        rt.with_state(|st, fx| {
            st.set_contains(outer, inner.refs, fx);
            st.hold_actors_for(outer, inner.actors, fx);
        });
    }
    put.map(ObjectRef::from_id)
}

/// `(ready, not_ready)`, as [`wait`] returns them.
pub type WaitResult<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_ready` of `refs` are ready (a failed object counts as ready) or the
/// timeout passes, and returns `(ready, not_ready)`: at most `num_ready` refs in the first
/// list, every other ref in the second, each in the order given. The refs must be unique
/// ([`Error::InvalidArgument`] otherwise), as in Ray.
pub fn wait<T>(refs: &[ObjectRef<T>], num_ready: usize, timeout: Option<Duration>) -> Result<WaitResult<T>> {
    let rt = runtime()?;
    let mut seen = rustc_hash::FxHashSet::with_capacity_and_hasher(refs.len(), Default::default());
    if let Some(dup) = refs.iter().find(|r| !seen.insert(r.raw.id)) {
        return Err(Error::InvalidArgument {
            detail: format!(
                "ferry::wait needs unique refs: {:?} is in the list more than once (each ref counts once \
                 towards num_ready; deduplicate the list)",
                dup.raw.id
            ),
        });
    }
    let n = num_ready.min(refs.len());
    let deadline = timeout.map(|d| Instant::now() + d);
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.raw.id).collect();
    // On a timeout, what is ready then is returned.
    let _ = rt.block_until(deadline, |w| {
        rt.with_state(|st, fx| {
            if st.first_final(&ids, n).len() == n {
                return Poll::Ready(());
            }
            st.watch(&ids, w, fx);
            Poll::Pending
        })
    });
    // Split and take the new handles under one lock.
    let mut st = rt.lock();
    let found = st.first_final(&ids, n);
    let mut ready = Vec::with_capacity(found.len());
    let mut pending = Vec::with_capacity(refs.len() - found.len());
    let mut next = found.iter().peekable();
    for (i, id) in ids.iter().enumerate() {
        st.add_local_ref(*id);
        let handle = ObjectRef::from_id(*id);
        if next.peek() == Some(&&i) {
            next.next();
            ready.push(handle);
        } else {
            pending.push(handle);
        }
    }
    Ok((ready, pending))
}

/// Cancels the task that produces `r`: a task not yet started never runs; one already
/// running finishes but its result is dropped. Either way `get(r)` returns
/// [`Error::Cancelled`]. Cancelling a finished task or a `put` object does nothing.
pub fn cancel<T>(r: &ObjectRef<T>) -> Result<()> {
    let rt = runtime()?;
    let id = r.id();
    rt.with_state(|st, fx| st.cancel(id, fx));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// async

/// A future of an object's value: `ferry::get_async(&r).await` or `r.await`.
pub struct GetFuture<T> {
    id: ObjectId,
    _hold: Option<RawRef>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + 'static> Future for GetFuture<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return Poll::Ready(Err(e)),
        };
        match rt.poll_object(self.id, cx.waker()) {
            Poll::Ready(Ok(r)) => Poll::Ready(decode_ready(rt, self.id, r)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Waits for an object without blocking a thread.
pub fn get_async<T: DeserializeOwned + 'static>(r: &ObjectRef<T>) -> GetFuture<T> {
    GetFuture { id: r.id(), _hold: Some(r.raw.clone()), _t: PhantomData }
}

impl<T: DeserializeOwned + 'static> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = GetFuture<T>;
    fn into_future(self) -> GetFuture<T> {
        GetFuture { id: self.raw.id, _hold: Some(self.raw), _t: PhantomData }
    }
}

impl<T: DeserializeOwned + 'static> IntoFuture for &ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = GetFuture<T>;
    fn into_future(self) -> GetFuture<T> {
        get_async(self)
    }
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
    let rt = runtime()?;
    Ok(SessionInfo {
        node_addr: rt.node_addr.clone(),
        token: rt.token.clone(),
        store_dir: rt.store.path().to_path_buf(),
        session_dir: rt.session_dir.clone(),
        worker_pids: rt.worker_pids(),
        me: rt.me,
        listen: ferry_proto::Addr::Unix(runtime::peer_socket(&rt.session_dir, rt.me)),
    })
}

/// Private items for generated code.
#[doc(hidden)]
pub mod __private {
    pub use crate::actor::{begin_exports, create_actor};
    pub use crate::bytes::ArgData;
    pub use crate::registry::{
        await_catching, ActorClass, ActorInstance, ActorMethod, MethodFuture, ACTOR_CLASSES, ACTOR_METHODS,
    };
    pub use crate::registry::{check_arity, decode_arg, run_catching, RemoteFunction, REMOTE_FUNCTIONS};
    pub use crate::session::{set_embedder, Embedded, EmbeddedNode, Embedder};
    pub use ferry_proto::msg::{Return, TaskError};
    pub use linkme;
}
