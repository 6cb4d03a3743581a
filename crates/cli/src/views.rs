//! `ferry list actors|workers|objects`, `ferry get actor`, `ferry summary actors|objects`,
//! `ferry memory` and `ferry logs`: what every node of the cluster says of its actors,
//! processes, objects and workers' output, joined (as Ray's `ray list actors`, `ray memory`,
//! `ray logs`). Tables, or JSON with `--format json`.

use crate::state::{clean, json, show_rows, Format, ListOpts};
use crate::Target;
use ferry_node::client::{actor_json, ActorView, Client, NodeView, ProcView, StoredInfo};
use ferry_node::memory::Obj;
use std::collections::BTreeMap;

/// Every live node's answer to `ask`; nodes that cannot be asked are reported and skipped.
fn from_each<T>(
    target: &Target,
    mut ask: impl FnMut(&mut Client) -> Result<T, String>,
) -> Result<Vec<(NodeView, T)>, String> {
    let (client, token) = target.connect()?;
    let mut out = Vec::new();
    for (node, c) in client.each_node(&token).map_err(|e| e.to_string())? {
        match c.map_err(|e| e.to_string()).and_then(|mut c| ask(&mut c)) {
            Ok(v) => out.push((node, v)),
            Err(e) => eprintln!("ferry: warning: node {} at {} left out: {e}", node.node, node.addr),
        }
    }
    Ok(out)
}

fn actor_id(a: ferry_node::client::ActorId) -> String {
    format!("{:016x}", a.0)
}

fn actors(target: &Target) -> Result<Vec<ActorView>, String> {
    let per_node = from_each(target, |c| c.list_actors().map_err(|e| e.to_string()))?;
    let mut all: Vec<ActorView> = per_node.into_iter().flat_map(|(_, a)| a).collect();
    all.sort_by(|a, b| {
        (a.state == "dead").cmp(&(b.state == "dead")).then(a.class.cmp(&b.class)).then(a.actor.0.cmp(&b.actor.0))
    });
    Ok(all)
}

/// `ferry list actors`.
pub fn list_actors(target: &Target, opts: &ListOpts) -> Result<(), String> {
    let rows = actors(target)?.iter().map(actor_json).collect();
    let columns = [
        ("ACTOR", "actor", 16),
        ("STATE", "state", 10),
        ("CLASS", "class", 28),
        ("NAME", "name", 16),
        ("NODE", "node", 16),
        ("RESTARTS", "restarts", 8),
        ("DEATH", "death", 0),
    ];
    show_rows("actors", rows, &columns, opts)
}

/// `ferry get actor ID`.
pub fn get_actor(target: &Target, id: &str, format: Format) -> Result<(), String> {
    let want = u64::from_str_radix(id.trim(), 16).map_err(|_| format!("{id:?} is not an actor id (16 hex digits)"))?;
    let all = actors(target)?;
    let a = all.iter().find(|a| a.actor.0 == want).ok_or_else(|| format!("no actor {id} in the cluster"))?;
    match format {
        Format::Json => json(&actor_json(a)),
        Format::Table => {
            let v = actor_json(a);
            for (k, val) in v.as_object().into_iter().flatten() {
                if !val.is_null() {
                    println!("  {k:<14} {}", clean(val.to_string().trim_matches('"')));
                }
            }
            Ok(())
        }
    }
}

/// `ferry summary actors`: by class and state.
pub fn summary_actors(target: &Target, format: Format) -> Result<(), String> {
    let all = actors(target)?;
    let mut by: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for a in &all {
        *by.entry(a.class.as_str()).or_default().entry(a.state.as_str()).or_default() += 1;
    }
    if let Format::Json = format {
        return json(&by);
    }
    println!("{:<40} {:>8} {:>8} {:>8} {:>8}", "CLASS", "ALIVE", "PENDING", "DEAD", "TOTAL");
    for (class, states) in &by {
        let n = |s: &str| states.get(s).copied().unwrap_or(0);
        println!(
            "{:<40} {:>8} {:>8} {:>8} {:>8}",
            clean(class).chars().take(40).collect::<String>(),
            n("alive"),
            n("pending") + n("starting") + n("restarting"),
            n("dead"),
            states.values().sum::<u64>()
        );
    }
    Ok(())
}

/// `ferry list workers`.
pub fn list_workers(target: &Target, opts: &ListOpts) -> Result<(), String> {
    let per_node = from_each(target, |c| c.list_procs().map_err(|e| e.to_string()))?;
    let mut all: Vec<ProcView> = per_node.into_iter().flat_map(|(_, p)| p).collect();
    all.retain(|p| p.state != "tool" && p.state != "node");
    all.sort_by(|a, b| a.node.0.cmp(&b.node.0).then(a.state.cmp(&b.state)));
    let rows = all
        .iter()
        .map(|p| {
            serde_json::json!({
                "worker": p.worker.to_string(), "node": p.node.to_string(), "pid": p.pid,
                "kind": format!("{:?}", p.kind).to_lowercase(), "state": p.state, "actor": p.actor.map(actor_id),
            })
        })
        .collect();
    let columns = [
        ("WORKER", "worker", 16),
        ("NODE", "node", 16),
        ("PID", "pid", 8),
        ("STATE", "state", 8),
        ("ACTOR", "actor", 16),
    ];
    show_rows("workers", rows, &columns, opts)
}

