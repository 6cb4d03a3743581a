//! What the cluster records about tasks for people to look at (`ferry list`, `ferry summary`,
//! the dashboard): task events as processes send them, and task records as the head keeps
//! them.

use crate::msg::ActorId;
use crate::{NodeId, ObjectId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};

/// A task's state as observers see it. The order is the order a task normally goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum TaskState {
    /// Submitted; some argument is not ready yet.
    WaitingForArgs,
    /// Ready to run, waiting for a worker (a lease, or its actor).
    WaitingForWorker,
    /// Sent to a worker, not started there yet.
    Pushed,
    Running,
    /// Running, and waiting in `get` or `wait` (its CPU lent).
    Blocked,
    Finished,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::WaitingForArgs,
        TaskState::WaitingForWorker,
        TaskState::Pushed,
        TaskState::Running,
        TaskState::Blocked,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// Its name as `ferry list` shows it and `--filter state=..` takes it.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::WaitingForArgs => "waiting_for_args",
            TaskState::WaitingForWorker => "waiting_for_worker",
            TaskState::Pushed => "pushed",
            TaskState::Running => "running",
            TaskState::Blocked => "blocked",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// No later event changes it (unless the task is run again to remake a lost value).
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed | TaskState::Cancelled)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a task is (its record's description).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct TaskInfo {
    /// Its function's (or actor method's) registered id.
    pub function: String,
    /// Its display name.
    pub name: String,
    /// The job (its driver) it belongs to.
    pub job: WorkerId,
    /// The task that submitted it, if a task did.
    pub parent: Option<TaskId>,
    /// The actor it calls (or creates, with `creation`).
    pub actor: Option<ActorId>,
    pub creation: bool,
}

/// What many tasks share (one function of one job, on one actor), named once per batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct What {
    pub function: String,
    pub name: String,
    pub job: WorkerId,
    pub actor: Option<ActorId>,
    pub creation: bool,
}

/// Where one task got to since its process's last batch (its changes in between folded
/// into one): from its owner (submission, where it was pushed, its end) or from the worker
/// that ran it (when it started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct TaskEvent {
    pub task: TaskId,
    /// Its latest state, reached at `at_us` (Unix microseconds).
    pub state: TaskState,
    pub at_us: u64,
    /// Runs of it before this one (0 on the first).
    pub attempt: u32,
    /// What it is, by index into the batch's `whats`: on its first event, and on a retry's.
    pub what: Option<u32>,
    pub parent: Option<TaskId>,
    pub submitted_us: Option<u64>,
    /// When it started running (from its worker).
    pub started_us: Option<u64>,
    pub node: Option<NodeId>,
    pub worker: Option<WorkerId>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One process's task events since its last batch (`ToNode::TaskEvents` carries it encoded,
/// so that a node keeps it as bytes until someone reads the history).
///
/// Events travel as fixed-size records (`RECORD` bytes each, little-endian: task owner,
/// task sequence, time, node, worker, start time, attempt, what and state, submission time), written and read
/// without a serializer's per-field work; what few events carry besides (a parent task, an
/// error) goes in `extras`, by record number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct EventBatch {
    pub whats: Vec<What>,
    #[serde(with = "serde_bytes")]
    pub records: Vec<u8>,
    pub extras: Vec<Extra>,
    /// Waits and copies of objects that took a while (the timeline's get, put and transfer
    /// slices).
    pub spans: Vec<Span>,
}

/// What a [`Span`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum SpanKind {
    /// A `get` (or `get_all`, `wait`) that waited.
    Get,
    /// A `put` into the shared-memory store.
    Put,
    /// A copy of an object from another node.
    Transfer,
}

impl SpanKind {
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Get => "get",
            SpanKind::Put => "put",
            SpanKind::Transfer => "transfer",
        }
    }
}

/// A process spent `start_us..end_us` on an object (`ferry timeline`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct Span {
    pub kind: SpanKind,
    pub object: ObjectId,
    /// The job it was for, and the task the process ran then (none: its driver).
    pub job: WorkerId,
    pub task: Option<TaskId>,
    pub node: NodeId,
    pub worker: WorkerId,
    pub start_us: u64,
    pub end_us: u64,
}

/// What one event carries besides its record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct Extra {
    pub record: u32,
    pub parent: Option<TaskId>,
    pub error: Option<String>,
}

