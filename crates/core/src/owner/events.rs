//! Task events (`ferry list tasks`, the dashboard): the owner notes a task's submission, its
//! end (with where it ran) and what happens in between off the common path (a retry, a
//! wait for arguments, a hand-back), in a buffer it keeps; being pushed to a worker is not
//! noted (the worker says a task is running once it has run for a tick).
//!
//! On the task path a note is a 64-byte record, in the form it travels in, pushed into room
//! that is reused (what the task is goes by a number: the kinds of tasks are kept once
//! each, in `whats`), left unstamped: `Runtime::with_state` stamps the notes a change made
//! with one read of the clock. The runtime takes the notes every tick and sends the buffer
//! to its node as it is (`runtime::events`).

use super::*;
use ferry_proto::state::Extra;
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

/// One change of one task: a record as it travels (64 bytes, `ferry_proto::state::Record`),
/// so that the buffer of them is sent as it is. What few notes carry besides (a parent, an
/// error) goes in the owner's `extras`, by note number.
pub(crate) type Note = ferry_proto::state::Record;

/// A task whose note saying what it is was sent already (or never made).
pub(super) const NOT_NOTED: u64 = u64::MAX;

/// A kind of task as `Whats` tells kinds apart.
type KindKey = (usize, Arc<str>, u64, Option<u64>, bool);

/// The kinds of tasks this owner noted, each kept once.
#[derive(Debug, Default)]
pub(crate) struct Whats {
    pub list: Vec<NoteInfo>,
    /// By function (its registered id's address), name (its text: each submission may
    /// bring its own copy), job, actor and whether it creates the actor.
    ids: HashMap<KindKey, u32>,
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
            n.stamp(us);
        }
    }

    /// The notes since the last call and their extras, leaving `spare`'s room for the next
    /// ones; and what the kinds of tasks they name are.
    pub fn take_notes(&mut self, spare: (Vec<Note>, Vec<Extra>)) -> (Vec<Note>, Vec<Extra>, &[NoteInfo]) {
        // Tasks' places in the notes taken are no longer theirs.
        self.notes_gen = self.notes_gen.wrapping_add(1);
        let notes = std::mem::replace(&mut self.notes, spare.0);
        let extras = std::mem::replace(&mut self.note_extras, spare.1);
        (notes, extras, &self.whats.list)
    }

    /// The number of what task `t` is.
    fn what_of(&mut self, task: TaskId) -> Option<(u32, Option<TaskId>)> {
        let t = self.tasks.get(&task)?;
        let key = (t.function.as_ptr() as usize, t.name.clone(), t.job.id.0, t.actor.map(|a| a.0), t.create.is_some());
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
        let mut n = Note::new(task, state, t.attempts);
        n.set_where(node, worker);
        if let Some((what, parent)) = with_info.then(|| self.what_of(task)).flatten() {
            // Submitted now: stamped with the note.
            n.set_what(what, 0);
            let at = ((self.notes_gen as u64) << 32) | self.notes.len() as u64;
            if let Some(t) = self.tasks.get_mut(&task) {
                t.noted = at;
            }
            if parent.is_some() {
                self.note_extras.push(Extra { record: self.notes.len() as u32, parent, error: None });
            }
        }
        self.notes.push(n);
    }

    /// Notes that `t` (no longer in the table) finished, and when it ran if its worker said
    /// (`ran`: start and end): in the note that said what it is, if that is still here.
    pub(super) fn note_finished(&mut self, t: &TaskEntry, ran: Option<(u64, u64)>) {
        if !self.task_events {
            return;
        }
        let (gen, at) = ((t.noted >> 32) as u32, t.noted as u32 as usize);
        if let (Some((start, end)), true) = (ran, t.noted != NOT_NOTED && gen == self.notes_gen) {
            let (node, worker) = self.ran_at(t);
            if let Some(n) = self.notes.get_mut(at).filter(|n| n.task() == t.ret.task && n.attempt() == t.attempts) {
                n.set_state(Seen::Finished);
                n.set_where(node, worker);
                n.set_started_us(start);
                n.set_at_us(end);
                return;
            }
        }
        self.note_end(t, Seen::Finished, None);
        if let (Some((start, end)), Some(n)) = (ran, self.notes.last_mut()) {
            n.set_started_us(start);
            n.set_at_us(end);
        }
    }

    /// Where `t` ran, as far as this owner knows.
    fn ran_at(&self, t: &TaskEntry) -> (Option<NodeId>, Option<WorkerId>) {
        match t.state {
            TaskState::Pushed { lease, worker } => (self.leases.get(&lease).map(|l| l.node), Some(worker)),
            _ => (None, None),
        }
    }

    /// Notes how `t` (no longer in the table) ended.
    pub(super) fn note_end(&mut self, t: &TaskEntry, state: Seen, error: Option<&Error>) {
        if !self.task_events {
            return;
        }
        let (node, worker) = self.ran_at(t);
        let mut n = Note::new(t.ret.task, state, t.attempts);
        n.set_where(node, worker);
        if let Some(e) = error {
            self.note_extras.push(Extra { record: self.notes.len() as u32, parent: None, error: Some(e.to_string()) });
        }
        self.notes.push(n);
    }

    /// Notes that `task` waits for a worker again (ready, or back from one).
    pub(super) fn note_waiting(&mut self, task: TaskId, fx: &mut Effects) {
        self.note(task, Seen::WaitingForWorker, false, fx);
    }
}
