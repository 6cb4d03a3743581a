//! Task events leave the process here. The owner table notes its tasks' changes (see
//! `owner::events`); the executor notes a task that blocks, or that has run for a tick (a
//! shorter one's times go in its reply). Every tick the housekeeping thread takes both,
//! folds each task's notes into one fixed-size record (`EventBatch`), and sends them to the
//! node in bounded frames, off the task path; not while a burst of tasks is in flight,
//! unless the notes pile up. A buffer past its bound drops new notes and counts them: the
//! history says how many it never got.

use super::*;
use crate::owner::events::Note;
use ferry_proto::state::{EventBatch, Extra, Span, SpanKind, TaskState, What};
use ferry_proto::TaskId;

/// Notes from the executor, and room for the owner's next ones.
#[derive(Default)]
pub(crate) struct EventBuf {
    worker: Vec<Note>,
    spare: (Vec<Note>, Vec<Extra>),
    dropped: u64,
    /// The task this worker's main thread runs, since when, and whether its start was sent
    /// (a task that ends within a tick reports its times in its reply instead).
    running: Option<(TaskId, u32, u64, bool)>,
    /// Waits and copies of objects that took a while (`span`), not sent yet.
    spans: Vec<Span>,
    /// The owner's kinds of tasks (`owner::events::Whats`) as far as taken, as they travel:
    /// every batch names them all (a handful), so notes go by the owner's numbers.
    whats: Vec<What>,
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

/// A wait or copy shorter than this is no span of the timeline.
const SPAN_MIN_US: u64 = 200;

/// Most spans kept between two ticks.
const MAX_SPANS: usize = 10_000;

/// Now, in Unix microseconds.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Runtime {
    /// Notes, from the worker running it, that `task` (attempt `attempt`) is now `state`.
    pub(crate) fn note_running(&self, task: TaskId, attempt: u32, state: TaskState) {
        if !self.events_on() {
            return;
        }
        let mut n = Note::new(task, state, attempt);
        let now = now_us();
        n.set_at_us(now);
        n.set_where(Some(self.node_id), Some(self.me));
        if state == TaskState::Running {
            n.set_started_us(now);
        }
        let mut b = self.events.locked();
        if b.worker.len() < MAX_BUFFERED {
            b.worker.push(n);
        } else {
            b.dropped += 1;
        }
    }

    /// When a wait or copy that may become a span starts (`None`: nothing is recorded).
    pub(crate) fn span_start(&self) -> Option<u64> {
        self.events_on().then(now_us)
    }

    /// This process spent from `start` (`span_start`) until now on `object`: kept for the
    /// timeline if that took [`SPAN_MIN_US`] or more.
    pub(crate) fn span(&self, kind: SpanKind, object: ferry_proto::ObjectId, start: Option<u64>) {
        let Some(start_us) = start else { return };
        let end_us = now_us();
        if end_us.saturating_sub(start_us) < SPAN_MIN_US {
            return;
        }
        let (job, task) = match crate::executor::running() {
            Some(r) => (r.job, Some(r.task)),
            None => (self.me, None),
        };
        let s = Span { kind, object, job, task, node: self.node_id, worker: self.me, start_us, end_us };
        let mut b = self.events.locked();
        if b.spans.len() < MAX_SPANS {
            b.spans.push(s);
        } else {
            b.dropped += 1;
        }
    }

    /// A task its owner times starts on this worker: when.
    pub(crate) fn started(&self, task: TaskId, attempt: u32) -> u64 {
        let now = now_us();
        self.events.locked().running = Some((task, attempt, now, false));
        now
    }

    /// Whether this process records task events now.
    pub(crate) fn events_on(&self) -> bool {
        self.events_on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns recording task events on or off from now on.
    pub(crate) fn set_task_events(&'static self, on: bool) {
        self.events_on.store(on, std::sync::atomic::Ordering::Relaxed);
        self.with_state(|st, _| st.set_task_events(on));
    }

    /// The task it started has ended: when.
    pub(crate) fn ended(&self) -> u64 {
        self.events.locked().running = None;
        now_us()
    }

    /// Sends what was noted since the last call to the node now (what was noted before
    /// recording was turned off included).
    pub(crate) fn flush_task_events(&self) {
        self.send_task_events();
    }

    /// Sends what this process's owner table noted, if it noted anything (after a task that
    /// submitted tasks; nothing for one that did not).
    pub(crate) fn flush_task_events_if_noted(&self) {
        if self.noted.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.send_task_events();
        }
    }

