//! Tasks from the caller's side: arguments (a value, or a ref resolved before the task
//! runs), options (resources, retries, placement), and submission to the owner table.

use crate::actor;
use crate::bytes::Bytes;
use crate::codec;
use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, RawRef};
use crate::owner::{ArgDraft, Rets};
use crate::refs;
use crate::runtime::{runtime, Runtime};
use crate::{Actor, ActorHandle, NodeId};
pub use ferry_proto::Priority;
use ferry_proto::{ObjectId, TaskId};
use serde::Serialize;
use std::sync::Arc;

enum ArgInner {
    Value(Vec<u8>),
    Ref(RawRef),
    Failed(Error),
}

/// A task argument: a value, or a reference whose value the task receives.
pub struct TaskArg(ArgInner);

/// What may be passed where a remote function takes a `T`: a `T`, or an
/// `ObjectRef<T>` (by value or by reference), resolved to its value before the task runs.
#[diagnostic::on_unimplemented(
    message = "a `{Self}` cannot be passed where the remote function or method takes `{T}`",
    label = "expected `{T}`, or an `ObjectRef<{T}>` (by value or by reference)",
    note = "the parameter it is passed for is shown below"
)]
pub trait IntoArg<T> {
    fn into_arg(self) -> TaskArg;
}

impl<T: Serialize + 'static> IntoArg<T> for T {
    fn into_arg(self) -> TaskArg {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return TaskArg(ArgInner::Failed(e)),
        };
        let (enc, found) = refs::encoding(rt.addrs(), || codec::encode(&self));
        // Refs and handles inside the value: the task holds them until it is over (taken
        // now, before the value and its handles go).
        if !found.is_empty() && refs::args_open() {
            refs::add_args(rt.with_state(|st, _| st.hold_exports(found.refs, found.actors, true)));
        }
        match enc {
            Ok(enc) if rt.travels_inline(enc.len()) => TaskArg(ArgInner::Value(enc.into_vec())),
            // Large values go through the store, as if `put` first.
            Ok(enc) => match rt.put_encoded(enc) {
                Ok(id) => TaskArg(ArgInner::Ref(ObjectRef::<T>::from_id(id).into_raw())),
                Err(e) => TaskArg(ArgInner::Failed(e)),
            },
            Err(e) => TaskArg(ArgInner::Failed(e)),
        }
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> TaskArg {
        TaskArg(ArgInner::Ref(self.raw()))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> TaskArg {
        TaskArg(ArgInner::Ref(self.into_raw()))
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
        TaskArg(ArgInner::Ref(self.raw()))
    }
}
impl IntoArg<Bytes> for ObjectRef<Vec<u8>> {
    fn into_arg(self) -> TaskArg {
        TaskArg(ArgInner::Ref(self.into_raw()))
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
    /// Split the value into this many objects (`num_returns`; set by the generated
    /// `options().num_returns(n)` and `#[ferry::remote(num_returns = n)]`).
    #[doc(hidden)]
    pub num_returns: Option<u32>,
    /// For a streaming task: how many values it may make ahead of its consumer (set by the
    /// generated `options().backpressure(n)`; default [`DEFAULT_STREAM_WINDOW`]).
    #[doc(hidden)]
    pub backpressure: Option<u32>,
    /// How urgent it is (default [`Priority::Normal`]): real-time tasks go first at every
    /// queue and take CPUs from best-effort tasks at once.
    pub priority: Priority,
    /// Times the task may be preempted (reset: its worker killed for more urgent work or to
    /// free memory) and run again, without charging a retry; once more fails it with
    /// [`Error::Preempted`](crate::Error::Preempted) or
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory). Default
    /// [`DEFAULT_MAX_PREEMPTIONS`].
    pub max_preemptions: Option<u32>,
}

/// How many times a task may be preempted by default (`TaskOptions::max_preemptions`).
pub const DEFAULT_MAX_PREEMPTIONS: u32 = 10;

