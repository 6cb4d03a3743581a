//! Actors: a worker process bound to one instance of a user type, called through handles.
//!
//! `#[ferry::actor]` on a type and its `impl` block generates the type's proxy (`<Type>Proxy`,
//! whose methods mirror the actor's and return `ObjectRef`s), `Type::remote(..)` and
//! `Type::options()`. An [`ActorHandle<T>`] derefs to the proxy, so `handle.incr(5)` calls the
//! actor. Handles are `Clone` and serialisable: one passed to a task or another actor is
//! callable there, and calls go straight from the caller to the actor's worker.
//!
//! Lifetime: every process with a handle is a holder at the daemon; when none is left (and
//! the actor is not detached) it stops. A handle sent inside a task's arguments stays held by
//! the sender until the task is over, so the receiver has taken its own hold before the
//! sender lets go.

use crate::error::{Error, Result};
use crate::owner::{Exports, Rets};
use crate::runtime::{runtime, try_runtime};
use crate::{ObjectRef, TaskArg};
use ferry_proto::msg::{ActorId, ActorSpec, FromNode, HandleWire, ToNode};
use ferry_proto::ObjectId;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// A type whose instances run as actors (implemented by `#[ferry::actor]`).
pub trait Actor: Send + Sync + 'static {
    /// Registered id of the type: `module::path::Type`.
    const CLASS: &'static str;
    /// The generated type with the actor's methods.
    type Proxy: ActorProxy;
    /// The generated type with its methods that return a `Vec`, each split into refs
    /// (`method_options().num_returns(n)`).
    type Split: SplitProxy;
}

/// The generated split proxy of an actor type (implemented by `#[ferry::actor]`): its
/// `Vec`-returning methods, giving one ref per item.
pub trait SplitProxy: Send + Sync + 'static {
    #[doc(hidden)]
    fn from_raw(raw: RawActor, n: u32) -> Self;
}

/// The generated proxy of an actor type (implemented by `#[ferry::actor]`).
pub trait ActorProxy: Clone + Send + Sync + 'static {
    #[doc(hidden)]
    fn from_raw(raw: RawActor) -> Self;
    #[doc(hidden)]
    fn raw(&self) -> &RawActor;
}

/// An untyped handle: keeps this process a holder of the actor while it exists.
pub struct RawActor {
    id: ActorId,
    label: Arc<str>,
    /// The name its calls are given (`method_options().name(..)`), instead of the method's.
    call_name: Option<Arc<str>>,
}

impl RawActor {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.id
    }

    /// Calls method `method` (used by generated code).
    #[doc(hidden)]
    pub fn call<R>(&self, method: &'static str, name: &'static str, args: Vec<TaskArg>) -> ObjectRef<R> {
        ObjectRef::from_id(self.submit_call(method, name, args, Rets::One).first())
    }

    /// Calls method `method`, whose value is split into `n` objects (`num_returns`); their
    /// ids, each with one handle for the caller to take (used by generated code).
    #[doc(hidden)]
    pub fn call_returning(
        &self,
        method: &'static str,
        name: &'static str,
        args: Vec<TaskArg>,
        returns: Option<u32>,
    ) -> Vec<ObjectId> {
        self.submit_call(method, name, args, Rets::split(returns)).all(returns.unwrap_or(1))
    }

    /// Calls streaming method `method` (used by generated code): its values as they come.
    #[doc(hidden)]
    pub fn call_stream<R>(
        &self,
        method: &'static str,
        name: &'static str,
        args: Vec<TaskArg>,
        window: Option<u32>,
    ) -> crate::RefStream<R> {
        let window = window.unwrap_or(crate::task::DEFAULT_STREAM_WINDOW);
        crate::RefStream::of(self.submit_call(method, name, args, Rets::Stream(window)))
    }

    fn submit_call(
        &self,
        method: &'static str,
        name: &'static str,
        args: Vec<TaskArg>,
        returns: Rets,
    ) -> crate::task::Submitted {
        use crate::task::Submitted;
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(_) => return Submitted::NoRuntime,
        };
        let exported = crate::refs::end_args();
        let (drafts, held) = match crate::task::drafts(args) {
            Ok(x) => x,
            Err(e) => {
                unexport(exported);
                return Submitted::Failed(rt, e);
            }
        };
        let job = rt.job();
        let name = self.call_name.clone().unwrap_or_else(|| Arc::from(name));
        let id = rt.with_state(|st, fx| st.submit_call(self.id, method, name, drafts, (returns, job), exported, fx));
        drop(held);
        Submitted::Task(id.task)
    }

    /// A new handle in this process for an actor known by id (from a name, or decoded
    /// outside ferry's own decoding), counted at once.
    fn attach(id: ActorId, label: &str) -> RawActor {
        if let Some(rt) = try_runtime() {
            rt.hold_actor_handle(id, label);
        }
        RawActor { id, label: Arc::from(label), call_name: None }
    }
}

