//! Task events leave the process here. The owner table notes its tasks' changes (see
//! `owner::events`); the executor notes a task that blocks, or that has run for a tick (a
//! shorter one's times go in its reply). Every tick the housekeeping thread takes both,
//! folds each task's notes into one fixed-size record (`EventBatch`), and sends them to the
//! node in bounded frames, off the task path; not while a burst of tasks is in flight,
//! unless the notes pile up. A buffer past its bound drops new notes and counts them: the
//! history says how many it never got.

use super::*;
use crate::owner::events::Note;
use ferry_proto::state::{EventBatch, TaskEvent, TaskState, What};
use ferry_proto::TaskId;

/// Notes from the executor, and room for the owner's next ones.
#[derive(Default)]
pub(crate) struct EventBuf {
    worker: Vec<Note>,
    spare: Vec<Note>,
    dropped: u64,
    /// The task this worker's main thread runs, since when, and whether its start was sent
    /// (a task that ends within a tick reports its times in its reply instead).
    running: Option<(TaskId, u32, u64, bool)>,
    /// The owner's kinds of tasks (`owner::events::Whats`), as far as taken.
    kinds: Vec<crate::owner::events::NoteInfo>,
}

/// A task running longer than this is said to be running before it ends.
const SAY_RUNNING_AFTER_US: u64 = 100_000;

/// Notes per `TaskEvents` frame (at most 512 KiB of records: a short task's two notes make
/// one record).
const EVENTS_PER_FRAME: usize = 8192;

/// A process with more tasks in flight than this is in a burst: its tick sends no events.
const BUSY_TASKS: usize = 1024;

/// Most notes the executor keeps between two ticks.
const MAX_BUFFERED: usize = 100_000;

/// Now, in Unix microseconds.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Runtime {
    /// Notes, from the worker running it, that `task` (attempt `attempt`) is now `state`.
    pub(crate) fn note_running(&self, task: TaskId, attempt: u32, state: TaskState) {
        if !self.cfg.task_events {
            return;
        }
        let mut n = Note::new(task, state, attempt);
        n.at_us = now_us();
        (n.node, n.worker) = (self.node_id.0, self.me.0);
        if state == TaskState::Running {
            n.started_us = n.at_us;
        }
        let mut b = self.events.locked();
        if b.worker.len() < MAX_BUFFERED {
            b.worker.push(n);
        } else {
            b.dropped += 1;
        }
    }

    /// A task starts on this worker: when (if task events are on).
    pub(crate) fn started(&self, task: TaskId, attempt: u32) -> Option<u64> {
        if !self.cfg.task_events {
            return None;
        }
        let now = now_us();
        self.events.locked().running = Some((task, attempt, now, false));
        Some(now)
    }

    /// The task it started has ended: when.
    pub(crate) fn ended(&self) -> u64 {
        self.events.locked().running = None;
        now_us()
    }

    /// Sends what was noted since the last call to the node now.
    pub(crate) fn flush_task_events(&self) {
        if !self.cfg.task_events {
            return;
        }
        self.send_task_events();
    }

    /// The housekeeping tick's send: put off while a burst of tasks is in flight (the send
    /// would take a core from the burst's workers), unless the notes pile up.
    pub(super) fn tick_task_events(&self) {
        if !self.cfg.task_events {
            return;
        }
        let (busy, piled) = {
            let st = self.state.locked();
            (st.tasks_in_flight() > BUSY_TASKS, st.notes_len() > MAX_BUFFERED / 2)
        };
        if !busy || piled {
            self.send_task_events();
        }
    }

    fn send_task_events(&self) {
        let (mut notes, worker, dropped) = {
            let mut b = self.events.locked();
            // A task running for a while is said to be running now.
            if let Some((task, attempt, since, said)) = &mut b.running {
                if !*said && now_us().saturating_sub(*since) >= SAY_RUNNING_AFTER_US {
                    *said = true;
                    let mut n = Note::new(*task, TaskState::Running, *attempt);
                    (n.at_us, n.started_us) = (*since, *since);
                    (n.node, n.worker) = (self.node_id.0, self.me.0);
                    b.worker.push(n);
                }
            }
            let spare = std::mem::take(&mut b.spare);
            let mut st = self.state.locked();
            let (owner, kinds) = st.take_notes(spare);
            // The kinds of tasks named so far (cloned only when new ones appeared).
            let have = b.kinds.len();
            if kinds.len() > have {
                b.kinds.extend_from_slice(&kinds[have..]);
            }
            drop(st);
            (owner, std::mem::take(&mut b.worker), std::mem::take(&mut b.dropped))
        };
        if notes.is_empty() && worker.is_empty() && dropped == 0 {
            self.events.locked().spare = notes;
            return;
        }
        let kinds = std::mem::take(&mut self.events.locked().kinds);
        let mut dropped = Some(dropped);
        // In frames of a bounded size: the link to the node also carries lease requests,
        // which must not wait behind megabytes of events.
        let now = now_us();
        for chunk in notes.chunks(EVENTS_PER_FRAME).chain(worker.chunks(EVENTS_PER_FRAME)) {
            let batch = pack(chunk, &kinds, now);
            let _ = self.node.send(&ToNode::TaskEvents { batch: batch.encode(), dropped: dropped.take().unwrap_or(0) });
        }
        if let Some(d) = dropped.filter(|d| *d > 0) {
            let _ = self.node.send(&ToNode::TaskEvents { batch: EventBatch::default().encode(), dropped: d });
        }
        notes.clear();
        let mut b = self.events.locked();
        b.kinds = kinds;
        // The owner's buffer keeps its room for the next tick.
        b.spare = notes;
    }
}

/// Packs notes (in the order they were made) into a batch of records, one per note, written
/// straight from the notes (the history folds a task's records in order); `kinds` are what
/// the notes' `what` numbers name; `now` stamps notes made outside a change (rare).
fn pack(notes: &[Note], kinds: &[crate::owner::events::NoteInfo], now: u64) -> EventBatch {
    let mut batch = EventBatch::default();
    batch.records.reserve(notes.len() * ferry_proto::state::RECORD);
    // The kinds this batch names, by the owner's number for them (a handful).
    let mut whats: Vec<(u32, u32)> = Vec::new();
    let some = |v: u64| (v != Note::NONE).then_some(v);
    for n in notes {
        let at_us = if n.at_us == 0 { now } else { n.at_us };
        let what = kinds.get(n.what as usize).map(|k| match whats.iter().find(|(w, _)| *w == n.what) {
            Some((_, i)) => *i,
            None => {
                let i = batch.whats.len() as u32;
                batch.whats.push(What {
                    function: k.function.to_string(),
                    name: k.name.to_string(),
                    job: k.job,
                    actor: k.actor,
                    creation: k.creation,
                });
                whats.push((n.what, i));
                i
            }
        });
        let (parent, error) = match &n.extra {
            Some(x) => (x.parent, x.error.as_ref().map(|e| e.to_string())),
            None => (None, None),
        };
        batch.push(&TaskEvent {
            task: n.task,
            state: n.state,
            at_us,
            attempt: n.attempt,
            what,
            parent,
            // A note that says what the task is was made at its submission (or retry).
            submitted_us: what.map(|_| at_us),
            started_us: some(n.started_us),
            node: some(n.node).map(ferry_proto::NodeId),
            worker: some(n.worker).map(ferry_proto::WorkerId),
            error,
        });
    }
    batch
}