/// How many values a streaming task may make ahead of its consumer by default.
pub const DEFAULT_STREAM_WINDOW: u32 = 64;

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            num_cpus: 1.0,
            resources: Vec::new(),
            max_retries: None,
            name: None,
            strategy: Default::default(),
            retry_exceptions: false,
            num_returns: None,
            backpressure: None,
            priority: Priority::Normal,
            max_preemptions: None,
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
    /// Inside bundle `bundle` of placement group `group` (any of its bundles if `None`),
    /// using the resources reserved there: set with `.placement_group(&pg, Some(i))`.
    PlacementGroup { group: u64, bundle: Option<u32> },
}

impl SchedulingStrategy {
    pub(crate) fn placement(&self) -> ferry_proto::msg::Placement {
        use ferry_proto::msg::Placement;
        match self {
            SchedulingStrategy::Default => Placement::Default,
            SchedulingStrategy::Spread => Placement::Spread,
            SchedulingStrategy::NodeAffinity { node, soft } => Placement::Node { node: *node, soft: *soft },
            // The bundle's renamed resources lead it to its node (see `shape`).
            SchedulingStrategy::PlacementGroup { .. } => Placement::Default,
        }
    }

    /// The resources asked for `num_cpus` and `resources` under this strategy: inside a
    /// placement group, those reserved for it.
    pub(crate) fn shape(&self, num_cpus: f64, resources: &[(String, f64)]) -> ferry_proto::msg::Shape {
        let plain = ferry_proto::msg::Shape::with_resources(num_cpus, resources);
        match self {
            SchedulingStrategy::PlacementGroup { group, bundle } => crate::groups::shape_in(&plain, *group, *bundle),
            _ => plain,
        }
    }
}

impl TaskOptions {
    fn shape(&self) -> ferry_proto::msg::Shape {
        self.strategy.shape(self.num_cpus, &self.resources)
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
    /// Runs the task inside bundle `bundle` of placement group `pg` (any of its bundles if
    /// `None`), on the resources reserved there; it waits until the group is placed.
    fn placement_group(mut self, pg: &crate::PlacementGroup, bundle: Option<u32>) -> Self {
        self.task_options().strategy = SchedulingStrategy::PlacementGroup { group: pg.id(), bundle };
        self
    }
    /// Also retry (up to `max_retries`) when the task panics; the final error says how many
    /// attempts were made.
    fn retry_exceptions(mut self, yes: bool) -> Self {
        self.task_options().retry_exceptions = yes;
        self
    }
    /// How urgent the task is: [`Priority::RealTime`] goes first at every queue and takes
    /// CPUs from [`Priority::BestEffort`] tasks at once (they are suspended, and go on
    /// where they stopped when the CPUs are free).
    fn priority(mut self, p: Priority) -> Self {
        self.task_options().priority = p;
        self
    }
    /// Times the task may be preempted and run again before it fails (see
    /// [`TaskOptions::max_preemptions`]).
    fn max_preemptions(mut self, n: u32) -> Self {
        self.task_options().max_preemptions = Some(n);
        self
    }
    /// Memory the task needs, in bytes: reserved on the node that runs it (the `memory`
    /// resource, which every node has as much of as its memory, less its object store).
    fn memory(mut self, bytes: u64) -> Self {
        self.task_options().resources.push((ferry_proto::MEMORY.to_string(), bytes as f64));
        self
    }
}

/// Splits encoded arguments into drafts and the handles that keep ref arguments alive
/// until the task has counted them.
pub(crate) fn drafts(args: Vec<TaskArg>) -> Result<(Vec<ArgDraft>, Vec<RawRef>)> {
    let mut drafts = Vec::with_capacity(args.len());
    let mut held = Vec::new();
    for a in args {
        match a.0 {
            ArgInner::Value(v) => drafts.push(ArgDraft::Value(v)),
            ArgInner::Ref(raw) => {
                drafts.push(ArgDraft::Ref(raw.id()));
                held.push(raw);
            }
            ArgInner::Failed(e) => return Err(e),
        }
    }
    Ok((drafts, held))
}

/// Submits a task (used by the code `#[ferry::remote]` generates, after `begin_exports`).
#[doc(hidden)]
pub fn submit<R>(function: &'static str, opts: &TaskOptions, args: Vec<TaskArg>) -> ObjectRef<R> {
    ObjectRef::from_id(submit_task(function, opts, args, Rets::split(opts.num_returns)).first())
}

/// Submits a task and returns the ids of its return objects (`opts.num_returns` of them,
/// else one), each with one handle for the caller to take with [`adopt_ref`] (used by
/// generated code).
#[doc(hidden)]
pub fn submit_returning(function: &'static str, opts: &TaskOptions, args: Vec<TaskArg>) -> Vec<ObjectId> {
    submit_task(function, opts, args, Rets::split(opts.num_returns)).all(opts.num_returns.unwrap_or(1))
}

/// Submits a streaming task (see [`crate::RefStream`]).
pub(crate) fn submit_streaming(function: &'static str, opts: &TaskOptions, args: Vec<TaskArg>) -> Submitted {
    submit_task(function, opts, args, Rets::Stream(opts.backpressure.unwrap_or(DEFAULT_STREAM_WINDOW)))
}

/// What a submission (a task, or an actor call) became: its return objects follow from it,
/// made only as the caller needs them (one, with no list, in the common case).
pub(crate) enum Submitted {
    Task(TaskId),
    /// It failed before a task existed (an argument would not encode).
    Failed(&'static Runtime, Error),
    /// No runtime: refs with no entry, whose `get` reports why.
    NoRuntime,
}

impl Submitted {
    /// The first return object (the only one unless the value is split).
    pub(crate) fn first(self) -> ObjectId {
        match self {
            Submitted::Task(task) => ObjectId { task, index: 0 },
            Submitted::Failed(rt, e) => rt.failed_object(e),
            Submitted::NoRuntime => ObjectId::default(),
        }
    }

