//! `runtime_context()`: who and where the calling code is, as Ray's `get_runtime_context()`
//! tells it: the job, the node and process, the task or actor it runs for, which attempt of
//! the task this is, whether the actor was restarted, and what the task holds.

use crate::error::Result;
use crate::runtime::runtime;
use ferry_proto::{ActorId, NodeId, Shape, TaskId, WorkerId};

/// What [`runtime_context`] returns (serialisable: a task may return it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeContext {
    /// The job: named by its driver's process (each task and actor inherits its
    /// submitter's job; a driver is its own).
    pub job_id: WorkerId,
    /// The namespace names are registered and found in: the job's (`Config::namespace`),
    /// else its own anonymous one.
    pub namespace: String,
    /// The node this process runs on.
    pub node_id: NodeId,
    /// This process (a driver or a worker).
    pub worker_id: WorkerId,
    /// The task running on this thread, if any (an actor method's call is a task too).
    pub task_id: Option<TaskId>,
    /// The actor this process hosts, if it is an actor's.
    pub actor_id: Option<ActorId>,
    /// How many runs of this task came before this one and failed or were lost (0 on the
    /// first run): a task knows it is a retry.
    pub attempt: u32,
    /// The actor's process is a restart (its first process died).
    pub actor_restarted: bool,
    /// How many times the actor was restarted.
    pub actor_restarts: u32,
    /// What the running task holds (an actor's method: what the actor holds); empty outside
    /// a task.
    pub resources: Shape,
}

impl RuntimeContext {
    /// Whether this code runs in a driver (not in a task or an actor).
    pub fn is_driver(&self) -> bool {
        self.task_id.is_none() && self.actor_id.is_none()
    }
}

/// Who and where the calling code is (see [`RuntimeContext`]).
pub fn runtime_context() -> Result<RuntimeContext> {
    let rt = runtime()?;
    let running = crate::executor::running();
    let hosting = rt.hosting();
    let resources = match (&hosting, running) {
        (Some(h), _) => h.resources.clone(),
        (None, Some(_)) => crate::executor::running_resources().unwrap_or_default(),
        (None, None) => Shape::default(),
    };
    let incarnation = hosting.as_ref().map_or(0, |h| h.incarnation);
    Ok(RuntimeContext {
        job_id: rt.job().id,
        namespace: rt.namespace(),
        node_id: rt.node_id(),
        worker_id: rt.me(),
        task_id: running.map(|r| r.task),
        actor_id: hosting.as_ref().map(|h| h.id),
        attempt: running.map_or(0, |r| r.attempt),
        actor_restarted: incarnation > 1,
        actor_restarts: incarnation.saturating_sub(1),
        resources,
    })
}
