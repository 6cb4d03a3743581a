//! The error every ferry call returns (`ferry::Error`), and the one a failed object carries
//! from its owner to every borrower (`ObjectAnswer::Failed`): one type, so that a failure
//! reaches a process on another node exactly as its owner saw it, under
//! [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) like every message. Each variant says what
//! happened and what to do.

use crate::msg::TaskError;
use ferry_types::{ObjectId, WorkerId};
use std::fmt;
use std::time::Duration;

/// Why a ferry call or a task produced no value.
///
/// An error of a task reaches the `get` of its returns and, unchanged, the `get` of every
/// task downstream that took those returns as arguments.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
#[non_exhaustive]
pub enum Error {
    /// The task's function panicked; `message` is the panic's message.
    TaskPanicked { task: String, message: String },
    /// The worker running the task died and no retries were left.
    WorkerDied { task: String, detail: String },
    /// The object cannot be retrieved any more.
    ObjectLost { object: ObjectId, reason: String },
    /// The object's value was deleted with `ferry::free`, by process `by`.
    ObjectFreed { object: ObjectId, by: WorkerId },
    /// The process that owns the object (the one that created it) died, and with it the
    /// object's metadata: the object cannot be resolved any more.
    OwnerDied { object: ObjectId, detail: String },
    /// A value did not encode or decode: a value postcard cannot represent (its serde message
    /// says which), or bytes made from another type (a driver and workers built from different
    /// code). The detail names the value (task argument, return, object) and the cause.
    Serialization { detail: String },
    /// `get` or `wait` gave up after the caller's timeout; the task goes on.
    Timeout { waited: Duration },
    /// The task was cancelled before it produced a value.
    Cancelled { task: String },
    /// No node can ever provide the resources the task asks for.
    Infeasible { task: String, detail: String },
    /// The worker's binary has no function with this id (driver and worker binaries differ).
    UnknownFunction { function: String },
    /// The object store is full.
    ObjectStoreFull { detail: String },
    /// The runtime is not running (never started, failed to start, or shut down).
    NotRunning { detail: String },
    /// The actor is gone (killed, every handle dropped, or its process died with no restarts
    /// left); calls to it fail with this.
    ActorDied { actor: String, reason: String },
    /// No actor has this name.
    ActorNotFound { name: String },
    /// The named actor is of another type than the one asked for.
    ActorTypeMismatch { name: String, expected: String, found: String },
    /// An actor with this name exists already.
    ActorNameTaken { name: String },
    /// `init` was called twice in one process.
    AlreadyInitialized,
    /// Starting or reaching the cluster failed.
    Connection { detail: String },
    /// A call was given something it cannot take (the detail says what, and what to give).
    InvalidArgument { detail: String },
    /// The task was preempted (its worker reset for real-time work) more times than its
    /// `max_preemptions` allow.
    Preempted { task: String, times: u32, detail: String },
    /// The task's node ran short of memory while it ran, and the task was preempted to free
    /// it more times than its `max_preemptions` allow. `detail` names the node's memory
    /// use and the task's.
    OutOfMemory { task: String, node: String, detail: String },
    /// The actor is alive (its node says so) but this process could not reach it (as Ray's
    /// `ActorUnavailableError`). `detail` says whether the call was sent (it may have run) or
    /// not (calling again is safe).
    ActorUnavailable { actor: String, detail: String },
}

