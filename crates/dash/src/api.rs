//! The dashboard's routes: the page and its assets (bundled), login, and the JSON API the
//! page polls (`/api/...`). Ids go out as hex strings (a u64 does not fit a JavaScript
//! number).

use crate::auth;
use crate::source::{now_ms, Sample, Source, KEPT};
use crate::HeadFacts;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ferry_node::client::{
    ActorView, JobId, NodeId, NodeView, TaskFilter, TaskId, TaskRecord, TaskState, TaskSummaryRow,
};
use ferry_types::sync::MutexExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

pub const INDEX: &str = include_str!("../assets/index.html");
pub const LOGIN: &str = include_str!("../assets/login.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// Most tasks one page of the task table shows.
pub const MAX_PAGE: u32 = 1000;

/// What the routes share.
pub struct App {
    pub source: Source,
    pub access: String,
    pub samples: Mutex<VecDeque<Sample>>,
    pub head_facts: Option<Arc<dyn Fn() -> HeadFacts + Send + Sync>>,
}

impl App {
    pub fn new(opts: crate::DashOptions, access: String) -> App {
        App {
            source: Source { node: opts.node, token: opts.token },
            access,
            samples: Mutex::new(VecDeque::with_capacity(KEPT)),
            head_facts: opts.head_facts,
        }
    }
}

/// A failed API request: its status and what to tell the page.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl ApiError {
    pub fn internal(msg: String) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Runs a blocking client call off the runtime's thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError(StatusCode::BAD_GATEWAY, format!("the head did not answer: {e}"))),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {e}"))),
    }
}

