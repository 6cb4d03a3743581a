//! The cluster as people and tools see it (Ray's state API, `ray list tasks|actors|workers`):
//! each task's current state and where it ran, from the task history the cluster keeps
//! (see `Config::task_events`), and exact counts by function and state; each actor and each
//! process, from the nodes' own tables.

use crate::error::{Error, Result};
use crate::runtime::runtime;
pub use ferry_proto::msg::{ActorView, ProcKind, ProcView};
use ferry_proto::msg::{FromNode, ToNode};
pub use ferry_proto::state::{
    HistoryStats, Span, SpanKind, TaskFilter, TaskInfo, TaskRecord, TaskState, TaskSummaryRow,
};
use ferry_proto::{TaskId, WorkerId};

/// Tasks [`list_tasks`] found.
#[derive(Debug, Clone)]
pub struct TaskList {
    /// The newest that matched, newest first.
    pub tasks: Vec<TaskRecord>,
    /// How many matched in all (more than `tasks.len()` when the limit cut).
    pub matched: u64,
    /// The history's size, its limit, and what it dropped (never silently).
    pub stats: HistoryStats,
}

/// Asks the cluster's history (its control store, or this node outside a cluster).
fn ask(make: impl Fn(u64) -> ToNode) -> Result<FromNode> {
    let rt = runtime()?;
    // This process's own events first, so that what it just did is there.
    rt.flush_task_events();
    let conn = rt.control_conn()?;
    rt.call_at(&conn, make)
}

/// Turns recording this process's task events on or off from now on (it starts as
/// `Config::task_events` says). What was recorded before stays in the history; tasks
/// submitted while it is off are not in it, and their counts are not either.
pub fn set_task_events(on: bool) -> Result<()> {
    runtime()?.set_task_events(on);
    Ok(())
}

/// Sends the task events this process recorded to the cluster's history now (they go in
/// batches a fraction of a second apart otherwise).
pub fn flush_task_events() -> Result<()> {
    runtime()?.flush_task_events();
    Ok(())
}

fn unexpected(m: FromNode) -> Error {
    Error::Connection { detail: format!("the cluster's task history answered {m:?}") }
}

/// The tasks that match `filter`, newest first, at most `limit` of them. Events reach the
/// history in batches (a fraction of a second after they happen).
pub fn list_tasks(filter: &TaskFilter, limit: u32) -> Result<TaskList> {
    match ask(|req| ToNode::ListTasks { req, filter: filter.clone(), limit })? {
        FromNode::Tasks { tasks, matched, stats: Some(stats), .. } => Ok(TaskList { tasks, matched, stats }),
        FromNode::Tasks { stats: None, .. } => Err(Error::Connection {
            detail: "the node asked keeps no task history (its control store does): try again".into(),
        }),
        m => Err(unexpected(m)),
    }
}

/// One task's record, if the history has it.
pub fn get_task(task: TaskId) -> Result<Option<TaskRecord>> {
    let filter = TaskFilter { task: Some(task), ..Default::default() };
    Ok(list_tasks(&filter, 1)?.tasks.pop())
}

/// How many tasks of each function are in each state (of job `job`, or all), exact even
/// where records were dropped; and the history's figures.
pub fn summarize_tasks(job: Option<WorkerId>) -> Result<(Vec<TaskSummaryRow>, HistoryStats)> {
    match ask(|req| ToNode::SummarizeTasks { req, job })? {
        FromNode::TaskSummary { rows, stats: Some(stats), .. } => Ok((rows, stats)),
        m => Err(unexpected(m)),
    }
}

/// The `get`s that waited, `put`s into the store and transfers between nodes of job `job`
/// (this program's, if `None`) that took 200 µs or more, oldest first: the timeline's slices.
pub fn list_spans(job: Option<WorkerId>) -> Result<Vec<Span>> {
    let job = match job {
        Some(j) => j,
        None => runtime()?.me(),
    };
    match ask(|req| ToNode::ListSpans { req, job })? {
        FromNode::Spans { spans: Some(spans), .. } => Ok(spans),
        m => Err(unexpected(m)),
    }
}

/// Answers of every node to one question, joined; a node that does not answer is an error
/// naming it (the cluster's view is then partial, and saying so beats a short list).
fn from_each_node<T>(make: impl Fn(u64) -> ToNode, take: impl Fn(FromNode) -> Option<Vec<T>>) -> Result<Vec<T>> {
    let mut all = Vec::new();
    for (node, answer) in runtime()?.ask_each_node(make) {
        let answer = answer.map_err(|e| Error::Connection {
            detail: format!("node {} at {} did not answer ({e}); see `ferry status`", node.node, node.addr),
        })?;
        all.extend(take(answer).ok_or_else(|| Error::Connection {
            detail: format!("node {} at {} answered something else", node.node, node.addr),
        })?);
    }
    Ok(all)
}

/// Every actor each node keeps a record of: living ones, and the dead (each with why it
/// died; a node keeps the last 100,000, `FERRY_DEAD_ACTORS_KEPT`), as `ferry list actors`.
pub fn list_actors() -> Result<Vec<ActorView>> {
    from_each_node(
        |req| ToNode::ListActors { req },
        |m| match m {
            FromNode::Actors { actors, .. } => Some(actors),
            _ => None,
        },
    )
}

/// Every process registered with each node: drivers, workers (idle, leased or hosting an
/// actor), tools, as `ferry list workers`.
pub fn list_workers() -> Result<Vec<ProcView>> {
    from_each_node(
        |req| ToNode::ListProcs { req },
        |m| match m {
            FromNode::Procs { procs, .. } => Some(procs),
            _ => None,
        },
    )
}
