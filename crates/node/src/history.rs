//! The cluster's task history (`ferry list tasks`, `ferry summary tasks`, the dashboard),
//! kept where the cluster's state is: by the control store, or by a node outside any
//! cluster. Members pass their processes' events on to it (`TaskEvents`).
//!
//! Lazy and off the connections' threads ([`Shared`]): a batch (`TaskEvents`) is queued as
//! the bytes that came until the history is read, or until queued batches pass [`FOLD_AT`]
//! bytes; then they are decoded and folded in, in the order they came, by a thread of the
//! history's own at a lower CPU priority. So recording costs a connection a copy of the
//! bytes, and the history's work happens when someone looks or in the tasks' idle time.
//! A kind of task (function, name, job, actor) is kept once; records and counts refer to it
//! by number, so folding an event hashes only its task id.
//!
//! Bounded: at most `per_job_limit` records per job; past it the oldest records go (their
//! tasks' counts stay exact: a record dropped before its task ended leaves a small entry
//! that keeps counting its changes). Events arrive from different processes (the owner's
//! and the worker's) in any order between them: a record never goes from an end back to an
//! earlier state within one attempt, and a later attempt's events win.

use ferry_proto::state::{
    BatchView, HistoryStats, Latency, Span, TaskEvent, TaskFilter, TaskInfo, TaskRecord, TaskState, TaskSummaryRow,
};
use ferry_proto::{NodeId, TaskId, WorkerId};
use ferry_types::sync::{CondvarExt, MutexExt};
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

/// Records kept per job by default (`FERRY_TASK_HISTORY_PER_JOB` to change).
pub const DEFAULT_PER_JOB: usize = 100_000;

/// Bytes of batches kept unread before they are folded in anyway.
pub const FOLD_AT: usize = 8 << 20;

/// Most events kept for tasks not known yet (a worker's start can come before its owner's
/// batch that says what the task is).
const MAX_ORPHANS: usize = 100_000;

/// Most kinds of tasks kept (each function of each job, per actor): past it, events of new
/// kinds are dropped and counted.
const MAX_WHATS: usize = 1_000_000;

/// What tasks of one function, name, job and actor have in common.
type What = ferry_proto::state::What;

/// A kind of task: its number in the history's `whats`.
type WhatId = u32;

/// A task as kept: what it is (by number: the kinds are kept once each), and its state.
#[derive(Debug, Clone)]
struct Rec {
    what: WhatId,
    state: TaskState,
    attempt: u32,
    parent: Option<TaskId>,
    node: Option<NodeId>,
    worker: Option<WorkerId>,
    error: Option<Box<str>>,
    submitted_us: u64,
    started_us: Option<u64>,
    ended_us: Option<u64>,
}

/// The records: in slots reused as old ones go (so the records of a job's window sit
/// together), found by task through an index of slot numbers, small enough to stay in cache
/// (a job at its bound of 100,000 records turns one over per new task).
#[derive(Debug, Default)]
struct Records {
    slots: Vec<Option<(TaskId, Rec)>>,
    free: Vec<u32>,
    index: HashMap<TaskId, u32>,
}

impl Records {
    fn get(&self, t: &TaskId) -> Option<&Rec> {
        self.index.get(t).and_then(|&i| self.slots[i as usize].as_ref()).map(|(_, r)| r)
    }
    fn get_mut(&mut self, t: &TaskId) -> Option<&mut Rec> {
        let i = *self.index.get(t)?;
        self.slots[i as usize].as_mut().map(|(_, r)| r)
    }
    /// Keeps `rec` of `task`; returns its slot.
    fn insert(&mut self, task: TaskId, rec: Rec) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some((task, rec));
                s
            }
            None => {
                self.slots.push(Some((task, rec)));
                (self.slots.len() - 1) as u32
            }
        };
        // (A task is inserted only when not kept: an older slot of it, were there one, would
        // be freed when its job's order reaches it, and its index entry is checked then.)
        self.index.insert(task, slot);
        slot
    }
    /// The record in `slot`, if any.
    fn at(&self, slot: u32) -> Option<(TaskId, &Rec)> {
        self.slots.get(slot as usize)?.as_ref().map(|(t, r)| (*t, r))
    }
    /// Drops the record in `slot`, if it still holds one, and returns it.
    fn remove_slot(&mut self, slot: u32) -> Option<(TaskId, Rec)> {
        let (t, r) = self.slots.get_mut(slot as usize)?.take()?;
        if self.index.get(&t) == Some(&slot) {
            self.index.remove(&t);
        }
        self.free.push(slot);
        Some((t, r))
    }
    fn len(&self) -> usize {
        self.index.len()
    }
    fn values(&self) -> impl Iterator<Item = &Rec> {
        self.slots.iter().flatten().map(|(_, r)| r)
    }
}

