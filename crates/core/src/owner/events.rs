//! Task events (`ferry list tasks`, the dashboard): the owner notes each change of a task it
//! submitted in a buffer it keeps (no allocation on the task path: the buffer's room is
//! reused, a note is a small struct, the time is the one the runtime set when it took the
//! lock). The runtime takes the notes every tick, folds each task's into one event, and
//! sends them to its node in one message, off the task path (`runtime::events`).

use super::*;
use ferry_proto::state::TaskState as Seen;

/// What a task is, noted when it is submitted (and again on a retry).
#[derive(Debug, Clone)]
pub(crate) struct NoteInfo {
    pub function: &'static str,
    pub name: Arc<str>,
    pub job: WorkerId,
    pub parent: Option<TaskId>,
    pub actor: Option<ActorId>,
    pub creation: bool,
}

/// One change of one task.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub task: TaskId,
    pub state: Seen,
    pub attempt: u32,
    pub at_us: u64,
    pub node: Option<NodeId>,
    pub worker: Option<WorkerId>,
    pub info: Option<NoteInfo>,
    pub error: Option<String>,
    /// When it started on its worker (from the worker).
    pub started_us: Option<u64>,
}

impl OwnerState {
    /// Whether this process records task events (`Config::task_events`).
    pub fn set_task_events(&mut self, on: bool) {
        self.task_events = on;
    }

    /// The time changes from now on happen at (Unix microseconds; set by the runtime).
    pub fn set_now_us(&mut self, us: u64) {
        self.now_us = us;
    }

    /// The notes since the last call, leaving `spare`'s room for the next ones.
    pub fn take_notes(&mut self, spare: Vec<Note>) -> Vec<Note> {
        std::mem::replace(&mut self.notes, spare)
    }

    /// Notes that `task` is now `state` (with what it is, on its submission or a retry).
    pub(super) fn note(&mut self, task: TaskId, state: Seen, with_info: bool, _fx: &mut Effects) {
        if !self.task_events {
            return;
        }
        let Some(t) = self.tasks.get(&task) else { return };
        let (node, worker) = match t.state {
            TaskState::Pushed { lease, worker } => (self.leases.get(&lease).map(|l| l.node), Some(worker)),
            _ => (None, None),
        };
        let info = with_info.then(|| NoteInfo {
            function: t.function,
            name: t.name.clone(),
            job: t.job.id,
            parent: t.parent,
            actor: t.actor,
            creation: t.create.is_some(),
        });
        let attempt = t.attempts;
        self.notes.push(Note {
            task,
            state,
            attempt,
            at_us: self.now_us,
            node,
            worker,
            info,
            error: None,
            started_us: None,
        });
    }

    /// Notes how `t` (no longer in the table) ended.
    pub(super) fn note_end(&mut self, t: &TaskEntry, state: Seen, error: Option<&Error>, _fx: &mut Effects) {
        if !self.task_events {
            return;
        }
        let worker = match t.state {
            TaskState::Pushed { worker, .. } => Some(worker),
            _ => None,
        };
        self.notes.push(Note {
            task: t.ret.task,
            state,
            attempt: t.attempts,
            at_us: self.now_us,
            node: None,
            worker,
            info: None,
            error: error.map(|e| e.to_string()),
            started_us: None,
        });
    }

    /// Notes that `task` waits for a worker again (ready, or back from one).
    pub(super) fn note_waiting(&mut self, task: TaskId, fx: &mut Effects) {
        self.note(task, Seen::WaitingForWorker, false, fx);
    }
}