impl Clone for RawActor {
    fn clone(&self) -> Self {
        if let Some(rt) = try_runtime() {
            rt.lock().actor_attach(self.id, &self.label);
        }
        RawActor { id: self.id, label: self.label.clone(), call_name: self.call_name.clone() }
    }
}

impl Drop for RawActor {
    fn drop(&mut self) {
        if crate::refs::actor_dropped_while_decoding(self.id) {
            return;
        }
        if let Some(rt) = try_runtime() {
            let id = self.id;
            rt.with_state(|st, fx| st.actor_handle_dropped(id, fx));
        }
    }
}

impl std::fmt::Debug for RawActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Actor({}, {:?})", self.label, self.id)
    }
}

/// A handle of an actor of type `T`. Deref to call its methods: `handle.incr(5)`.
pub struct ActorHandle<T: Actor> {
    proxy: T::Proxy,
}

impl<T: Actor> ActorHandle<T> {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.proxy.raw().id
    }

    /// Options for the next call made through what it returns (Ray's
    /// `actor.method.options(..)`): `h.method_options().name("warm-up").incr(1)`.
    pub fn method_options(&self) -> MethodOptions<T> {
        MethodOptions { proxy: T::Proxy::from_raw(self.proxy.raw().clone()) }
    }

    /// Ends the actor after the calls already sent to it through this process (Ray's
    /// `__ray_terminate__`): they run, its `on_exit` runs, and calls after it fail with
    /// [`Error::ActorDied`] saying it was terminated. It is not restarted. `ferry::kill`
    /// ends it at once instead.
    pub fn terminate(&self) {
        let raw = self.proxy.raw();
        drop(raw.call::<()>(crate::executor::TERMINATE, "terminate", Vec::new()));
    }
}

/// Per-call options of an actor's methods (see [`ActorHandle::method_options`]): set them,
/// then call a method on it as on the handle.
pub struct MethodOptions<T: Actor> {
    proxy: T::Proxy,
}

impl<T: Actor> MethodOptions<T> {
    /// The name the call goes by in errors and reports (default: the method's).
    pub fn name(self, name: &str) -> Self {
        let mut raw = self.proxy.raw().clone();
        raw.call_name = Some(Arc::from(name));
        MethodOptions { proxy: T::Proxy::from_raw(raw) }
    }

    /// Splits the `Vec` the called method returns into `n` refs, one per item (Ray's
    /// `num_returns`): only methods returning a `Vec` can be called on what it gives. The
    /// method must return exactly `n` items; otherwise every ref fails, saying so.
    pub fn num_returns(self, n: u32) -> SplitCall<T> {
        SplitCall { split: T::Split::from_raw(self.proxy.raw().clone(), n) }
    }
}

/// A call whose `Vec` result is split into refs (see [`MethodOptions::num_returns`]).
pub struct SplitCall<T: Actor> {
    split: T::Split,
}