/// A record dropped before its task ended: enough to keep the counts exact.
#[derive(Debug)]
struct Left {
    what: WhatId,
    state: TaskState,
    attempt: u32,
}

/// One kind's tasks: how many are in each state, how long they waited and ran.
#[derive(Debug, Default)]
struct PerFunction {
    counts: [u64; 8],
    wait: Latency,
    run: Latency,
}

/// See the module docs.
#[derive(Debug)]
pub struct TaskHistory {
    per_job_limit: usize,
    records: Records,
    /// Per job, its records' slots in the order their tasks were first seen.
    order: HashMap<WorkerId, VecDeque<u32>>,
    left: HashMap<TaskId, Left>,
    /// Every kind of task seen, with its tasks' counts (exact) and latencies; and each
    /// kind's number.
    whats: Vec<(Arc<What>, PerFunction)>,
    what_ids: HashMap<Arc<What>, WhatId>,
    dropped_records: u64,
    dropped_events: u64,
    /// Events of tasks not known yet, folded in when their task is.
    orphans: HashMap<TaskId, Vec<TaskEvent>>,
    /// Per job, its latest get, put and transfer spans (at most `per_job_limit`).
    spans: HashMap<WorkerId, VecDeque<Span>>,
}

impl TaskHistory {
    pub fn new(per_job_limit: usize) -> TaskHistory {
        TaskHistory {
            per_job_limit: per_job_limit.max(1),
            records: Records::default(),
            order: HashMap::default(),
            left: HashMap::default(),
            whats: Vec::new(),
            what_ids: HashMap::default(),
            dropped_records: 0,
            dropped_events: 0,
            orphans: HashMap::default(),
            spans: HashMap::default(),
        }
    }

    /// Folds in `batches` (encoded), whose processes dropped `dropped` notes before them.
    pub fn fold_in(&mut self, batches: Vec<Vec<u8>>, dropped: u64) {
        self.dropped_events = self.dropped_events.saturating_add(dropped);
        for bytes in batches {
            match BatchView::decode(&bytes) {
                Some(b) => self.apply_batch(b),
                None => self.dropped_events = self.dropped_events.saturating_add(1),
            }
        }
    }