    /// The housekeeping tick's send: put off while a burst of tasks is in flight (the send
    /// would take a core from the burst's workers), unless the notes pile up.
    pub(super) fn tick_task_events(&self) {
        if !self.events_on() {
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
        let (mut notes, mut extras, mut worker, dropped, whats, spans) = {
            let mut b = self.events.locked();
            // A task running for a while is said to be running now.
            if let Some((task, attempt, since, said)) = &mut b.running {
                if !*said && now_us().saturating_sub(*since) >= SAY_RUNNING_AFTER_US {
                    *said = true;
                    let mut n = Note::new(*task, TaskState::Running, *attempt);
                    n.set_at_us(*since);
                    n.set_started_us(*since);
                    n.set_where(Some(self.node_id), Some(self.me));
                    b.worker.push(n);
                }
            }
            let spare = std::mem::take(&mut b.spare);
            let mut st = self.state.locked();
            let (owner, extras, kinds) = st.take_notes(spare);
            // The kinds of tasks named so far (converted only when new ones appeared).
            let have = b.whats.len();
            if kinds.len() > have {
                let new: Vec<What> = kinds[have..]
                    .iter()
                    .map(|k| What {
                        function: k.function.to_string(),
                        name: k.name.to_string(),
                        job: k.job,
                        actor: k.actor,
                        creation: k.creation,
                    })
                    .collect();
                b.whats.extend(new);
            }
            drop(st);
            let spans = std::mem::take(&mut b.spans);
            (
                owner,
                extras,
                std::mem::take(&mut b.worker),
                std::mem::take(&mut b.dropped),
                std::mem::take(&mut b.whats),
                spans,
            )
        };
        let mut dropped = Some(dropped);
        if !notes.is_empty() || !worker.is_empty() || !spans.is_empty() || dropped.is_some_and(|d| d > 0) {
            // Notes made outside a change (rare) are stamped now.
            let now = now_us();
            for n in notes.iter_mut().chain(worker.iter_mut()) {
                n.stamp(now);
            }
            // In frames of a bounded size: the link to the node also carries lease requests,
            // which must not wait behind megabytes of events.
            let mut x = extras.drain(..).peekable();
            for (i, chunk) in notes.chunks(EVENTS_PER_FRAME).enumerate() {
                let (start, end) = (i * EVENTS_PER_FRAME, i * EVENTS_PER_FRAME + chunk.len());
                let mine: Vec<Extra> = std::iter::from_fn(|| x.next_if(|e| (e.record as usize) < end))
                    .map(|mut e| {
                        e.record -= start as u32;
                        e
                    })
                    .collect();
                let batch = EventBatch::encode_parts(&whats, chunk, &mine, &[]);
                let _ = self.node.send(&ToNode::TaskEvents { batch, dropped: dropped.take().unwrap_or(0) });
            }
            drop(x);
            for chunk in worker.chunks(EVENTS_PER_FRAME) {
                let batch = EventBatch::encode_parts(&whats, chunk, &[], &[]);
                let _ = self.node.send(&ToNode::TaskEvents { batch, dropped: dropped.take().unwrap_or(0) });
            }
            for chunk in spans.chunks(EVENTS_PER_FRAME) {
                let batch = EventBatch::encode_parts(&[], &[], &[], chunk);
                let _ = self.node.send(&ToNode::TaskEvents { batch, dropped: dropped.take().unwrap_or(0) });
            }
            if let Some(d) = dropped.filter(|d| *d > 0) {
                let _ = self.node.send(&ToNode::TaskEvents { batch: EventBatch::default().encode(), dropped: d });
            }
        }
        notes.clear();
        extras.clear();
        let mut b = self.events.locked();
        b.whats = whats;
        // The owner's buffers keep their room for the next tick.
        b.spare = (notes, extras);
    }
}