/// Bytes per event record.
pub const RECORD: usize = 64;

const NONE: u64 = u64::MAX;

/// One event record as a process keeps it until it sends it: the fields in the order and
/// width the records travel in, so that a buffer of them is sent as it is
/// ([`Record::bytes`]), with nothing to pack. Fields hold the little-endian form of their
/// values (`Record::new` and the setters see to it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    owner: u64,
    seq: u64,
    at_us: u64,
    node: u64,
    worker: u64,
    started_us: u64,
    attempt: u32,
    what_state: u32,
    submitted_us: u64,
}

const _: () = assert!(std::mem::size_of::<Record>() == RECORD && std::mem::align_of::<Record>() == 8);

impl Record {
    /// A record of `task` in `state`: nothing else known, not stamped.
    pub fn new(task: TaskId, state: TaskState, attempt: u32) -> Record {
        Record {
            owner: task.owner.0.to_le(),
            seq: task.seq.to_le(),
            at_us: 0,
            node: NONE,
            worker: NONE,
            started_us: NONE,
            attempt: attempt.to_le(),
            what_state: (0x00ff_ffff | ((state as u32) << 24)).to_le(),
            submitted_us: NONE,
        }
    }

    pub fn task(&self) -> TaskId {
        TaskId { owner: WorkerId(u64::from_le(self.owner)), seq: u64::from_le(self.seq) }
    }
    pub fn attempt(&self) -> u32 {
        u32::from_le(self.attempt)
    }
    pub fn set_state(&mut self, state: TaskState) {
        let what = u32::from_le(self.what_state) & 0x00ff_ffff;
        self.what_state = (what | ((state as u32) << 24)).to_le();
    }
    pub fn at_us(&self) -> u64 {
        u64::from_le(self.at_us)
    }
    /// When it happened (0: not stamped yet).
    pub fn set_at_us(&mut self, us: u64) {
        self.at_us = us.to_le();
    }
    pub fn set_where(&mut self, node: Option<NodeId>, worker: Option<WorkerId>) {
        self.node = node.map_or(NONE, |n| n.0.to_le());
        self.worker = worker.map_or(NONE, |w| w.0.to_le());
    }
    pub fn set_started_us(&mut self, us: u64) {
        self.started_us = us.to_le();
    }
    /// What the task is (its number in the batch's `whats`, below 2^24), said on its
    /// submission, with when that was.
    pub fn set_what(&mut self, what: u32, submitted_us: u64) {
        let state = u32::from_le(self.what_state) & 0xff00_0000;
        self.what_state = (state | what.min(0x00ff_fffe)).to_le();
        self.submitted_us = submitted_us.to_le();
    }
    /// Stamps it with `us` if it is not stamped yet (its submission too, if it says what
    /// the task is).
    pub fn stamp(&mut self, us: u64) {
        if self.at_us == 0 {
            self.at_us = us.to_le();
            if self.has_what() && self.submitted_us == 0 {
                self.submitted_us = us.to_le();
            }
        }
    }

    pub fn has_what(&self) -> bool {
        u32::from_le(self.what_state) & 0x00ff_ffff != 0x00ff_ffff
    }

    /// Records as the bytes [`EventBatch::records`] holds.
    pub fn bytes(records: &[Record]) -> &[u8] {
        // SAFETY: `Record` is `repr(C)` with only integer fields and no padding (asserted
        // above), so its memory is initialized bytes; the slice covers exactly the records'.
        unsafe { std::slice::from_raw_parts(records.as_ptr() as *const u8, std::mem::size_of_val(records)) }
    }
}

/// [`EventBatch`] borrowed from where its parts are kept: encodes the same way.
#[derive(Serialize)]
struct BatchParts<'a> {
    whats: &'a [What],
    #[serde(with = "serde_bytes")]
    records: &'a [u8],
    extras: &'a [Extra],
    spans: &'a [Span],
}

impl EventBatch {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The encoding of a batch of these parts, without assembling it first.
    pub fn encode_parts(whats: &[What], records: &[Record], extras: &[Extra], spans: &[Span]) -> Vec<u8> {
        postcard::to_allocvec(&BatchParts { whats, records: Record::bytes(records), extras, spans }).unwrap_or_default()
    }
    pub fn decode(bytes: &[u8]) -> Option<EventBatch> {
        postcard::from_bytes(bytes).ok()
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.records.len() / RECORD
    }