impl<T: Actor> std::ops::Deref for SplitCall<T> {
    type Target = T::Split;
    fn deref(&self) -> &T::Split {
        &self.split
    }
}

impl<T: Actor> std::ops::Deref for MethodOptions<T> {
    type Target = T::Proxy;
    fn deref(&self) -> &T::Proxy {
        &self.proxy
    }
}

/// Ends the actor whose method calls it, once that method returns (Ray's `exit_actor`): the
/// method's result reaches its caller, the actor's `on_exit` runs, and the calls queued after
/// it fail with [`Error::ActorDied`] saying it exited on purpose. It is not restarted.
/// Outside an actor's method it is an error.
pub fn exit_actor() -> Result<()> {
    let ended = try_runtime()
        .and_then(|rt| rt.executor().cloned())
        .is_some_and(|x| x.exit_after_call("it exited on purpose (ferry::exit_actor)"));
    match ended {
        true => Ok(()),
        false => Err(Error::InvalidArgument {
            detail: "ferry::exit_actor ends the actor whose method calls it: call it inside an actor's method".into(),
        }),
    }
}

impl<T: Actor> std::ops::Deref for ActorHandle<T> {
    type Target = T::Proxy;
    fn deref(&self) -> &T::Proxy {
        &self.proxy
    }
}

impl<T: Actor> Clone for ActorHandle<T> {
    fn clone(&self) -> Self {
        ActorHandle { proxy: self.proxy.clone() }
    }
}

impl<T: Actor> std::fmt::Debug for ActorHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.proxy.raw().fmt(f)
    }
}

/// Starts collecting the actor handles and refs that get encoded on this thread (generated
/// code calls it before encoding a task's arguments).
#[doc(hidden)]
pub fn begin_exports() {
    crate::refs::begin_args();
}

/// Gives back the holds taken for exports that did not make it into a task.
pub(crate) fn unexport(exported: Exports) {
    if let Some(rt) = try_runtime() {
        rt.with_state(|st, fx| {
            for a in exported.actors {
                st.actor_handle_dropped(a, fx);
            }
            st.release_submitted(&exported.refs, fx);
        });
    }
}

impl<T: Actor> Serialize for ActorHandle<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let raw = self.proxy.raw();
        // Recorded: whoever encodes decides what holding it means (see `refs`).
        crate::refs::encoding_actor(raw.id, &raw.label);
        HandleWire { actor: raw.id, class: T::CLASS.to_string(), label: raw.label.to_string() }.serialize(s)
    }
}

impl<'de, T: Actor> Deserialize<'de> for ActorHandle<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = HandleWire::deserialize(d)?;
        if w.class != T::CLASS {
            return Err(D::Error::custom(format!("a handle of {} is not a handle of {}", w.class, T::CLASS)));
        }
        let raw = match crate::refs::decoded_actor(w.actor, &w.label) {
            // Counted once the decode is over.
            true => RawActor { id: w.actor, label: Arc::from(w.label.as_str()), call_name: None },
            false => RawActor::attach(w.actor, &w.label),
        };
        Ok(ActorHandle { proxy: T::Proxy::from_raw(raw) })
    }
}

/// Options of an actor; `Type::options()` starts from the defaults and `#[ferry::actor]`
/// attributes.
#[derive(Clone, Debug)]
pub struct ActorOptions {
    /// Registers the actor under this name, cluster-wide (see [`get_actor`]).
    pub name: Option<String>,
    /// Outlives its creator and its handles; stops only when killed.
    pub detached: bool,
    /// Times the actor is restarted (constructor re-run) after its process dies.
    pub max_restarts: u32,
    /// Times a call in flight when the process died is sent again to the restarted actor.
    pub max_task_retries: u32,
    /// Calls run at once (on threads; `&self` methods run together, `&mut self` ones alone).
    pub max_concurrency: u32,
    /// CPUs held for the actor's life (default 0, as in Ray: actors rarely need one reserved).
    pub num_cpus: f64,
    pub resources: Vec<(String, f64)>,
    /// Which node runs it (and runs it again after a restart).
    pub strategy: crate::SchedulingStrategy,
    /// How urgent it is (default `Normal`): a best-effort actor's worker runs at the lowest
    /// CPU priority and is suspended, as a best-effort task's, while real-time work needs
    /// the CPUs it holds; a real-time actor is placed before other work.
    pub priority: crate::Priority,
}

