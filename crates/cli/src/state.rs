//! `ferry list`, `ferry summary`, `ferry get`: the cluster's state for people (as Ray's
//! `ray list|summary|get`), from the task history its control store keeps and the head's
//! views of nodes and jobs. Tables by default, JSON with `--format json`.

use crate::Target;
use clap::{Subcommand, ValueEnum};
use ferry_node::client::{Client, HistoryStats, JobId, NodeId, TaskFilter, TaskId, TaskRecord, TaskState};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// What every `ferry list` takes, as `ray list`.
#[derive(clap::Args)]
pub struct ListOpts {
    /// Only those with KEY=VALUE (a field as `--format json` names it; names and classes match
    /// by a part). May be given several times.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// At most this many (default 100).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Every field, not just the main ones.
    #[arg(long)]
    pub detail: bool,
    /// Table or JSON.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Subcommand)]
pub enum ListWhat {
    /// Tasks (and actor calls), newest first: id, state, function, job, node, attempt, times.
    /// Filter keys: state, job, name (part of the function or name), node, task.
    Tasks {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        opts: ListOpts,
    },
    /// Actors (alive first, then dead ones): id, state, class, name, node, restarts, why it
    /// died.
    Actors {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        opts: ListOpts,
    },
    /// Worker processes (and drivers) of every node: state (idle, leased, actor, suspended), pid.
    Workers {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        opts: ListOpts,
    },
    /// Objects in the nodes' stores, biggest first (`ferry memory` says why each is alive).
    Objects {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        opts: ListOpts,
    },
    /// Jobs the head ran.
    Jobs {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        opts: ListOpts,
    },
    /// The cluster's nodes.
    Nodes {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        opts: ListOpts,
    },
}

#[derive(Subcommand)]
pub enum SummaryWhat {
    /// Actors by class and state.
    Actors {
        #[command(flatten)]
        target: Target,
        /// Table or JSON.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Objects per node: in the store and spilled, with their bytes.
    Objects {
        #[command(flatten)]
        target: Target,
        /// Table or JSON.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Tasks by function and state: exact counts, even where records were dropped.
    Tasks {
        #[command(flatten)]
        target: Target,
        /// Only this job's (its id, as `ferry list tasks` shows it).
        #[arg(long)]
        job: Option<String>,
        /// Table or JSON.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum GetWhat {
    /// One actor, every field.
    Actor {
        #[command(flatten)]
        target: Target,
        /// The actor's id (16 hex digits, as `ferry list actors` shows it).
        id: String,
        /// Table or JSON.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// One task, every field.
    Task {
        #[command(flatten)]
        target: Target,
        /// The task's id (32 hex digits, as `ferry list tasks` shows it).
        id: String,
        /// Table or JSON.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// The client of whatever keeps the task history: the node at the target, or its cluster's
/// control store.
fn history(target: &Target) -> Result<Client, String> {
    let (client, token) = target.connect()?;
    client.into_history(&token).map_err(|e| e.to_string())
}

fn parse_filter(filters: &[String]) -> Result<TaskFilter, String> {
    let mut f = TaskFilter::default();
    for kv in filters {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("filter {kv:?} is not KEY=VALUE"))?;
        match k.trim() {
            "state" => {
                let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.name()).collect();
                f.state = Some(
                    TaskState::parse(v)
                        .ok_or_else(|| format!("{v:?} is not a task state: one of {}", names.join(", ")))?,
                )
            }
            "job" => f.job = Some(v.parse::<JobId>()?),
            "name" | "function" => f.name = Some(v.to_string()),
            "node" => {
                f.node = Some(NodeId(
                    u64::from_str_radix(v.trim(), 16).map_err(|_| format!("{v:?} is not a node id (16 hex digits)"))?,
                ))
            }
            "task" | "id" => f.task = Some(v.parse::<TaskId>()?),
            other => return Err(format!("cannot filter tasks by {other:?}: use state, job, name, node or task")),
        }
    }
    Ok(f)
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    println!("{}", serde_json::to_string_pretty(v).map_err(|e| e.to_string())?);
    Ok(())
}

/// Unix microseconds as a UTC time of day with milliseconds.
fn time(us: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(us);
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:02}:{:02}:{:02}.{:03}", secs / 3600 % 24, secs / 60 % 60, secs % 60, us / 1000 % 1000)
}

fn dropped_note(s: &HistoryStats) -> Option<String> {
    (s.dropped_records > 0 || s.dropped_events > 0).then(|| {
        format!(
            "note: the history keeps {} records per job; {} older records were dropped (their counts stay in \
             `ferry summary tasks`), and {} events were dropped before they reached it",
            s.per_job_limit, s.dropped_records, s.dropped_events
        )
    })
}

/// The printable form of a name that came over the network.
pub(crate) fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

pub fn list(what: ListWhat) -> Result<(), String> {
    match what {
        ListWhat::Actors { target, opts } => crate::views::list_actors(&target, &opts),
        ListWhat::Workers { target, opts } => crate::views::list_workers(&target, &opts),
        ListWhat::Objects { target, opts } => crate::views::list_objects(&target, &opts),
        ListWhat::Tasks { target, opts } => {
            let filter = parse_filter(&opts.filters)?;
            let mut c = history(&target)?;
            let limit = u32::try_from(opts.limit).unwrap_or(u32::MAX);
            let (tasks, matched, stats) = c
                .list_tasks(&filter, limit)
                .map_err(|e| e.to_string())?
                .ok_or("the control store keeps no task history")?;
            if let Format::Json = opts.format {
                return json(&serde_json::json!({ "tasks": tasks, "matched": matched, "history": stats }));
            }
            print_tasks(&tasks, opts.detail);
            println!("{} of {matched} matching tasks shown", tasks.len());
            if let Some(n) = dropped_note(&stats) {
                println!("{n}");
            }
            Ok(())
        }
        ListWhat::Jobs { target, opts } => {
            let (mut c, _) = target.connect()?;
            let jobs = c.jobs().map_err(|e| e.to_string())?;
            let rows = jobs
                .iter()
                .map(|j| {
                    let mut v = serde_json::to_value(j).unwrap_or_default();
                    v["status"] = j.status().into();
                    v["started"] = time(j.started_ms * 1000).into();
                    v
                })
                .collect();
            show_rows(
                "jobs",
                rows,
                &[
                    ("ID", "id", 4),
                    ("STATUS", "status", 10),
                    ("NAME", "name", 24),
                    ("DRIVER", "driver", 16),
                    ("STARTED (UTC)", "started", 13),
                    ("EXIT", "code", 4),
                ],
                &opts,
            )
        }
        ListWhat::Nodes { target, opts } => {
            let (mut c, token) = target.connect()?;
            let nodes = match c.control_view(&token).map_err(|e| e.to_string())? {
                Some(n) => n,
                None => c.cluster().map_err(|e| e.to_string())?.unwrap_or_default(),
            };
            let nodes: Vec<_> = nodes.into_iter().filter(|n| !n.head).collect();
            if nodes.is_empty() && !matches!(opts.format, Format::Json) {
                let stats = c.stats().map_err(|e| e.to_string())?;
                println!(
                    "(not in a cluster) node {} at {}: {} available of {}",
                    stats.node.map(|n| n.to_string()).unwrap_or_default(),
                    c.addr(),
                    stats.available,
                    stats.total
                );
                return Ok(());
            }
            let rows = nodes
                .iter()
                .map(|n| {
                    let mut v = serde_json::to_value(n).unwrap_or_default();
                    v["node"] = n.node.to_string().into();
                    v["state"] = if n.alive { "alive" } else { "dead" }.into();
                    v["total"] = n.total.to_string().into();
                    v["available"] = n.available.to_string().into();
                    v
                })
                .collect();
            show_rows(
                "nodes",
                rows,
                &[
                    ("NODE", "node", 16),
                    ("ADDRESS", "addr", 22),
                    ("STATE", "state", 6),
                    ("TOTAL", "total", 24),
                    ("AVAILABLE", "available", 24),
                    ("WORKERS", "workers", 7),
                    ("ACTORS", "actors", 7),
                    ("OBJECTS", "objects", 8),
                ],
                &opts,
            )
        }
    }
}

/// A field of a row as text: strings bare, nothing as "-".
fn field(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

/// Prints `rows` (each an object, as `--format json` shows it) as `ferry list` does: only
/// those matching every `--filter` (a field's text equal, ignoring case, or containing the
/// value for names and classes), at most `--limit`, as a table of `columns` (header, field,
/// width), every field with `--detail`, or JSON.
pub(crate) fn show_rows(
    kind: &str,
    rows: Vec<serde_json::Value>,
    columns: &[(&str, &str, usize)],
    opts: &ListOpts,
) -> Result<(), String> {
    let mut want = Vec::new();
    for kv in &opts.filters {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("filter {kv:?} is not KEY=VALUE"))?;
        let k = k.trim();
        if let Some(first) = rows.first() {
            if first.get(k).is_none() {
                let keys: Vec<&str> =
                    first.as_object().into_iter().flat_map(|o| o.keys()).map(String::as_str).collect();
                return Err(format!("cannot filter {kind} by {k:?}: use one of {}", keys.join(", ")));
            }
        }
        want.push((k.to_string(), v.trim().to_string()));
    }
    let matched: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| {
            want.iter().all(|(k, v)| {
                let f = field(&r[k.as_str()]);
                f.eq_ignore_ascii_case(v) || (matches!(k.as_str(), "name" | "class") && f.contains(v.as_str()))
            })
        })
        .collect();
    let shown = &matched[..matched.len().min(opts.limit)];
    if let Format::Json = opts.format {
        return json(&serde_json::json!({ kind: shown, "matched": matched.len() }));
    }
    if opts.detail {
        for r in shown {
            for (k, v) in r.as_object().into_iter().flatten() {
                println!("  {k:<14} {}", field(v));
            }
            println!();
        }
    } else {
        let line = |cells: Vec<String>| {
            let mut out = String::new();
            for ((_, _, w), c) in columns.iter().zip(cells) {
                let c: String = c.chars().take(*w.max(&40)).collect();
                out.push_str(&format!("{c:<w$} ", w = *w));
            }
            println!("{}", out.trim_end());
        };
        line(columns.iter().map(|(h, _, _)| h.to_string()).collect());
        for r in shown {
            line(columns.iter().map(|(_, f, _)| field(&r[*f])).collect());
        }
    }
    println!("{} of {} matching {kind} shown", shown.len(), matched.len());
    Ok(())
}

fn print_tasks(tasks: &[TaskRecord], detail: bool) {
    if detail {
        for t in tasks {
            print_task(t);
            println!();
        }
        return;
    }
    println!(
        "{:<32} {:<18} {:<24} {:<16} {:<16} {:>3} {:<12} {:>9}",
        "TASK", "STATE", "NAME", "JOB", "NODE", "TRY", "SUBMITTED", "RAN (ms)"
    );
    for t in tasks {
        let ran = match (t.started_us, t.ended_us) {
            (Some(s), Some(e)) => format!("{:.1}", e.saturating_sub(s) as f64 / 1000.0),
            _ => "-".into(),
        };
        println!(
            "{:<32} {:<18} {:<24} {:<16} {:<16} {:>3} {:<12} {:>9}",
            t.task.to_string(),
            t.state.name(),
            clean(&t.info.name).chars().take(24).collect::<String>(),
            t.info.job.to_string(),
            t.node.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            t.attempt,
            time(t.submitted_us),
            ran
        );
    }
}

fn print_task(t: &TaskRecord) {
    println!("task {}: {}", t.task, t.state.name());
    println!("  function:  {}", clean(&t.info.function));
    println!("  name:      {}", clean(&t.info.name));
    println!("  job:       {}", t.info.job);
    if let Some(p) = t.info.parent {
        println!("  parent:    {p}");
    }
    if let Some(a) = t.info.actor {
        println!("  actor:     {a:?}{}", if t.info.creation { " (its creation)" } else { "" });
    }
    println!("  attempt:   {}", t.attempt);
    println!("  node:      {}", t.node.map(|n| n.to_string()).unwrap_or_else(|| "-".into()));
    println!("  worker:    {}", t.worker.map(|w| w.to_string()).unwrap_or_else(|| "-".into()));
    println!("  submitted: {} UTC", time(t.submitted_us));
    if let Some(s) = t.started_us {
        println!("  started:   {} UTC", time(s));
    }
    if let Some(e) = t.ended_us {
        println!("  ended:     {} UTC", time(e));
    }
    if let Some(e) = &t.error {
        println!("  error:     {}", clean(e));
    }
}

pub fn summary(what: SummaryWhat) -> Result<(), String> {
    let (target, job, format) = match what {
        SummaryWhat::Actors { target, format } => return crate::views::summary_actors(&target, format),
        SummaryWhat::Objects { target, format } => return crate::views::summary_objects(&target, format),
        SummaryWhat::Tasks { target, job, format } => (target, job, format),
    };
    let job = job.map(|j| j.parse::<JobId>()).transpose()?;
    let mut c = history(&target)?;
    let (rows, stats) =
        c.summarize_tasks(job).map_err(|e| e.to_string())?.ok_or("the control store keeps no task history")?;
    if let Format::Json = format {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let counts: serde_json::Map<String, serde_json::Value> =
                    TaskState::ALL.iter().map(|s| (s.name().to_string(), r.counts[s.index()].into())).collect();
                serde_json::json!({ "job": r.job.to_string(), "function": r.function, "counts": counts })
            })
            .collect();
        return json(&serde_json::json!({ "functions": rows, "history": stats }));
    }
    print!("{:<16} {:<40}", "JOB", "FUNCTION");
    for s in TaskState::ALL {
        print!(" {:>8}", short(s));
    }
    println!(" {:>8}", "TOTAL");
    for r in &rows {
        print!("{:<16} {:<40}", r.job.to_string(), clean(&r.function).chars().take(40).collect::<String>());
        for s in TaskState::ALL {
            print!(" {:>8}", r.counts[s.index()]);
        }
        println!(" {:>8}", r.counts.iter().sum::<u64>());
    }
    println!(
        "history: {} records kept, at most {} per job, about {} KiB",
        stats.records,
        stats.per_job_limit,
        stats.bytes / 1024
    );
    if let Some(n) = dropped_note(&stats) {
        println!("{n}");
    }
    Ok(())
}

/// A state's column heading.
fn short(s: TaskState) -> &'static str {
    match s {
        TaskState::WaitingForArgs => "ARGS",
        TaskState::WaitingForWorker => "WAITING",
        TaskState::Pushed => "PUSHED",
        TaskState::Running => "RUNNING",
        TaskState::Blocked => "BLOCKED",
        TaskState::Finished => "FINISHED",
        TaskState::Failed => "FAILED",
        TaskState::Cancelled => "CANCEL",
    }
}