    /// All `n` return objects.
    pub(crate) fn all(self, n: u32) -> Vec<ObjectId> {
        match self {
            Submitted::Task(task) => (0..n).map(|index| ObjectId { task, index }).collect(),
            Submitted::Failed(rt, e) => (0..n).map(|_| rt.failed_object(e.clone())).collect(),
            Submitted::NoRuntime => vec![ObjectId::default(); n as usize],
        }
    }
}

fn submit_task(function: &'static str, opts: &TaskOptions, args: Vec<TaskArg>, rets: Rets) -> Submitted {
    let exported = refs::end_args();
    let rt = match runtime() {
        Err(_) => return Submitted::NoRuntime,
        Ok(rt) => rt,
    };
    let (drafts, held) = match drafts(args) {
        Ok(x) => x,
        Err(e) => {
            actor::unexport(exported);
            return Submitted::Failed(rt, e);
        }
    };
    let name: Arc<str> = match &opts.name {
        Some(n) => Arc::from(n.as_str()),
        None => default_name(function),
    };
    let retries = opts.max_retries.unwrap_or(rt.config().default_max_retries);
    let preemptions = opts.max_preemptions.unwrap_or(DEFAULT_MAX_PREEMPTIONS);
    let class = (&opts.shape(), &opts.strategy.placement(), opts.priority);
    let id = rt.submit(function, name, drafts, class, (retries, opts.retry_exceptions, preemptions), rets, exported);
    // The task now counts its arguments itself.
    drop(held);
    Submitted::Task(id.task)
}

/// The typed handle of a return object [`submit_returning`] made (used by generated code).
#[doc(hidden)]
pub fn adopt_ref<T>(id: ObjectId) -> ObjectRef<T> {
    ObjectRef::from_id(id)
}

/// A function's default task name (its last path segment), made once per function and
/// thread: a million tasks then share one allocation rather than hold one each.
fn default_name(function: &'static str) -> Arc<str> {
    thread_local! {
        static NAMES: std::cell::RefCell<std::collections::HashMap<&'static str, Arc<str>>> = Default::default();
    }
    NAMES.with(|n| {
        n.borrow_mut()
            .entry(function)
            .or_insert_with(|| Arc::from(function.rsplit("::").next().unwrap_or(function)))
            .clone()
    })
}