    pub fn is_empty(&self) -> bool {
        self.records.len() < RECORD
    }

    /// Appends an event.
    pub fn push(&mut self, e: &TaskEvent) {
        let n = self.len() as u32;
        let mut r = [0u8; RECORD];
        r[0..8].copy_from_slice(&e.task.owner.0.to_le_bytes());
        r[8..16].copy_from_slice(&e.task.seq.to_le_bytes());
        r[16..24].copy_from_slice(&e.at_us.to_le_bytes());
        r[24..32].copy_from_slice(&e.node.map_or(NONE, |n| n.0).to_le_bytes());
        r[32..40].copy_from_slice(&e.worker.map_or(NONE, |w| w.0).to_le_bytes());
        r[40..48].copy_from_slice(&e.started_us.unwrap_or(NONE).to_le_bytes());
        r[48..52].copy_from_slice(&e.attempt.to_le_bytes());
        // The state in the top byte of `what` (what numbers stay below 2^24).
        let what = e.what.map_or(0x00ff_ffff, |w| w.min(0x00ff_fffe)) | ((e.state as u32) << 24);
        r[52..56].copy_from_slice(&what.to_le_bytes());
        r[56..64].copy_from_slice(&e.submitted_us.unwrap_or(NONE).to_le_bytes());
        self.records.extend_from_slice(&r);
        if e.parent.is_some() || e.error.is_some() {
            self.extras.push(Extra { record: n, parent: e.parent, error: e.error.clone() });
        }
    }

    /// Its events, in order (records that do not read as one are skipped).
    pub fn events(&self) -> impl Iterator<Item = TaskEvent> + '_ {
        events_of(&self.records, &self.extras)
    }
}

/// [`EventBatch`] read in place: its records are not copied out of the bytes that came (the
/// history folds batches of hundreds of KiB).
#[derive(Deserialize)]
pub struct BatchView<'a> {
    pub whats: Vec<What>,
    #[serde(borrow, with = "serde_bytes")]
    pub records: &'a [u8],
    pub extras: Vec<Extra>,
    pub spans: Vec<Span>,
}

impl<'a> BatchView<'a> {
    pub fn decode(bytes: &'a [u8]) -> Option<BatchView<'a>> {
        postcard::from_bytes(bytes).ok()
    }

    /// Its events, in order (records that do not read as one are skipped).
    pub fn events(&self) -> impl Iterator<Item = TaskEvent> + '_ {
        events_of(self.records, &self.extras)
    }
}

/// The events of `records` with their `extras`.
fn events_of<'a>(records: &'a [u8], extras: &'a [Extra]) -> impl Iterator<Item = TaskEvent> + 'a {
    let mut extras = extras.iter().peekable();
    records.chunks_exact(RECORD).enumerate().filter_map(move |(i, r)| {
        let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().expect("8 bytes"));
        let some = |v: u64| (v != NONE).then_some(v);
        let what = u32::from_le_bytes(r[52..56].try_into().expect("4 bytes"));
        let state = *TaskState::ALL.get((what >> 24) as usize)?;
        let w = what & 0x00ff_ffff;
        let w = (w != 0x00ff_ffff).then_some(w);
        let mut e = TaskEvent {
            task: TaskId { owner: WorkerId(u64_at(0)), seq: u64_at(8) },
            state,
            at_us: u64_at(16),
            attempt: u32::from_le_bytes(r[48..52].try_into().expect("4 bytes")),
            what: w,
            parent: None,
            submitted_us: some(u64_at(56)),
            started_us: some(u64_at(40)),
            node: some(u64_at(24)).map(NodeId),
            worker: some(u64_at(32)).map(WorkerId),
            error: None,
        };
        while let Some(x) = extras.next_if(|x| x.record as usize <= i) {
            if x.record as usize == i {
                e.parent = x.parent;
                e.error = x.error.clone();
            }
        }
        Some(e)
    })
}

/// A task as the head keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct TaskRecord {
    pub task: TaskId,
    pub info: TaskInfo,
    pub state: TaskState,
    pub attempt: u32,
    pub node: Option<NodeId>,
    pub worker: Option<WorkerId>,
    pub error: Option<String>,
    /// When it was submitted, started running, and ended (Unix microseconds).
    pub submitted_us: u64,
    pub started_us: Option<u64>,
    pub ended_us: Option<u64>,
}