pub fn get(what: GetWhat) -> Result<(), String> {
    let (target, id, format) = match what {
        GetWhat::Actor { target, id, format } => return crate::views::get_actor(&target, &id, format),
        GetWhat::Task { target, id, format } => (target, id, format),
    };
    let task = id.parse::<TaskId>()?;
    let mut c = history(&target)?;
    let filter = TaskFilter { task: Some(task), ..Default::default() };
    let (mut tasks, _, _) =
        c.list_tasks(&filter, 1).map_err(|e| e.to_string())?.ok_or("the control store keeps no task history")?;
    let t = tasks.pop().ok_or_else(|| {
        format!("no task {task} in the history: it may not have been reported yet, or its record was dropped")
    })?;
    match format {
        Format::Json => json(&t),
        Format::Table => {
            print_task(&t);
            Ok(())
        }
    }
}

/// `ferry timeline`: streamed to a file made next to `output` and renamed into place.
pub fn timeline(target: &Target, job: Option<&str>, output: &std::path::Path) -> Result<(), String> {
    let job = job.map(|j| j.parse::<JobId>()).transpose()?;
    let mut c = history(target)?;
    let part = output.with_extension("json.part");
    let file = std::fs::File::create(&part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let written = ferry_node::timeline::write(&mut c, job, std::io::BufWriter::with_capacity(1 << 20, file));
    let (_, tasks) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e.to_string());
        }
    };
    std::fs::rename(&part, output).map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    println!("wrote {tasks} task runs to {}; open it in https://ui.perfetto.dev or chrome://tracing", output.display());
    Ok(())
}