    /// `job`'s spans, oldest first.
    pub fn spans(&self, job: WorkerId) -> Vec<Span> {
        self.spans.get(&job).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Folds in one decoded batch.
    pub fn apply_batch(&mut self, mut b: BatchView<'_>) {
        for s in std::mem::take(&mut b.spans) {
            let kept = self.spans.entry(s.job).or_default();
            kept.push_back(s);
            if kept.len() > self.per_job_limit {
                kept.pop_front();
            }
        }
        let ids: Vec<Option<WhatId>> = b.whats.iter().map(|w| self.intern(w)).collect();
        for e in b.events() {
            let what = match e.what {
                None => None,
                Some(w) => match ids.get(w as usize).copied().flatten() {
                    Some(id) => Some(id),
                    // A kind the batch does not name, or one past the bound.
                    None => {
                        self.dropped_events = self.dropped_events.saturating_add(1);
                        continue;
                    }
                },
            };
            self.apply(e, what);
        }
    }

    fn count(&mut self, what: WhatId, state: TaskState, by: i64) {
        if let Some((_, f)) = self.whats.get_mut(what as usize) {
            let slot = &mut f.counts[state.index()];
            *slot = slot.saturating_add_signed(by);
        }
    }

    /// A task that ended after starting: its wait and run times go into its kind's
    /// histograms.
    fn observe(&mut self, what: WhatId, submitted_us: u64, started_us: Option<u64>, ended_us: Option<u64>) {
        let (Some(s), Some(e)) = (started_us, ended_us) else { return };
        if let Some((_, f)) = self.whats.get_mut(what as usize) {
            f.wait.observe(s.saturating_sub(submitted_us));
            f.run.observe(e.saturating_sub(s));
        }
    }

    /// The number of a kind of task (`None` past [`MAX_WHATS`]).
    fn intern(&mut self, w: &What) -> Option<WhatId> {
        if let Some(id) = self.what_ids.get(w) {
            return Some(*id);
        }
        if self.whats.len() >= MAX_WHATS {
            return None;
        }
        let id = self.whats.len() as WhatId;
        let w = Arc::new(w.clone());
        self.whats.push((w.clone(), PerFunction::default()));
        self.what_ids.insert(w, id);
        Some(id)
    }

    /// Whether an event of `attempt` in `to` replaces a record of `at` in `from`.
    fn moves(from: TaskState, at: u32, to: TaskState, attempt: u32) -> bool {
        match attempt.cmp(&at) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            // Within an attempt: never back from an end; `Running`/`Blocked` (from the
            // worker) never undo `Pushed`'s successors the owner saw.
            std::cmp::Ordering::Equal => {
                !from.is_final() && (to.is_final() || to >= from || from == TaskState::Blocked)
            }
        }
    }

    /// Folds in one task's event (`what`: what it is, when the event says).
    pub fn apply(&mut self, e: TaskEvent, what: Option<WhatId>) {
        if let Some(r) = self.records.get_mut(&e.task) {
            if let Some(s) = e.started_us.filter(|_| e.attempt == r.attempt) {
                r.started_us.get_or_insert(s);
            }
            if e.node.is_some() {
                r.node = e.node;
            }
            if e.worker.is_some() {
                r.worker = e.worker;
            }
            if !Self::moves(r.state, r.attempt, e.state, e.attempt) {
                return;
            }
            let (old, from) = (r.what, r.state);
            r.state = e.state;
            if e.attempt > r.attempt {
                r.attempt = e.attempt;
                r.started_us = e.started_us;
                r.ended_us = None;
                r.error = None;
            }
            let times = (r.submitted_us, r.started_us);
            if e.state.is_final() {
                r.ended_us = Some(e.at_us);
                r.error = e.error.map(String::into_boxed_str);
                self.observe(old, times.0, times.1, Some(e.at_us));
            }
            self.count(old, from, -1);
            self.count(old, e.state, 1);
            return;
        }
        if let Some(l) = self.left.get_mut(&e.task) {
            if !Self::moves(l.state, l.attempt, e.state, e.attempt) {
                return;
            }
            let (old, from) = (l.what, l.state);
            l.state = e.state;
            l.attempt = l.attempt.max(e.attempt);
            if e.state.is_final() {
                self.left.remove(&e.task);
            }
            self.count(old, from, -1);
            self.count(old, e.state, 1);
            return;
        }
        // A task not known yet: its event says what it is, or it waits for one that does.
        let Some(what) = what else {
            if self.orphans.len() < MAX_ORPHANS {
                self.orphans.entry(e.task).or_default().push(e);
            } else {
                self.dropped_events = self.dropped_events.saturating_add(1);
            }
            return;
        };
        self.count(what, e.state, 1);
        let Some(job) = self.whats.get(what as usize).map(|(w, _)| w.job) else { return };
        let task = e.task;
        let rec = Rec {
            what,
            parent: e.parent,
            state: e.state,
            attempt: e.attempt,
            node: e.node,
            worker: e.worker,
            error: e.error.map(String::into_boxed_str),
            submitted_us: e.submitted_us.unwrap_or(e.at_us),
            started_us: e.started_us,
            ended_us: e.state.is_final().then_some(e.at_us),
        };
        self.observe(what, rec.submitted_us, rec.started_us, rec.ended_us);
        let slot = self.records.insert(task, rec);
        let order = self.order.entry(job).or_default();
        order.push_back(slot);
        if order.len() > self.per_job_limit {
            if let Some(old) = order.pop_front() {
                if let Some((old, r)) = self.records.remove_slot(old) {
                    self.dropped_records += 1;
                    if !r.state.is_final() {
                        self.left.insert(old, Left { what: r.what, state: r.state, attempt: r.attempt });
                    }
                }
            }
        }
        // What came for it before it was known (a worker's start).
        if let Some(early) = self.orphans.remove(&task) {
            for e in early {
                self.apply(e, None);
            }
        }
    }

