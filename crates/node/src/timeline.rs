//! The task history as a timeline (`ferry timeline`, the dashboard's download): Chrome
//! trace-event JSON, which Perfetto (ui.perfetto.dev) and `chrome://tracing` open. A process
//! row per node and a thread row per worker, a slice per task run (its name, and its id,
//! function, state, attempt and error as arguments), a flow arrow from where each task was
//! submitted (its parent task's run, or its job's driver, a row of its own) to its run, and a
//! slice per `get` that waited, `put` into the store and transfer between nodes that took
//! 200 µs or more, on the row of the process that made it.
//!
//! Streamed: events are written as they are made, one job's records at a time, so a long
//! history never sits in memory as JSON.

use crate::client::{Client, ClientError, JobId, NodeId, TaskFilter, TaskRecord};
use ferry_proto::WorkerId;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};

/// The most records one request for a job's tasks returns (the history's own bound).
const PAGE: u32 = 100_000;

/// The pseudo-process of the drivers' rows.
const DRIVERS_PID: u64 = 0;

/// A timeline being written to `out`.
pub struct Timeline<W: Write> {
    out: W,
    first: bool,
    pids: HashMap<NodeId, u64>,
    tids: HashMap<WorkerId, u64>,
    drivers: HashMap<JobId, u64>,
    flows: u64,
    tasks: u64,
}

impl<W: Write> Timeline<W> {
    /// Starts the JSON object and its event list.
    pub fn new(mut out: W) -> io::Result<Timeline<W>> {
        out.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
        let mut t = Timeline {
            out,
            first: true,
            pids: HashMap::new(),
            tids: HashMap::new(),
            drivers: HashMap::new(),
            flows: 0,
            tasks: 0,
        };
        t.event(
            &json!({"ph": "M", "name": "process_name", "pid": DRIVERS_PID, "tid": 0, "args": {"name": "drivers"}}),
        )?;
        Ok(t)
    }