pub fn router(app: Arc<App>) -> Router {
    let private = Router::new()
        .route("/api/cluster", get(cluster))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}/log", get(job_log))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/tasks/{id}/log", get(task_log))
        .route("/api/summary", get(summary))
        .route("/api/timeline", get(timeline))
        .route("/api/actors", get(actors))
        .route("/api/memory", get(memory))
        .route("/metrics", get(crate::metrics::metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/", get(auth::index))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/assets/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], APP_JS) }))
        .route("/assets/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }))
        .merge(private)
        .layer(middleware::from_fn(safe_headers))
        .layer(DefaultBodyLimit::max(4096))
        .with_state(app)
}

async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if auth::allowed(&app, req.headers()) {
        next.run(req).await
    } else {
        auth::refused()
    }
}

/// Headers every answer carries: nothing of ours in another site's frame, no script but ours,
/// no token in a referrer, nothing cached.
async fn safe_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn node_json(n: &NodeView, head: &str) -> Value {
    let resources: Vec<Value> = n
        .total
        .0
        .iter()
        .map(|(name, total)| {
            json!({
                "name": name,
                "total": *total as f64 / 1000.0,
                "available": n.available.get_milli(name) as f64 / 1000.0,
            })
        })
        .collect();
    json!({
        "node": n.node.to_string(),
        "addr": n.addr,
        "head": n.addr == head,
        "alive": n.alive,
        "resources": resources,
        "workers": n.workers,
        "actors": n.actors,
        "objects": n.objects,
        "object_bytes": n.object_bytes,
        "spilled_bytes": n.spilled_bytes,
        "silent_ms": n.silent_ms,
    })
}

async fn cluster(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let source = app.source.clone();
    let nodes = blocking(move || source.nodes()).await?;
    let samples: Vec<Sample> = app.samples.locked().iter().cloned().collect();
    let nodes: Vec<Value> = nodes.iter().map(|n| node_json(n, &app.source.node)).collect();
    Ok(Json(json!({ "nodes": nodes, "samples": samples, "now_ms": now_ms() })))
}

/// Counts per state by name, with their total and how many ended.
fn counts_json(counts: &[u64]) -> Value {
    let by: serde_json::Map<String, Value> = TaskState::ALL
        .iter()
        .map(|s| (s.name().to_string(), counts.get(s.index()).copied().unwrap_or(0).into()))
        .collect();
    let ended: u64 =
        TaskState::ALL.iter().filter(|s| s.is_final()).map(|s| counts.get(s.index()).copied().unwrap_or(0)).sum();
    json!({ "by_state": by, "total": counts.iter().sum::<u64>(), "ended": ended })
}

/// Tasks per job, every function's counts added.
fn per_job(rows: &[TaskSummaryRow]) -> BTreeMap<JobId, Vec<u64>> {
    let mut jobs: BTreeMap<JobId, Vec<u64>> = BTreeMap::new();
    for r in rows {
        let c = jobs.entry(r.job).or_insert_with(|| vec![0; TaskState::ALL.len()]);
        for (i, n) in r.counts.iter().enumerate() {
            if let Some(slot) = c.get_mut(i) {
                *slot += n;
            }
        }
    }
    jobs
}

async fn jobs(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let source = app.source.clone();
    let (jobs, rows) = blocking(move || {
        let jobs = source.node()?.jobs().map_err(|e| e.to_string())?;
        Ok((jobs, source.summary(None).unwrap_or_default()))
    })
    .await?;
    let mut tasks = per_job(&rows);
    let mut out: Vec<Value> = jobs
        .iter()
        .rev()
        .map(|j| {
            let counts = tasks.remove(&j.driver).unwrap_or_else(|| vec![0; TaskState::ALL.len()]);
            json!({
                "id": j.id.to_string(),
                "name": j.name,
                "args": j.args,
                "status": j.status(),
                "code": j.code,
                "started_ms": j.started_ms,
                "ended_ms": j.ended_ms,
                "driver": j.driver.to_string(),
                "tasks": counts_json(&counts),
            })
        })
        .collect();
    // Drivers that joined the cluster themselves (not through `ferry job submit`).
    for (driver, counts) in tasks {
        out.push(json!({
            "id": null,
            "name": format!("driver {driver}"),
            "args": [],
            "status": "",
            "code": null,
            "started_ms": null,
            "ended_ms": null,
            "driver": driver.to_string(),
            "tasks": counts_json(&counts),
        }));
    }
    Ok(Json(json!({ "jobs": out })))
}

#[derive(serde::Deserialize)]
struct LogQuery {
    offset: Option<u64>,
}

async fn job_log(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    let source = app.source.clone();
    let offset = q.offset.unwrap_or(0);
    let (data, next, ended) = blocking(move || source.node()?.job_log(id, offset).map_err(|e| e.to_string())).await?;
    Ok(Json(json!({ "text": String::from_utf8_lossy(&data), "next": next, "ended": ended })))
}

fn task_json(t: &TaskRecord) -> Value {
    json!({
        "task": t.task.to_string(),
        "function": t.info.function,
        "name": t.info.name,
        "job": t.info.job.to_string(),
        "parent": t.info.parent.map(|p| p.to_string()),
        "actor": t.info.actor.map(|a| format!("{:016x}", a.0)),
        "creation": t.info.creation,
        "state": t.state.name(),
        "attempt": t.attempt,
        "node": t.node.map(|n| n.to_string()),
        "worker": t.worker.map(|w| w.to_string()),
        "error": t.error,
        "submitted_us": t.submitted_us,
        "started_us": t.started_us,
        "ended_us": t.ended_us,
    })
}

#[derive(serde::Deserialize, Default)]
struct TaskQuery {
    state: Option<String>,
    job: Option<String>,
    name: Option<String>,
    node: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

fn filter(q: &TaskQuery) -> Result<TaskFilter, ApiError> {
    let some = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let mut f = TaskFilter::default();
    if let Some(s) = some(&q.state) {
        f.state = Some(TaskState::parse(&s).ok_or_else(|| bad(format!("{s:?} is not a task state")))?);
    }
    if let Some(j) = some(&q.job) {
        f.job = Some(j.parse::<JobId>().map_err(bad)?);
    }
    if let Some(n) = some(&q.node) {
        f.node = Some(NodeId(u64::from_str_radix(&n, 16).map_err(|_| bad(format!("{n:?} is not a node id")))?));
    }
    f.name = some(&q.name);
    Ok(f)
}

async fn tasks(State(app): State<Arc<App>>, Query(q): Query<TaskQuery>) -> Result<Json<Value>, ApiError> {
    let f = filter(&q)?;
    let limit = q.limit.unwrap_or(50).min(MAX_PAGE);
    let offset = q.offset.unwrap_or(0).min(100_000);
    let source = app.source.clone();
    let (list, matched, stats) = blocking(move || {
        let mut h = source.history()?;
        h.list_tasks(&f, offset + limit).map_err(|e| e.to_string())?.ok_or_else(|| "no task history".to_string())
    })
    .await?;
    let page: Vec<Value> = list.iter().skip(offset as usize).map(task_json).collect();
    Ok(Json(json!({
        "tasks": page,
        "matched": matched,
        "offset": offset,
        "limit": limit,
        "history": {
            "records": stats.records,
            "per_job_limit": stats.per_job_limit,
            "dropped_records": stats.dropped_records,
            "dropped_events": stats.dropped_events,
        },
    })))
}

async fn task(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let task = id.parse::<TaskId>().map_err(bad)?;
    let source = app.source.clone();
    let found = blocking(move || {
        let mut h = source.history()?;
        let f = TaskFilter { task: Some(task), ..Default::default() };
        Ok(h.list_tasks(&f, 1).map_err(|e| e.to_string())?.and_then(|(mut t, _, _)| t.pop()))
    })
    .await?;
    match found {
        Some(t) => Ok(Json(task_json(&t))),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no task {task} in the history: not reported yet, or its record was dropped"),
        )),
    }
}

#[derive(serde::Deserialize)]
struct SummaryQuery {
    job: Option<String>,
}

async fn summary(State(app): State<Arc<App>>, Query(q): Query<SummaryQuery>) -> Result<Json<Value>, ApiError> {
    let job = q.job.as_deref().filter(|j| !j.is_empty()).map(|j| j.parse::<JobId>()).transpose().map_err(bad)?;
    let source = app.source.clone();
    let rows = blocking(move || source.summary(job)).await?;
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "job": r.job.to_string(),
                "function": r.function,
                "tasks": counts_json(&r.counts),
                "mean_wait_ms": (r.wait.count > 0).then(|| r.wait.sum_us as f64 / r.wait.count as f64 / 1000.0),
                "mean_run_ms": (r.run.count > 0).then(|| r.run.sum_us as f64 / r.run.count as f64 / 1000.0),
            })
        })
        .collect();
    Ok(Json(json!({ "functions": rows })))
}