    fn what(&self, id: WhatId) -> &What {
        &self.whats[id as usize].0
    }

    fn view(&self, task: TaskId, r: &Rec) -> TaskRecord {
        let w = self.what(r.what);
        TaskRecord {
            task,
            info: TaskInfo {
                function: w.function.clone(),
                name: w.name.clone(),
                job: w.job,
                parent: r.parent,
                actor: w.actor,
                creation: w.creation,
            },
            state: r.state,
            attempt: r.attempt,
            node: r.node,
            worker: r.worker,
            error: r.error.as_ref().map(|e| e.to_string()),
            submitted_us: r.submitted_us,
            started_us: r.started_us,
            ended_us: r.ended_us,
        }
    }

    /// The records that match, newest first, at most `limit`; and how many matched.
    pub fn list(&self, filter: &TaskFilter, limit: usize) -> (Vec<TaskRecord>, u64) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if let Some(t) = filter.task {
            let one: Vec<TaskRecord> = self
                .records
                .get(&t)
                .filter(|r| matches(filter, r, self.what(r.what)))
                .map(|r| self.view(t, r))
                .into_iter()
                .collect();
            let n = one.len() as u64;
            return (one, n);
        }
        let mut matched = 0u64;
        // The newest `limit` by submission time (a min-heap of them).
        let mut top: BinaryHeap<Reverse<(u64, u64, u32)>> = BinaryHeap::with_capacity(limit.min(4096) + 1);
        let jobs: Vec<&VecDeque<u32>> = match filter.job {
            Some(j) => self.order.get(&j).into_iter().collect(),
            None => self.order.values().collect(),
        };
        // Which kinds match the filter's parts that concern the kind, decided once each.
        let kinds: Vec<bool> = self.whats.iter().map(|(w, _)| kind_matches(filter, w)).collect();
        for order in jobs {
            for slot in order {
                let Some((t, r)) = self.records.at(*slot) else { continue };
                if !kinds[r.what as usize] || !record_matches(filter, r) {
                    continue;
                }
                matched += 1;
                if limit == 0 {
                    continue;
                }
                top.push(Reverse((r.submitted_us, t.seq, *slot)));
                if top.len() > limit {
                    top.pop();
                }
            }
        }
        let mut out: Vec<TaskRecord> =
            top.into_iter().filter_map(|Reverse((_, _, s))| self.records.at(s).map(|(t, r)| self.view(t, r))).collect();
        out.sort_by(|a, b| b.submitted_us.cmp(&a.submitted_us).then(b.task.seq.cmp(&a.task.seq)));
        (out, matched)
    }

    /// One task's record, if kept.
    pub fn get(&self, task: TaskId) -> Option<TaskRecord> {
        self.records.get(&task).map(|r| self.view(task, r))
    }

    /// Tasks by job and function, with their counts per state (exact).
    pub fn summary(&self, job: Option<WorkerId>) -> Vec<TaskSummaryRow> {
        let mut rows: BTreeMap<(u64, &str), TaskSummaryRow> = BTreeMap::new();
        for (w, f) in self.whats.iter().filter(|(w, _)| job.is_none_or(|j| j == w.job)) {
            let row = rows.entry((w.job.0, w.function.as_str())).or_insert_with(|| TaskSummaryRow {
                job: w.job,
                function: w.function.clone(),
                counts: vec![0; TaskState::ALL.len()],
                wait: Latency::default(),
                run: Latency::default(),
            });
            for (a, b) in row.counts.iter_mut().zip(f.counts) {
                *a += b;
            }
            row.wait.add(&f.wait);
            row.run.add(&f.run);
        }
        rows.into_values().collect()
    }

    pub fn stats(&self) -> HistoryStats {
        // A record with its map slot and its place in a job's order; what it shares is small.
        let per_record = std::mem::size_of::<Rec>() + std::mem::size_of::<TaskId>() * 3 + 16;
        let errors: usize = self.records.values().filter_map(|r| r.error.as_ref().map(|e| e.len())).sum();
        let whats: usize = self.whats.iter().map(|(w, _)| w.function.len() + w.name.len() + 200).sum();
        HistoryStats {
            records: self.records.len() as u64,
            per_job_limit: self.per_job_limit as u64,
            dropped_records: self.dropped_records,
            dropped_events: self.dropped_events,
            bytes: (self.records.len() * per_record + errors + whats + self.left.len() * 64) as u64,
        }
    }
}

