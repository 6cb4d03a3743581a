//! The functions a worker can run: every `#[ferry::remote]` function of the binary, collected
//! at link time under a stable id (its module path and name).
//!
//! **Architecture Invariant:** a task names a registered id, never code; an id this binary
//! does not have is an `UnknownFunction` error for that task only.

use crate::bytes::ArgData;
use crate::codec::Backing;
use crate::error::Error;
use ferry_proto::msg::TaskError;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// One remote function, as the `#[ferry::remote]` macro registers it.
#[derive(Debug)]
pub struct RemoteFunction {
    /// Stable id: `module::path::name`.
    pub id: &'static str,
    /// Decodes the arguments, runs the function and stores its return value
    /// (see `executor::store_return`).
    pub invoke: fn(&[ArgData<'_>]) -> Result<crate::executor::Returned, TaskError>,
}

#[linkme::distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

/// An actor's instance as its worker holds it (the generated code knows the concrete type,
/// a lock around the user's type).
pub type ActorInstance = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// The future of an async actor method's result.
pub type MethodFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<crate::executor::Returned, TaskError>>>>;

/// Starts an async method: decodes the arguments and returns the call's future.
pub type StartMethod = fn(&ActorInstance, &[ArgData<'_>]) -> Result<MethodFuture, TaskError>;

/// An actor type, as `#[ferry::actor]` registers it.
#[derive(Debug)]
pub struct ActorClass {
    /// Stable id: `module::path::Type`.
    pub id: &'static str,
    /// It has async methods: its calls run on one event loop, interleaved at `.await`.
    pub is_async: bool,
    /// Decodes the constructor's arguments and builds the instance.
    pub construct: fn(&[ArgData<'_>]) -> Result<ActorInstance, TaskError>,
    /// Its `on_exit(&mut self)`, run when it ends on purpose (`exit_actor`, `terminate`).
    pub on_exit: Option<fn(&ActorInstance)>,
}

/// One method of an actor type.
#[derive(Debug)]
pub struct ActorMethod {
    /// Stable id: `module::path::Type::method`.
    pub id: &'static str,
    pub invoke: fn(&ActorInstance, &[ArgData<'_>]) -> Result<crate::executor::Returned, TaskError>,
    /// For `async fn` methods: decodes the arguments and returns the call's future.
    pub invoke_async: Option<StartMethod>,
}

#[linkme::distributed_slice]
pub static ACTOR_CLASSES: [ActorClass];

#[linkme::distributed_slice]
pub static ACTOR_METHODS: [ActorMethod];

/// Finds a registered actor type.
pub fn lookup_class(id: &str) -> Option<&'static ActorClass> {
    static TABLE: OnceLock<HashMap<&'static str, &'static ActorClass>> = OnceLock::new();
    TABLE.get_or_init(|| ACTOR_CLASSES.iter().map(|c| (c.id, c)).collect()).get(id).copied()
}

/// Finds a registered actor method.
pub fn lookup_method(id: &str) -> Option<&'static ActorMethod> {
    static TABLE: OnceLock<HashMap<&'static str, &'static ActorMethod>> = OnceLock::new();
    TABLE.get_or_init(|| ACTOR_METHODS.iter().map(|m| (m.id, m)).collect()).get(id).copied()
}

fn table() -> &'static HashMap<&'static str, &'static RemoteFunction> {
    static TABLE: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    TABLE.get_or_init(|| REMOTE_FUNCTIONS.iter().map(|f| (f.id, f)).collect())
}

/// Finds a registered function.
pub fn lookup(id: &str) -> Option<&'static RemoteFunction> {
    table().get(id).copied()
}

/// Decodes argument `index` of function `function` (used by generated code).
pub fn decode_arg<T: DeserializeOwned + 'static>(
    args: &[ArgData<'_>],
    index: usize,
    function: &str,
) -> Result<T, TaskError> {
    let bytes = args.get(index).ok_or_else(|| TaskError::BadArgument {
        function: function.to_string(),
        index,
        detail: format!("expected at least {} arguments, got {}", index + 1, args.len()),
    })?;
    let backing = match bytes.view {
        Some(v) => Backing::Mapped(v),
        None => Backing::None,
    };
    // Handles inside it are counted once it is decoded; borrowed refs among them are
    // registered with their owners at the end of the task (`Runtime::register_at_task_end`).
    let (v, made) = crate::refs::decoding(|| crate::codec::decode_backed(bytes.bytes, backing));
    if !made.refs.is_empty() || !made.actors.is_empty() {
        if let Some(rt) = crate::runtime::try_runtime() {
            rt.adopt(made);
        }
    }
    v.map_err(|e| TaskError::BadArgument {
        function: function.to_string(),
        index,
        detail: match e {
            Error::Serialization { detail } => detail,
            e => e.to_string(),
        },
    })
}

/// Checks the argument count (used by generated code).
pub fn check_arity(args: &[ArgData<'_>], n: usize, function: &str) -> Result<(), TaskError> {
    if args.len() != n {
        return Err(TaskError::BadArgument {
            function: function.to_string(),
            index: args.len().min(n),
            detail: format!("{function} takes {n} arguments, the task carried {}", args.len()),
        });
    }
    Ok(())
}

/// Awaits `f`, turning a panic into a `TaskError` with the panic's message (used by
/// generated code for async methods).
pub async fn await_catching<R>(
    function: &'static str,
    f: impl std::future::Future<Output = R>,
) -> Result<R, TaskError> {
    use futures_util::FutureExt;
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|p| TaskError::Panicked { function: function.to_string(), message: panic_message(&*p) })
}

/// Runs `f`, turning a panic into a `TaskError` with the panic's message.
pub fn run_catching<R>(function: &str, f: impl FnOnce() -> R) -> Result<R, TaskError> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|p| TaskError::Panicked { function: function.to_string(), message: panic_message(&*p) })
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