/// Objects in the stores of every node.
fn stored(target: &Target) -> Result<Vec<(NodeView, Vec<StoredInfo>)>, String> {
    from_each(target, |c| c.stored_objects().map_err(|e| e.to_string()))
}

/// `ferry list objects`: every stored object, biggest first.
pub fn list_objects(target: &Target, opts: &ListOpts) -> Result<(), String> {
    let mut all: Vec<(String, StoredInfo)> =
        stored(target)?.into_iter().flat_map(|(n, s)| s.into_iter().map(move |o| (n.node.to_string(), o))).collect();
    all.sort_by_key(|o| std::cmp::Reverse(o.1.size));
    let rows = all
        .iter()
        .map(|(n, o)| {
            serde_json::json!({
                "object": o.object.to_string(), "owner": o.object.owner().to_string(), "node": n,
                "size": o.size, "spilled": o.spilled, "where": if o.spilled { "spilled" } else { "in store" },
            })
        })
        .collect();
    let columns = [
        ("OBJECT", "object", 40),
        ("OWNER", "owner", 16),
        ("NODE", "node", 16),
        ("BYTES", "size", 12),
        ("WHERE", "where", 0),
    ];
    show_rows("objects", rows, &columns, opts)
}

/// `ferry summary objects`: per node.
pub fn summary_objects(target: &Target, format: Format) -> Result<(), String> {
    let rows: Vec<(NodeView, u64, u64, u64, u64)> = stored(target)?
        .into_iter()
        .map(|(n, s)| {
            let (mem, spilled): (Vec<&StoredInfo>, Vec<&StoredInfo>) = s.iter().partition(|o| !o.spilled);
            let bytes = |v: &[&StoredInfo]| v.iter().map(|o| o.size).sum::<u64>();
            (n.clone(), mem.len() as u64, bytes(&mem), spilled.len() as u64, bytes(&spilled))
        })
        .collect();
    if let Format::Json = format {
        let list: Vec<_> = rows
            .iter()
            .map(|(n, a, b, c, d)| {
                serde_json::json!({"node": n.node.to_string(), "in_store": a, "in_store_bytes": b, "spilled": c, "spilled_bytes": d})
            })
            .collect();
        return json(&list);
    }
    println!("{:<16} {:<22} {:>9} {:>14} {:>9} {:>14}", "NODE", "ADDRESS", "IN STORE", "BYTES", "SPILLED", "BYTES");
    for (n, a, b, c, d) in &rows {
        println!("{:<16} {:<22} {a:>9} {b:>14} {c:>9} {d:>14}", n.node.to_string(), n.addr);
    }
    Ok(())
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GroupBy {
    Node,
    Owner,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SortBy {
    Size,
    Object,
}

/// `ferry memory`: every object in the cluster, its owner, size, where it is and why it is
/// alive (the cluster-wide `memory_summary`).
pub fn memory(target: &Target, group_by: GroupBy, sort_by: SortBy, limit: usize, format: Format) -> Result<(), String> {
    let per_node = from_each(target, |c| c.memory().map_err(|e| e.to_string()))?;
    let m = ferry_node::memory::join(&per_node);
    let (mut all, pending_tasks, unreachable) = (m.objects, m.pending_tasks, m.unreachable);
    if let SortBy::Size = sort_by {
        all.sort_by_key(|o| std::cmp::Reverse(o.size));
    }
    let total_bytes: u64 = all.iter().map(|o| o.size).sum();
    if let Format::Json = format {
        let shown: Vec<&Obj> = all.iter().take(limit).collect();
        return json(&serde_json::json!({
            "objects": shown, "total": all.len(), "total_bytes": total_bytes,
            "pending_tasks": pending_tasks, "unreachable_processes": unreachable,
        }));
    }
    let mut groups: BTreeMap<String, Vec<&Obj>> = BTreeMap::new();
    for o in all.iter().take(limit) {
        let key = match group_by {
            GroupBy::Node => format!("node {}", o.node.as_deref().unwrap_or("- (not in a store)")),
            GroupBy::Owner => format!("owner {}", o.owner),
        };
        groups.entry(key).or_default().push(o);
    }
    for (g, objs) in &groups {
        let bytes: u64 = objs.iter().map(|o| o.size).sum();
        println!("--- {g}: {} object(s), {bytes} bytes ---", objs.len());
        println!("{:<40} {:>12} {:<9} {:<16} WHY ALIVE", "OBJECT", "BYTES", "WHERE", "OWNER");
        for o in objs {
            println!("{:<40} {:>12} {:<9} {:<16} {}", o.object, o.size, o.location, o.owner, o.why());
        }
    }
    println!(
        "{} object(s), {total_bytes} bytes, in {} node(s); {pending_tasks} task(s) pending",
        all.len(),
        per_node.len()
    );
    if !unreachable.is_empty() {
        println!("note: {} process(es) did not answer: {}", unreachable.len(), unreachable.join(", "));
    }
    Ok(())
}

/// A client of the node `id` (16 hex digits) of the target's cluster.
fn node_client(target: &Target, id: &str) -> Result<Client, String> {
    let (client, token) = target.connect()?;
    for (n, c) in client.each_node(&token).map_err(|e| e.to_string())? {
        if n.node.to_string() == id.trim() {
            return c.map_err(|e| format!("cannot reach node {id} at {}: {e}", n.addr));
        }
    }
    Err(format!("no live node {id} in the cluster: `ferry list nodes` shows them"))
}

/// Prints `worker`'s log on `c` from `offset`, each line through `keep`; with `follow`, goes
/// on until the worker is gone. Returns the offset reached.
fn print_log(
    c: &mut Client,
    worker: ferry_node::client::JobId,
    mut offset: u64,
    follow: bool,
    keep: &dyn Fn(u64, &str) -> bool,
) -> Result<u64, String> {
    let mut partial = String::new();
    loop {
        let (data, next, ended) = c.read_worker_log(worker, offset).map_err(|e| e.to_string())?;
        offset = next;
        partial.push_str(&String::from_utf8_lossy(&data));
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            if let Some((at, text)) = ferry_node::worker_logs::parse_line(line.trim_end()) {
                if keep(at, text) {
                    println!("{}", clean(text));
                }
            }
        }
        if !data.is_empty() {
            continue;
        }
        if !follow || ended {
            return Ok(offset);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// `ferry logs`: what a task, an actor or a worker printed, from its node's log files.
pub fn logs(
    target: &Target,
    task: Option<&str>,
    actor: Option<&str>,
    node: Option<&str>,
    worker: Option<&str>,
    follow: bool,
) -> Result<(), String> {
    let no = |_: u64, _: &str| true;
    if let Some(id) = task {
        let task = id.parse::<ferry_node::client::TaskId>()?;
        let filter = ferry_node::client::TaskFilter { task: Some(task), ..Default::default() };
        let (client, token) = target.connect()?;
        let mut h = client.into_history(&token).map_err(|e| e.to_string())?;
        let find = |h: &mut Client| -> Result<ferry_node::client::TaskRecord, String> {
            let (mut t, _, _) =
                h.list_tasks(&filter, 1).map_err(|e| e.to_string())?.ok_or("the cluster keeps no task history")?;
            t.pop()
                .ok_or_else(|| format!("no task {task} in the history (not reported yet, or its record was dropped)"))
        };
        let t = find(&mut h)?;
        let (Some(n), Some(w)) = (t.node, t.worker) else {
            return Err(format!("task {task} has not run yet (it is {})", t.state.name()));
        };
        let end = std::cell::Cell::new(t.ended_us);
        let keep = |at: u64, text: &str| ferry_node::worker_logs::is_tasks(&t, end.get(), at, text);
        let mut c = node_client(target, &n.to_string())?;
        let mut offset = print_log(&mut c, w, 0, false, &keep)?;
        // Following a running task: until it ends (and its last lines are in).
        while follow && end.get().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(300));
            end.set(find(&mut h)?.ended_us);
            if end.get().is_some() {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            offset = print_log(&mut c, w, offset, false, &keep)?;
        }
        return Ok(());
    }
    if let Some(id) = actor {
        let want =
            u64::from_str_radix(id.trim(), 16).map_err(|_| format!("{id:?} is not an actor id (16 hex digits)"))?;
        let a = actors(target)?
            .into_iter()
            .find(|a| a.actor.0 == want)
            .ok_or_else(|| format!("no actor {id} in the cluster: `ferry list actors` shows them"))?;
        let (Some(n), Some(w)) = (a.node, a.worker) else {
            return Err(format!("actor {id} is {} and runs nowhere now", a.state));
        };
        let mut c = node_client(target, &n.to_string())?;
        print_log(&mut c, w, 0, follow, &no)?;
        return Ok(());
    }
    let Some(n) = node else {
        return Err("say whose logs: --task ID, --actor ID, or --node ID (with --worker ID for one worker's)".into());
    };
    let mut c = node_client(target, n)?;
    match worker {
        Some(w) => {
            let w = ferry_node::client::JobId(
                u64::from_str_radix(w.trim(), 16).map_err(|_| format!("{w:?} is not a worker id (16 hex digits)"))?,
            );
            print_log(&mut c, w, 0, follow, &no)?;
        }
        None => {
            println!("{:<16} {:>12} STATE", "WORKER", "BYTES");
            for (w, bytes, alive) in c.worker_logs().map_err(|e| e.to_string())? {
                println!("{:<16} {bytes:>12} {}", w.to_string(), if alive { "running" } else { "gone" });
            }
        }
    }
    Ok(())
}
