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

/// One change of one task: small (72 bytes), since a burst of a million tasks makes two
/// million; what few notes carry besides (a parent, an error) is boxed.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub task: TaskId,
    /// When (Unix microseconds; 0 until stamped).
    pub at_us: u64,
    /// Where it ran ([`Note::NONE`]: not known to this note).
    pub node: u64,
    pub worker: u64,
    /// When it started on its worker (from the worker; [`Note::NONE`]: not known).
    pub started_us: u64,
    pub attempt: u32,
    /// What it is (an index into the owner's `whats`): on its submission and on a retry
    /// ([`Note::NO_WHAT`] otherwise).
    pub what: u32,
    pub state: Seen,
    pub extra: Option<Box<NoteExtra>>,
}

/// The task that submitted a task (on its submission), and why a task failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct NoteExtra {
    pub parent: Option<TaskId>,
    pub error: Option<Box<str>>,
}

impl Note {
    pub const NONE: u64 = u64::MAX;
    pub const NO_WHAT: u32 = u32::MAX;

    /// A note of `task` in `state`, with nothing else known yet.
    pub fn new(task: TaskId, state: Seen, attempt: u32) -> Note {
        Note {
            task,
            at_us: 0,
            node: Note::NONE,
            worker: Note::NONE,
            started_us: Note::NONE,
            attempt,
            what: Note::NO_WHAT,
            state,
            extra: None,
        }
    }

    fn at(mut self, node: Option<NodeId>, worker: Option<WorkerId>) -> Note {
        self.node = node.map_or(Note::NONE, |n| n.0);
        self.worker = worker.map_or(Note::NONE, |w| w.0);
        self
    }
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
        let mut n = Note::new(task, state, t.attempts).at(node, worker);
        if let Some((what, parent)) = with_info.then(|| self.what_of(task)).flatten() {
            n.what = what;
            if parent.is_some() {
                n.extra = Some(Box::new(NoteExtra { parent, error: None }));
            }
        }
        self.notes.push(n);
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
        let mut n = Note::new(t.ret.task, state, t.attempts).at(node, worker);
        if let Some(e) = error {
            n.extra = Some(Box::new(NoteExtra { parent: None, error: Some(e.to_string().into_boxed_str()) }));
        }
        self.notes.push(n);
    }

    /// Notes that `task` waits for a worker again (ready, or back from one).
    pub(super) fn note_waiting(&mut self, task: TaskId, fx: &mut Effects) {
        self.note(task, Seen::WaitingForWorker, false, fx);
    }
}