impl Default for ActorOptions {
    fn default() -> Self {
        ActorOptions {
            name: None,
            detached: false,
            max_restarts: 0,
            max_task_retries: 0,
            max_concurrency: 1,
            num_cpus: 0.0,
            resources: Vec::new(),
            strategy: crate::SchedulingStrategy::Default,
            priority: crate::Priority::Normal,
        }
    }
}

/// Builder methods of the options type each actor gets (`Type::options()`).
pub trait ActorOptionsBuilder: Sized {
    #[doc(hidden)]
    fn actor_options(&mut self) -> &mut ActorOptions;

    /// Registers the actor under `name`.
    fn name(mut self, name: &str) -> Self {
        self.actor_options().name = Some(name.to_string());
        self
    }
    /// The actor outlives its creator until killed.
    fn detached(mut self) -> Self {
        self.actor_options().detached = true;
        self
    }
    fn max_restarts(mut self, n: u32) -> Self {
        self.actor_options().max_restarts = n;
        self
    }
    fn max_task_retries(mut self, n: u32) -> Self {
        self.actor_options().max_task_retries = n;
        self
    }
    fn max_concurrency(mut self, n: u32) -> Self {
        self.actor_options().max_concurrency = n.max(1);
        self
    }
    fn num_cpus(mut self, n: f64) -> Self {
        self.actor_options().num_cpus = n;
        self
    }
    fn resource(mut self, name: &str, amount: f64) -> Self {
        self.actor_options().resources.push((name.to_string(), amount));
        self
    }
    /// Which node runs the actor: `Spread` over the nodes, or `NodeAffinity` (a hard one to a
    /// node that is dead or cannot fit it fails the creation, and a restart after that node
    /// dies; a soft one runs elsewhere then).
    fn scheduling_strategy(mut self, s: crate::SchedulingStrategy) -> Self {
        self.actor_options().strategy = s;
        self
    }
    /// Runs the actor inside bundle `bundle` of placement group `pg` (any if `None`).
    fn placement_group(mut self, pg: &crate::PlacementGroup, bundle: Option<u32>) -> Self {
        self.actor_options().strategy = crate::SchedulingStrategy::PlacementGroup { group: pg.id(), bundle };
        self
    }
    /// How urgent the actor is (see [`ActorOptions::priority`]).
    fn priority(mut self, p: crate::Priority) -> Self {
        self.actor_options().priority = p;
        self
    }
}

