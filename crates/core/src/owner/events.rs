//! Task events (`ferry list tasks`, the dashboard): the owner notes a task's submission, its
//! end (with where it ran) and what happens in between off the common path (a retry, a
//! wait for arguments, a hand-back), in a buffer it keeps; being pushed to a worker is not
//! noted (the worker says a task is running once it has run for a tick).
//!
//! On the task path a note is a small struct pushed into room that is reused (what the task
//! is goes by a number: the kinds of tasks are kept once each, in `whats`), left unstamped:
//! `Runtime::with_state` stamps the notes a change made with one read of the clock, taken
//! before the lock. The runtime takes the notes every tick and sends them to its node
//! (`runtime::events`).

use super::*;
use ferry_proto::state::TaskState as Seen;
use rustc_hash::FxHashMap as HashMap;

/// What a task is, noted when it is submitted (and again on a retry).
#[derive(Debug, Clone)]
pub(crate) struct NoteInfo {
    pub function: &'static str,
    pub name: Arc<str>,
    pub job: WorkerId,
    pub actor: Option<ActorId>,
    pub creation: bool,
}

/// One change of one task.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub task: TaskId,
    pub state: Seen,
    pub attempt: u32,
    /// When (Unix microseconds; 0 until stamped).
    pub at_us: u64,
    pub node: Option<NodeId>,
    pub worker: Option<WorkerId>,
    /// What it is (an index into the owner's `whats`), and the task that submitted it: on
    /// its submission and on a retry.
    pub what: Option<u32>,
    pub parent: Option<TaskId>,
    pub error: Option<Box<str>>,
    /// When it started on its worker (from the worker).
    pub started_us: Option<u64>,
}

/// The kinds of tasks this owner noted, each kept once.
#[derive(Debug, Default)]
pub(crate) struct Whats {
    pub list: Vec<NoteInfo>,
    ids: HashMap<(usize, usize, u64, Option<u64>, bool), u32>,
}

impl OwnerState {
    /// Whether this process records task events (`Config::task_events`).
    pub fn set_task_events(&mut self, on: bool) {
        self.task_events = on;
    }

    /// How many tasks this process has submitted and not seen end.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// How many notes are waiting (the runtime stamps those made after this).
    pub fn notes_len(&self) -> usize {
        self.notes.len()
    }

    /// Stamps the notes from `from` on with `us`.
    pub fn stamp_notes(&mut self, from: usize, us: u64) {
        for n in self.notes.get_mut(from..).unwrap_or_default() {
            if n.at_us == 0 {
                n.at_us = us;
            }
        }
    }

    /// The notes since the last call, leaving `spare`'s room for the next ones; and what
    /// the kinds of tasks they name are.
    pub fn take_notes(&mut self, spare: Vec<Note>) -> (Vec<Note>, &[NoteInfo]) {
        (std::mem::replace(&mut self.notes, spare), &self.whats.list)
    }

    /// The number of what task `t` is.
    fn what_of(&mut self, task: TaskId) -> Option<(u32, Option<TaskId>)> {
        let t = self.tasks.get(&task)?;
        let key = (
            t.function.as_ptr() as usize,
            Arc::as_ptr(&t.name) as *const u8 as usize,
            t.job.id.0,
            t.actor.map(|a| a.0),
            t.create.is_some(),
        );
        let parent = t.parent;
        if let Some(i) = self.whats.ids.get(&key) {
            return Some((*i, parent));
        }
        let info = NoteInfo {
            function: t.function,
            name: t.name.clone(),
            job: t.job.id,
            actor: t.actor,
            creation: t.create.is_some(),
        };
        let i = self.whats.list.len() as u32;
        self.whats.list.push(info);
        self.whats.ids.insert(key, i);
        Some((i, parent))
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
        let attempt = t.attempts;
        let (what, parent) = match with_info.then(|| self.what_of(task)).flatten() {
            Some((w, p)) => (Some(w), p),
            None => (None, None),
        };
        self.notes.push(Note {
            task,
            state,
            attempt,
            at_us: 0,
            node,
            worker,
            what,
            parent,
            error: None,
            started_us: None,
        });
    }

    /// Notes how `t` (no longer in the table) ended.
    pub(super) fn note_end(&mut self, t: &TaskEntry, state: Seen, error: Option<&Error>, _fx: &mut Effects) {
        if !self.task_events {
            return;
        }
        let (node, worker) = match t.state {
            TaskState::Pushed { lease, worker } => (self.leases.get(&lease).map(|l| l.node), Some(worker)),
            _ => (None, None),
        };
        self.notes.push(Note {
            task: t.ret.task,
            state,
            attempt: t.attempts,
            at_us: 0,
            node,
            worker,
            what: None,
            parent: None,
            error: error.map(|e| e.to_string().into_boxed_str()),
            started_us: None,
        });
    }

    /// Notes that `task` waits for a worker again (ready, or back from one).
    pub(super) fn note_waiting(&mut self, task: TaskId, fx: &mut Effects) {
        self.note(task, Seen::WaitingForWorker, false, fx);
    }
}