    fn event(&mut self, e: &serde_json::Value) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, e).map_err(io::Error::other)
    }

    /// The rows of `node` and `worker`, named on first use.
    fn row(&mut self, node: NodeId, worker: WorkerId) -> io::Result<(u64, u64)> {
        let next = self.pids.len() as u64 + 1;
        let pid = *self.pids.entry(node).or_insert(next);
        if pid == next {
            self.event(&json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": format!("node {node}")}}))?;
            self.event(
                &json!({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}}),
            )?;
        }
        let next = self.tids.len() as u64 + 1;
        let tid = *self.tids.entry(worker).or_insert(next);
        if tid == next {
            self.event(&json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": format!("worker {worker}")}}))?;
        }
        Ok((pid, tid))
    }

    /// The row of `job`'s driver, with a slice over `[from, to]` for submission arrows to
    /// start in.
    fn driver(&mut self, job: JobId, from: u64, to: u64) -> io::Result<(u64, u64)> {
        let next = self.drivers.len() as u64 + 1;
        let tid = *self.drivers.entry(job).or_insert(next);
        if tid == next {
            self.event(&json!({"ph": "M", "name": "thread_name", "pid": DRIVERS_PID, "tid": tid, "args": {"name": format!("job {job}")}}))?;
            self.event(&json!({
                "ph": "X", "cat": "driver", "name": format!("job {job}"), "pid": DRIVERS_PID, "tid": tid,
                "ts": from, "dur": to.saturating_sub(from).max(1),
            }))?;
        }
        Ok((DRIVERS_PID, tid))
    }

    /// Writes one job's records (all of them: parents are found among them).
    pub fn job(&mut self, records: &[TaskRecord]) -> io::Result<()> {
        let ran = |r: &TaskRecord| r.node.zip(r.worker).zip(r.started_us);
        let mut at: HashMap<crate::client::TaskId, (NodeId, WorkerId)> = HashMap::new();
        for r in records {
            if let Some(((n, w), _)) = ran(r) {
                at.insert(r.task, (n, w));
            }
        }
        let from = records.iter().map(|r| r.submitted_us).min().unwrap_or(0);
        let to = records.iter().filter_map(|r| r.ended_us.or(r.started_us)).max().unwrap_or(from);
        for r in records {
            let Some(((node, worker), start)) = ran(r) else { continue };
            let (pid, tid) = self.row(node, worker)?;
            let end = r.ended_us.unwrap_or(to).max(start);
            let mut args = json!({
                "task": r.task.to_string(),
                "function": r.info.function,
                "state": r.state.name(),
                "attempt": r.attempt,
            });
            if let Some(e) = &r.error {
                args["error"] = json!(e);
            }
            self.event(&json!({
                "ph": "X", "cat": "task", "name": r.info.name, "pid": pid, "tid": tid,
                "ts": start, "dur": (end - start).max(1), "args": args,
            }))?;
            // Where it was submitted: its parent's run, or its job's driver.
            let (spid, stid) = match r.info.parent.and_then(|p| at.get(&p).copied()) {
                Some((n, w)) => self.row(n, w)?,
                None => self.driver(r.info.job, from, to)?,
            };
            self.flows += 1;
            let id = self.flows;
            self.event(&json!({"ph": "s", "cat": "submit", "name": "submit", "id": id, "pid": spid, "tid": stid, "ts": r.submitted_us.min(start)}))?;
            self.event(&json!({"ph": "f", "bp": "e", "cat": "submit", "name": "submit", "id": id, "pid": pid, "tid": tid, "ts": start}))?;
            self.tasks += 1;
        }
        Ok(())
    }

    /// Writes one job's get, put and transfer spans, on the rows of the processes they were
    /// in (its driver's for the driver's own).
    pub fn spans(&mut self, job: JobId, spans: &[ferry_proto::state::Span]) -> io::Result<()> {
        let from = spans.iter().map(|s| s.start_us).min().unwrap_or(0);
        let to = spans.iter().map(|s| s.end_us).max().unwrap_or(from);
        for s in spans {
            let (pid, tid) = match s.worker == job {
                true => self.driver(job, from, to)?,
                false => self.row(s.node, s.worker)?,
            };
            let mut args = json!({ "object": s.object.to_string() });
            if let Some(t) = s.task {
                args["task"] = json!(t.to_string());
            }
            self.event(&json!({
                "ph": "X", "cat": s.kind.name(), "name": s.kind.name(), "pid": pid, "tid": tid,
                "ts": s.start_us, "dur": (s.end_us - s.start_us).max(1), "args": args,
            }))?;
        }
        Ok(())
    }

    /// Ends the JSON; returns the output and how many task runs it holds.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()?;
        Ok((self.out, self.tasks))
    }
}

/// Writes the timeline of `job` (every job's if `None`) from the task history `history`
/// keeps (see `Client::into_history`) to `out`, a job at a time; returns how many task runs
/// it holds.
pub fn write<W: Write>(history: &mut Client, job: Option<JobId>, out: W) -> Result<(W, u64), TimelineError> {
    let jobs: BTreeSet<JobId> = match job {
        Some(j) => [j].into(),
        None => {
            let (rows, _) = history.summarize_tasks(None)?.ok_or(TimelineError::NoHistory)?;
            rows.iter().map(|r| r.job).collect()
        }
    };
    let mut t = Timeline::new(out)?;
    for j in jobs {
        let filter = TaskFilter { job: Some(j), ..Default::default() };
        let (records, _, _) = history.list_tasks(&filter, PAGE)?.ok_or(TimelineError::NoHistory)?;
        t.job(&records)?;
        let spans = history.list_spans(j)?.ok_or(TimelineError::NoHistory)?;
        t.spans(j, &spans)?;
    }
    Ok(t.finish()?)
}

/// Why a timeline could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimelineError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write the timeline: {0}")]
    Write(#[from] io::Error),
    #[error("the node keeps no task history (ask the head, or its control store)")]
    NoHistory,
}