fn kind_matches(f: &TaskFilter, w: &What) -> bool {
    f.job.is_none_or(|j| w.job == j)
        && f.name.as_deref().is_none_or(|n| w.name.contains(n) || w.function.contains(n))
        && f.actor.is_none_or(|a| w.actor == Some(a))
}

fn record_matches(f: &TaskFilter, r: &Rec) -> bool {
    f.state.is_none_or(|s| r.state == s) && f.node.is_none_or(|n| r.node == Some(n))
}

fn matches(f: &TaskFilter, r: &Rec, w: &What) -> bool {
    kind_matches(f, w) && record_matches(f, r)
}

/// The history as a node holds it. Batches come in on connection threads, which only
/// queue them (a connection also carries its process's lease requests, which must not wait
/// for a fold); a thread of its own folds them in once they pass [`FOLD_AT`] bytes, at a
/// lower CPU priority than the tasks'; a reader folds in what is queued before it reads.
/// What is queued is bounded: past [`MAX_QUEUED`] bytes a batch is dropped and its events
/// are counted as dropped.
#[derive(Debug)]
pub struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    kept: Mutex<TaskHistory>,
}

/// Batches not folded in yet.
#[derive(Debug, Default)]
struct Inbox {
    batches: Vec<Vec<u8>>,
    bytes: usize,
    dropped: u64,
    stop: bool,
}

/// Most bytes of batches queued before new ones are dropped.
pub const MAX_QUEUED: usize = 4 * FOLD_AT;

impl Shared {
    pub fn new(per_job_limit: usize) -> Shared {
        Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            kept: Mutex::new(TaskHistory::new(per_job_limit)),
        }
    }

    /// Queues a batch (encoded) from a process that dropped `dropped` notes before it.
    pub fn add(&self, batch: Vec<u8>, dropped: u64) {
        let mut i = self.inbox.locked();
        i.dropped = i.dropped.saturating_add(dropped);
        if i.bytes + batch.len() > MAX_QUEUED {
            let events = (batch.len() / ferry_proto::state::RECORD) as u64;
            i.dropped = i.dropped.saturating_add(events.max(1));
            return;
        }
        i.bytes += batch.len();
        i.batches.push(batch);
        if i.bytes >= FOLD_AT {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> (Vec<Vec<u8>>, u64) {
        let mut i = self.inbox.locked();
        i.bytes = 0;
        (std::mem::take(&mut i.batches), std::mem::take(&mut i.dropped))
    }

    /// The history, with everything queued folded in.
    pub fn read(&self) -> std::sync::MutexGuard<'_, TaskHistory> {
        let mut h = self.kept.locked();
        let (batches, dropped) = self.take();
        h.fold_in(batches, dropped);
        h
    }

    /// The folding thread's loop, until [`Shared::stop`].
    pub fn folder(&self) {
        // Nice 10: folding gives way to tasks on a busy host, and still keeps up with them
        // (a tenth of a core's share is several times what it needs).
        // SAFETY: setpriority on the calling thread (`who` 0); no memory is involved.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        loop {
            {
                let mut i = self.inbox.locked();
                while i.bytes < FOLD_AT && !i.stop {
                    i = self.wake.wait_locked(i);
                }
                if i.stop {
                    return;
                }
            }
            let mut h = self.kept.locked();
            let (batches, dropped) = self.take();
            h.fold_in(batches, dropped);
        }
    }

    pub fn stop(&self) {
        self.inbox.locked().stop = true;
        self.wake.notify_all();
    }
}