/// Which tasks `ListTasks` wants (every field that is set must match).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct TaskFilter {
    /// This task only.
    pub task: Option<TaskId>,
    pub job: Option<WorkerId>,
    pub state: Option<TaskState>,
    /// Its function id or its name contains this.
    pub name: Option<String>,
    pub node: Option<NodeId>,
    pub actor: Option<ActorId>,
}

/// One row of `ferry summary tasks`: a function in a job, with how many of its tasks are in
/// each state (indexed by [`TaskState::index`]). Exact, even where records were dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct TaskSummaryRow {
    pub job: WorkerId,
    pub function: String,
    pub counts: Vec<u64>,
    /// How long its tasks waited from submission to start, and ran: of those whose start and
    /// end the head saw (a record dropped before its task ended takes its times with it).
    pub wait: Latency,
    pub run: Latency,
}

/// The upper bounds of [`Latency`]'s buckets, in microseconds (a last bucket takes the rest).
pub const LATENCY_BOUNDS_US: [u64; 14] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000, 60_000_000];

/// A histogram of durations (the Prometheus task latency histograms come from it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct Latency {
    /// Observations per bucket of [`LATENCY_BOUNDS_US`] (not cumulative), then those above the
    /// last bound. Empty when nothing was observed.
    pub buckets: Vec<u64>,
    pub sum_us: u64,
    pub count: u64,
}

impl Latency {
    pub fn observe(&mut self, us: u64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
        }
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// Adds `other`'s observations to these.
    pub fn add(&mut self, other: &Latency) {
        if other.count == 0 {
            return;
        }
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.count += other.count;
    }

    /// Cumulative counts per bound, as Prometheus wants them (`le`, in seconds), then +Inf.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let mut out: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                total += self.buckets.get(i).copied().unwrap_or(0);
                (b as f64 / 1e6, total)
            })
            .collect();
        out.push((f64::INFINITY, self.count));
        out
    }
}

/// What the head says of its task history besides the rows asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct HistoryStats {
    /// Records kept now, and the most it keeps per job.
    pub records: u64,
    pub per_job_limit: u64,
    /// Records of finished tasks dropped to keep within the limit (their counts stay), and
    /// events processes dropped before sending them (their buffers were full).
    pub dropped_records: u64,
    pub dropped_events: u64,
    /// Bytes the history takes, roughly.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_kept_as_they_travel_read_back_as_the_events_they_were() {
        let task = TaskId { owner: WorkerId(0x0102_0304_0506_0708), seq: 42 };
        let mut r = Record::new(task, TaskState::Finished, 2);
        r.set_at_us(1_000);
        r.set_where(Some(NodeId(7)), None);
        r.set_started_us(900);
        let mut submitted = Record::new(task, TaskState::WaitingForWorker, 2);
        submitted.set_at_us(500);
        submitted.set_what(3, 500);
        assert!(submitted.has_what() && !r.has_what());
        let whats: Vec<What> = (0..4)
            .map(|i| What {
                function: format!("f{i}"),
                name: "f".into(),
                job: WorkerId(1),
                actor: None,
                creation: false,
            })
            .collect();
        let extras = [Extra { record: 0, parent: Some(TaskId { owner: WorkerId(1), seq: 1 }), error: None }];
        let bytes = EventBatch::encode_parts(&whats, &[submitted, r], &extras, &[]);
        let batch = EventBatch::decode(&bytes).expect("decodes");
        let events: Vec<TaskEvent> = batch.events().collect();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].what, events[0].submitted_us, events[0].parent), (Some(3), Some(500), extras[0].parent));
        assert_eq!(events[0].state, TaskState::WaitingForWorker);
        let e = &events[1];
        assert_eq!((e.task, e.state, e.attempt, e.at_us), (task, TaskState::Finished, 2, 1_000));
        assert_eq!((e.node, e.worker, e.started_us, e.what, e.parent), (Some(NodeId(7)), None, Some(900), None, None));
        // The same as the batch built event by event.
        let mut same = EventBatch { whats, ..Default::default() };
        for e in &events {
            same.push(e);
        }
        assert_eq!(same.records, batch.records);
    }
}