/// Creates an actor (used by generated code): returns its handle at once; the constructor
/// runs on a dedicated worker once its arguments are ready.
#[doc(hidden)]
pub fn create_actor<T: Actor>(opts: &ActorOptions, args: Vec<TaskArg>) -> Result<ActorHandle<T>> {
    let rt = runtime()?;
    let actor = rt.new_actor_id(opts.name.is_some() || opts.detached);
    let short = T::CLASS.rsplit("::").next().unwrap_or(T::CLASS);
    let label = match &opts.name {
        Some(n) => format!("{short}({n:?})"),
        None => short.to_string(),
    };
    let job = rt.job();
    // Names are one directory per namespace (see `qualified`).
    let key = opts.name.as_ref().map(|n| qualified(&rt.namespace(), n));
    if let (Some(name), Some(key)) = (&opts.name, &key) {
        let home = rt.actor_home(actor);
        match rt.call_at(&home, |req| ToNode::ReserveName { req, name: key.clone(), actor, class: T::CLASS.into() })? {
            FromNode::Ack { error: None, .. } => {}
            FromNode::Ack { error: Some(_), .. } => return Err(Error::ActorNameTaken { name: name.clone() }),
            other => return Err(Error::Connection { detail: format!("unexpected reply {other:?}") }),
        }
    }
    let exported = crate::refs::end_args();
    let (drafts, held) = match crate::task::drafts(args) {
        Ok(x) => x,
        Err(e) => {
            unexport(exported);
            return Err(e);
        }
    };
    let shape = opts.strategy.shape(opts.num_cpus, &opts.resources);
    let depth = rt.lock().depth();
    let spec = ActorSpec {
        class: T::CLASS.to_string(),
        args: Vec::new(),
        shape,
        name: key,
        detached: opts.detached,
        max_restarts: opts.max_restarts,
        max_concurrency: opts.max_concurrency.max(1),
        depth,
        placement: opts.strategy.placement(),
        job: job.id,
        namespace: job.namespace.as_deref().map(String::from),
        priority: opts.priority,
    };
    rt.with_state(|st, fx| st.create_actor(actor, T::CLASS, &label, drafts, exported, spec, opts.max_task_retries, fx));
    drop(held);
    Ok(ActorHandle {
        proxy: T::Proxy::from_raw(RawActor { id: actor, label: Arc::from(label.as_str()), call_name: None }),
    })
}

/// A name as the directory keys it: within its namespace (a separator no name or namespace
/// contains, so `("a/b", "c")` and `("a", "b/c")` stay apart).
fn qualified(namespace: &str, name: &str) -> String {
    format!("{namespace}\u{1f}{name}")
}

/// The actor registered under `name` in this job's namespace (`Config::namespace`, else the
/// job's anonymous one), as a `T`.
pub fn get_actor<T: Actor>(name: &str) -> Result<ActorHandle<T>> {
    let rt = runtime()?;
    get_actor_in(name, &rt.namespace())
}

/// The actor registered under `name` in `namespace` (another job's, say), as a `T`.
pub fn get_actor_in<T: Actor>(name: &str, namespace: &str) -> Result<ActorHandle<T>> {
    let rt = runtime()?;
    let key = qualified(namespace, name);
    // The control store may be restarting: its link closing under a call is retried, once it
    // is back (`control_conn` waits for it, bounded).
    let mut tries = 0;
    let answer = loop {
        let control = rt.control_conn()?;
        match rt.call_at(&control, |req| ToNode::GetNamedActor { req, name: key.clone() }) {
            Err(Error::Connection { .. }) if tries < 3 => tries += 1,
            r => break r?,
        }
    };
    match answer {
        FromNode::NamedActor { found: None, .. } => Err(Error::ActorNotFound { name: name.to_string() }),
        FromNode::NamedActor { found: Some((actor, class)), .. } => {
            if class != T::CLASS {
                return Err(Error::ActorTypeMismatch {
                    name: name.to_string(),
                    expected: T::CLASS.to_string(),
                    found: class,
                });
            }
            let short = T::CLASS.rsplit("::").next().unwrap_or(T::CLASS);
            let raw = RawActor::attach(actor, &format!("{short}({name:?})"));
            Ok(ActorHandle { proxy: T::Proxy::from_raw(raw) })
        }
        other => Err(Error::Connection { detail: format!("unexpected reply {other:?}") }),
    }
}

/// Stops the actor at once, without restart: calls pending or made later fail with
/// [`Error::ActorDied`].
pub fn kill<T: Actor>(handle: &ActorHandle<T>) -> Result<()> {
    let rt = runtime()?;
    let _ = rt.actor_home(handle.id()).send(&ToNode::KillActor { actor: handle.id() });
    Ok(())
}