/// Bytes written on a blocking thread, sent to the response in chunks as they are made.
struct Chunks(tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>);

impl std::io::Write for Chunks {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(axum::body::Bytes::copy_from_slice(b)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the download was closed"))?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `/api/timeline?job=`: the tasks' timeline (Chrome trace-event JSON) as a download,
/// streamed as it is written.
async fn timeline(State(app): State<Arc<App>>, Query(q): Query<SummaryQuery>) -> Result<Response, ApiError> {
    let job = q.job.as_deref().filter(|j| !j.is_empty()).map(|j| j.parse::<JobId>()).transpose().map_err(bad)?;
    let source = app.source.clone();
    let mut history = blocking(move || source.history()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(256 << 10, Chunks(tx.clone()));
        if let Err(e) = ferry_node::timeline::write(&mut history, job, out) {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"ferry-timeline.json\""),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
struct ActorQuery {
    /// `alive` (any state but dead) or `dead`.
    state: Option<String>,
    /// A part of the class or the name.
    class: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `/api/actors`: a page of the cluster's actors, living ones first, and how many match; with
/// tens of thousands of actors a page stays small (the page Ray's dashboard renders whole).
async fn actors(State(app): State<Arc<App>>, Query(q): Query<ActorQuery>) -> Result<Json<Value>, ApiError> {
    let dead_wanted = match q.state.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some("alive") => Some(false),
        Some("dead") => Some(true),
        Some(other) => return Err(bad(format!("{other:?} is not an actor state to filter by: alive or dead"))),
    };
    let part = q.class.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let limit = q.limit.unwrap_or(50).min(MAX_PAGE) as usize;
    let offset = q.offset.unwrap_or(0) as usize;
    let source = app.source.clone();
    let per_node = blocking(move || source.each(|c| c.list_actors())).await?;
    let all: Vec<&ActorView> = per_node.iter().flat_map(|(_, a)| a).collect();
    let dead = all.iter().filter(|a| a.state == "dead").count();
    let mut matched: Vec<&ActorView> = all
        .iter()
        .copied()
        .filter(|a| dead_wanted.is_none_or(|d| (a.state == "dead") == d))
        .filter(|a| {
            part.as_deref().is_none_or(|p| a.class.contains(p) || a.name.as_deref().is_some_and(|n| n.contains(p)))
        })
        .collect();
    // Living first, then by class, then by id: a stable order to page through.
    let end = (offset + limit).min(matched.len());
    let key = |a: &&ActorView| (a.state == "dead", a.class.clone(), a.actor.0);
    if offset < matched.len() {
        matched.select_nth_unstable_by_key(end.saturating_sub(1), key);
        matched[..end].sort_unstable_by_key(key);
    }
    let page: Vec<Value> = matched.iter().skip(offset).take(limit).map(|a| ferry_node::client::actor_json(a)).collect();
    Ok(Json(json!({
        "actors": page,
        "matched": matched.len(),
        "total": all.len(),
        "alive": all.len() - dead,
        "dead": dead,
        "offset": offset,
        "limit": limit,
    })))
}

async fn memory(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let source = app.source.clone();
    let per_node = blocking(move || source.each(|c| c.memory())).await?;
    let mut m = ferry_node::memory::join(&per_node);
    m.objects.sort_by_key(|o| std::cmp::Reverse(o.size));
    let total = m.objects.len();
    let objects: Vec<Value> = m
        .objects
        .iter()
        .take(MAX_PAGE as usize)
        .map(|o| json!({ "object": o.object, "owner": o.owner, "size": o.size, "location": o.location, "node": o.node, "why": o.why() }))
        .collect();
    Ok(Json(
        json!({ "objects": objects, "total": total, "pending_tasks": m.pending_tasks, "unreachable": m.unreachable }),
    ))
}

/// `/api/tasks/{id}/log`: what the task printed, from its worker's log on its node.
async fn task_log(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let task = id.parse::<TaskId>().map_err(bad)?;
    let source = app.source.clone();
    let lines = blocking(move || {
        let mut h = source.history()?;
        let f = TaskFilter { task: Some(task), ..Default::default() };
        let Some(t) = h.list_tasks(&f, 1).map_err(|e| e.to_string())?.and_then(|(mut t, _, _)| t.pop()) else {
            return Ok(Vec::new());
        };
        let Some(node) = t.node else { return Ok(Vec::new()) };
        let mut found = Vec::new();
        for (n, c) in source.node()?.each_node(&source.token).map_err(|e| e.to_string())? {
            if n.node == node {
                let mut c = c.map_err(|e| e.to_string())?;
                found = ferry_node::worker_logs::task_lines(&mut c, &t).map_err(|e| e.to_string())?;
            }
        }
        Ok(found)
    })
    .await?;
    Ok(Json(json!({ "lines": lines })))
}