impl crate::Node {
    /// Task events, and questions about the tasks, on the connection's own thread: the
    /// history has a lock of its own, the node's state is not touched.
    pub(crate) fn on_history(&self, conn: &ferry_proto::Conn, msg: ferry_proto::msg::ToNode) {
        use ferry_proto::msg::{FromNode, ToNode};
        use ferry_types::sync::MutexExt;
        let head = self.head_link.locked().clone();
        let reply = match msg {
            // A member keeps none: the control store keeps the cluster's.
            ToNode::TaskEvents { batch, dropped } => {
                match &head {
                    Some(h) => drop(h.send(&ToNode::TaskEvents { batch, dropped })),
                    None => self.history.add(batch, dropped),
                }
                return;
            }
            ToNode::ListTasks { req, filter, limit } => match head {
                Some(_) => FromNode::Tasks { req, tasks: Vec::new(), matched: 0, stats: None },
                None => {
                    let h = self.history.read();
                    let (tasks, matched) = h.list(&filter, limit.min(100_000) as usize);
                    FromNode::Tasks { req, tasks, matched, stats: Some(h.stats()) }
                }
            },
            ToNode::ListSpans { req, job } => match head {
                Some(_) => FromNode::Spans { req, spans: None },
                None => FromNode::Spans { req, spans: Some(self.history.read().spans(job)) },
            },
            ToNode::SummarizeTasks { req, job } => match head {
                Some(_) => FromNode::TaskSummary { req, rows: Vec::new(), stats: None },
                None => {
                    let h = self.history.read();
                    FromNode::TaskSummary { req, rows: h.summary(job), stats: Some(h.stats()) }
                }
            },
            _ => return,
        };
        let _ = conn.send(&reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::state::EventBatch;

    /// Folds in one event of task `seq`, saying what it is when `f` (function, job) is given.
    fn put(h: &mut TaskHistory, seq: u64, state: TaskState, attempt: u32, at: u64, f: Option<(&str, u64)>) {
        let whats: Vec<What> = f
            .iter()
            .map(|(f, job)| What {
                function: f.to_string(),
                name: f.to_string(),
                job: WorkerId(*job),
                actor: None,
                creation: false,
            })
            .collect();
        let e = TaskEvent {
            task: TaskId { owner: WorkerId(1), seq },
            state,
            at_us: at,
            attempt,
            what: f.map(|_| 0),
            parent: None,
            submitted_us: f.map(|_| at),
            started_us: (state == TaskState::Running).then_some(at),
            node: None,
            worker: None,
            error: None,
        };
        // Through the bytes, as batches come.
        let mut b = EventBatch { whats, ..Default::default() };
        b.push(&e);
        h.fold_in(vec![b.encode()], 0);
    }

    fn counts(h: &TaskHistory, f: &str) -> Vec<u64> {
        h.summary(None).into_iter().find(|r| r.function == f).map(|r| r.counts).unwrap_or_default()
    }

    fn id(seq: u64) -> TaskId {
        TaskId { owner: WorkerId(1), seq }
    }

    #[test]
    fn events_from_two_processes_in_any_order_end_in_the_right_state() {
        let mut h = TaskHistory::new(10);
        // The worker's start comes before the owner says what the task is.
        put(&mut h, 1, TaskState::Running, 0, 3, None);
        put(&mut h, 1, TaskState::WaitingForWorker, 0, 1, Some(("f", 9)));
        put(&mut h, 1, TaskState::Finished, 0, 4, None);
        let r = h.get(id(1)).unwrap();
        assert_eq!((r.state, r.started_us, r.ended_us), (TaskState::Finished, Some(3), Some(4)));
        // A start that comes after the end does not undo it.
        put(&mut h, 1, TaskState::Running, 0, 3, None);
        assert_eq!(h.get(id(1)).unwrap().state, TaskState::Finished);
        assert_eq!(counts(&h, "f")[TaskState::Finished.index()], 1);
        assert_eq!(counts(&h, "f").iter().sum::<u64>(), 1);
        // A retry (a later attempt) moves it on again.
        put(&mut h, 1, TaskState::WaitingForWorker, 1, 5, Some(("f", 9)));
        assert_eq!(h.get(id(1)).unwrap().state, TaskState::WaitingForWorker);
        assert_eq!(counts(&h, "f").iter().sum::<u64>(), 1);
    }

    #[test]
    fn counts_stay_exact_when_records_are_dropped() {
        let mut h = TaskHistory::new(3);
        for seq in 1..=10 {
            put(&mut h, seq, TaskState::WaitingForWorker, 0, seq, Some(("g", 9)));
        }
        // Ten tasks, three records; the seven dropped still count, and move.
        assert_eq!(h.stats().records, 3);
        assert_eq!(h.stats().dropped_records, 7);
        for seq in 1..=10 {
            put(&mut h, seq, TaskState::Finished, 0, 100 + seq, None);
        }
        let c = counts(&h, "g");
        assert_eq!(c[TaskState::Finished.index()], 10, "{c:?}");
        assert_eq!(c.iter().sum::<u64>(), 10);
        let (newest, matched) = h.list(&TaskFilter::default(), 2);
        assert_eq!(matched, 3);
        assert_eq!(newest.iter().map(|r| r.task.seq).collect::<Vec<_>>(), vec![10, 9]);
    }

    #[test]
    fn filters_select_by_job_state_and_name() {
        let mut h = TaskHistory::new(100);
        put(&mut h, 1, TaskState::WaitingForWorker, 0, 1, Some(("app::load", 1)));
        put(&mut h, 2, TaskState::WaitingForWorker, 0, 2, Some(("app::save", 2)));
        put(&mut h, 2, TaskState::Failed, 0, 3, None);
        let f = TaskFilter { state: Some(TaskState::Failed), ..Default::default() };
        assert_eq!(h.list(&f, 10).0.iter().map(|r| r.task.seq).collect::<Vec<_>>(), vec![2]);
        let f = TaskFilter { job: Some(WorkerId(1)), ..Default::default() };
        assert_eq!(h.list(&f, 10).1, 1);
        let f = TaskFilter { name: Some("load".into()), ..Default::default() };
        assert_eq!(h.list(&f, 10).0[0].info.function, "app::load");
        let f = TaskFilter { task: Some(id(2)), ..Default::default() };
        assert_eq!(h.list(&f, 10).0[0].state, TaskState::Failed);
        // Bytes that are no batch are counted, not folded.
        h.fold_in(vec![vec![0xff; 7]], 0);
        assert_eq!(h.stats().dropped_events, 1);
    }

    #[test]
    fn a_finished_task_adds_its_wait_and_run_times_to_its_functions_histograms() {
        let mut h = TaskHistory::new(10);
        put(&mut h, 1, TaskState::WaitingForWorker, 0, 1_000, Some(("f", 9)));
        put(&mut h, 1, TaskState::Running, 0, 1_300, None);
        put(&mut h, 1, TaskState::Finished, 0, 4_300, None);
        // Ended without a start seen: no times to add.
        put(&mut h, 2, TaskState::Cancelled, 0, 5_000, Some(("f", 9)));
        let row = h.summary(None).into_iter().find(|r| r.function == "f").expect("a row for f");
        assert_eq!((row.wait.count, row.wait.sum_us), (1, 300));
        assert_eq!((row.run.count, row.run.sum_us), (1, 3_000));
        // 300 µs falls in the (250, 500] bucket, 3 ms in (2.5, 5] ms.
        let le = |l: &Latency, bound: f64| l.cumulative().iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!((le(&row.wait, 0.00025), le(&row.wait, 0.0005)), (Some(0), Some(1)));
        assert_eq!((le(&row.run, 0.0025), le(&row.run, 0.005)), (Some(0), Some(1)));
        assert_eq!(row.run.cumulative().last(), Some(&(f64::INFINITY, 1)));
    }
}