impl Error {
    /// The error of the task `name` whose worker reported `e`.
    pub fn from_task(name: &str, e: TaskError) -> Error {
        match e {
            TaskError::Panicked { message, .. } => Error::TaskPanicked { task: name.to_string(), message },
            TaskError::UnknownFunction { function } => Error::UnknownFunction { function },
            TaskError::BadArgument { index, detail, .. } => {
                Error::Serialization { detail: format!("argument {index} of task {name}: {detail}") }
            }
            TaskError::BadReturn { detail, .. } => {
                Error::Serialization { detail: format!("the return value of task {name}: {detail}") }
            }
            TaskError::ReturnNotStored { detail, store_full: true, .. } => {
                Error::ObjectStoreFull { detail: format!("the return value of task {name} was not stored: {detail}") }
            }
            TaskError::ReturnNotStored { detail, store_full: false, .. } => Error::Connection {
                detail: format!("the return value of task {name} was not stored: its worker lost its node ({detail})"),
            },
            TaskError::ArgumentUnavailable { detail, .. } => Error::ObjectLost {
                object: ObjectId::default(),
                reason: format!("an argument of {name} could not be read: {detail}"),
            },
            TaskError::Cancelled => Error::Cancelled { task: name.to_string() },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TaskPanicked { task, message } => write!(f, "task {task} panicked: {message}"),
            Error::WorkerDied { task, detail } => write!(
                f,
                "the worker running task {task} died ({detail}) and no retries were left; \
                 raise max_retries if the task is idempotent"
            ),
            Error::ObjectLost { object, reason } => write!(f, "object {object:?} is lost: {reason}"),
            Error::ObjectFreed { object, by } => write!(
                f,
                "object {object:?} was freed with ferry::free (by process {by:?}): its value is gone for good; \
                 free only objects nobody will get again"
            ),
            Error::OwnerDied { object, detail } => write!(
                f,
                "the owner of object {object:?} died ({detail}); objects die with the process that created \
                 them, so create long-lived objects in the driver or in a long-lived actor"
            ),
            Error::Serialization { detail } => write!(f, "serialization failed: {detail}"),
            Error::Timeout { waited } => {
                write!(f, "timed out after {waited:?}; the task goes on, call get again to keep waiting")
            }
            Error::Cancelled { task } => write!(f, "task {task} was cancelled"),
            Error::Infeasible { task, detail } => write!(
                f,
                "task {task} can never be scheduled: {detail}; lower its resource request or add them \
                 to the cluster (Config::resource / num_cpus)"
            ),
            Error::UnknownFunction { function } => {
                write!(f, "the worker has no remote function {function:?}; driver and workers must run the same binary")
            }
            Error::ObjectStoreFull { detail } => write!(f, "{detail}"),
            Error::NotRunning { detail } => write!(f, "ferry is not running: {detail}"),
            Error::ActorDied { actor, reason } => write!(
                f,
                "actor {actor} is dead: {reason}; create a new one, or give it max_restarts to have it restarted"
            ),
            Error::ActorNotFound { name } => {
                write!(f, "no actor is named {name:?}; check the name, or create it with .name({name:?})")
            }
            Error::ActorTypeMismatch { name, expected, found } => {
                write!(f, "actor {name:?} is a {found}, not a {expected}; ask for its own type")
            }
            Error::ActorNameTaken { name } => {
                write!(f, "an actor named {name:?} already exists; pick another name or get it with ferry::get_actor")
            }
            Error::AlreadyInitialized => {
                write!(f, "ferry::init was already called in this process; call it once, at start")
            }
            Error::Connection { detail } => write!(f, "cannot reach the cluster: {detail}"),
            Error::InvalidArgument { detail } => write!(f, "{detail}"),
            Error::Preempted { task, times, detail } => write!(
                f,
                "task {task} was preempted {times} times for more urgent work ({detail}) and is not run again; \
                 raise its max_preemptions, give it a higher priority, or run it when the cluster is less busy"
            ),
            Error::OutOfMemory { task, node, detail } => write!(
                f,
                "task {task} was killed on node {node} to free memory ({detail}) too many times to run again; \
                 use less memory per task, reserve what it needs with .memory(bytes) so it is placed where \
                 there is room, or add memory to the node"
            ),
            Error::ActorUnavailable { actor, detail } => write!(
                f,
                "actor {actor} is alive but this process cannot reach it: {detail}; check that its process is \
                 not stopped or overloaded and that this host can reach its node"
            ),
        }
    }
}

impl std::error::Error for Error {}
