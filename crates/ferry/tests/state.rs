//! Task history and the state API (`ferry::state`), as Ray's state API tests check `ray list
//! tasks` / `summary`: every task is there with its function, job, parent, node, worker,
//! attempt and times, in the right final state (a failure with its error, a cancel, a retry
//! after its worker died); counts by function and state are exact even past the history's
//! bound, which says how many records it dropped.

mod common;

use common::*;
use ferry::state::{self, TaskFilter, TaskState};
use std::time::Duration;

#[ferry::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[ferry::remote]
fn boom() -> u64 {
    panic!("the value was 42")
}

#[ferry::remote]
fn outer() -> u64 {
    ferry::get(&add::remote(1, 2)).unwrap()
}

#[ferry::remote(max_retries = 1)]
fn dies_once(marker: String) -> u32 {
    // The first run makes the marker and dies; the second finds it.
    if std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).is_ok() {
        std::process::abort();
    }
    7
}

#[ferry::remote]
fn long() -> u64 {
    std::thread::sleep(Duration::from_secs(20));
    0
}

#[ferry::actor]
struct Counter(u64);

#[ferry::actor]
impl Counter {
    fn new() -> Self {
        Counter(0)
    }
    fn incr(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// Polls the history until `n` tasks match `filter` and the workers' reports of their
/// start are in (they come in batches of their own).
fn until_matched(filter: &TaskFilter, n: u64) -> state::TaskList {
    let mut last = None;
    eventually(&format!("{n} tasks match {filter:?}"), T, || {
        let l = state::list_tasks(filter, 1000).unwrap();
        let ok = l.matched == n && l.tasks.iter().all(|t| t.state != TaskState::Finished || t.started_us.is_some());
        last = Some(l);
        ok
    });
    last.unwrap()
}

#[test]
fn every_task_is_in_the_history_with_where_and_how_it_ran() {
    ferry_testkit::own_process!();
    cluster();
    let refs: Vec<_> = (0..20).map(|i| add::remote(i, 1)).collect();
    assert_eq!(ferry::get_all(&refs).unwrap().len(), 20);
    let failed = boom::remote();
    assert!(ferry::get(&failed).is_err());
    let nested = outer::remote();
    assert_eq!(ferry::get_timeout(&nested, T).unwrap(), 3);
    let c = Counter::remote().unwrap();
    assert_eq!(ferry::get_timeout(&c.incr(), T).unwrap(), 1);

    let job = ferry::runtime_context().unwrap().job_id;
    let finished = TaskFilter { state: Some(TaskState::Finished), name: Some("add".into()), ..Default::default() };
    // 20 from here and one from `outer`.
    let l = until_matched(&finished, 21);
    for t in &l.tasks {
        assert_eq!(t.info.job, job);
        assert!(t.node.is_some() && t.worker.is_some(), "{t:?}");
        let (s, e) = (t.started_us.unwrap(), t.ended_us.unwrap());
        assert!(t.submitted_us <= s && s <= e, "{t:?}");
    }
    // Newest first.
    assert!(l.tasks.windows(2).all(|w| w[0].submitted_us >= w[1].submitted_us));

    let f = until_matched(&TaskFilter { state: Some(TaskState::Failed), ..Default::default() }, 1);
    assert_eq!(f.tasks[0].info.name, "boom");
    assert!(f.tasks[0].error.as_deref().unwrap_or("").contains("the value was 42"), "{:?}", f.tasks[0]);

    // The nested task names its parent.
    let parent = until_matched(&TaskFilter { name: Some("outer".into()), ..Default::default() }, 1).tasks[0].task;
    let kids = state::list_tasks(&TaskFilter { name: Some("add".into()), ..Default::default() }, 1000).unwrap();
    assert_eq!(kids.tasks.iter().filter(|t| t.info.parent == Some(parent)).count(), 1);
    // Actor creation and calls are there too.
    let calls = until_matched(
        &TaskFilter { name: Some("incr".into()), state: Some(TaskState::Finished), ..Default::default() },
        1,
    );
    assert!(calls.tasks[0].info.actor.is_some());
    // One task by id.
    let one = state::get_task(parent).unwrap().unwrap();
    assert_eq!((one.info.name.as_str(), one.state), ("outer", TaskState::Finished));

    // Counts by function and state.
    let (rows, stats) = state::summarize_tasks(Some(job)).unwrap();
    let add_row = rows.iter().find(|r| r.function.ends_with("::add")).unwrap();
    assert_eq!(add_row.counts[TaskState::Finished.index()], 21, "{add_row:?}");
    let boom_row = rows.iter().find(|r| r.function.ends_with("::boom")).unwrap();
    assert_eq!(boom_row.counts[TaskState::Failed.index()], 1);
    assert_eq!((stats.dropped_records, stats.dropped_events), (0, 0));
}

#[test]
fn a_cancelled_task_and_a_retried_one_end_in_their_states() {
    ferry_testkit::own_process!();
    cluster();
    let marker = std::env::temp_dir().join(format!("ferry-state-dies-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let r = dies_once::remote(marker.display().to_string());
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 7);
    let _ = std::fs::remove_file(&marker);
    let t = until_matched(
        &TaskFilter { name: Some("dies_once".into()), state: Some(TaskState::Finished), ..Default::default() },
        1,
    );
    assert_eq!(t.tasks[0].attempt, 1, "the second attempt finished: {:?}", t.tasks[0]);

    let l = long::remote();
    std::thread::sleep(Duration::from_millis(200));
    ferry::cancel_with(&l, ferry::CancelOptions::default().force(true)).unwrap();
    until_matched(&TaskFilter { state: Some(TaskState::Cancelled), ..Default::default() }, 1);
}

#[test]
fn counts_stay_exact_past_the_bound_and_the_drop_is_said() {
    ferry_testkit::own_process!();
    // The embedded node (in this process) keeps 50 records per job.
    // SAFETY: set before anything else runs in this test's own process.
    unsafe { std::env::set_var("FERRY_TASK_HISTORY_PER_JOB", "50") };
    cluster();
    let refs: Vec<_> = (0..300).map(|i| add::remote(i, 1)).collect();
    assert_eq!(ferry::get_all(&refs).unwrap().len(), 300);
    let mut last = None;
    eventually("all 300 counted as finished", T, || {
        let (rows, stats) = state::summarize_tasks(None).unwrap();
        let n = rows.iter().find(|r| r.function.ends_with("::add")).map(|r| r.counts[TaskState::Finished.index()]);
        last = Some((n, stats.clone()));
        n == Some(300)
    });
    let (_, stats) = last.unwrap();
    assert_eq!((stats.records, stats.per_job_limit, stats.dropped_records), (50, 50, 250), "{stats:?}");
    let l = state::list_tasks(&TaskFilter::default(), 10).unwrap();
    assert_eq!((l.tasks.len(), l.matched), (10, 50));
}

/// `state::list_actors` and `list_workers` see the node's tables: living actors with their
/// workers, dead ones with why they died, and only the newest dead past the bound a node
/// keeps (here 3: `FERRY_DEAD_ACTORS_KEPT`), so making actors for ever takes bounded memory.
#[test]
fn actors_and_workers_are_listed_and_only_the_newest_dead_are_kept() {
    ferry_testkit::own_process!();
    // SAFETY: before the runtime starts, on the test's only thread.
    unsafe { std::env::set_var("FERRY_DEAD_ACTORS_KEPT", "3") };
    cluster();
    let live = Counter::remote().unwrap();
    assert_eq!(ferry::get_timeout(&live.incr(), T).unwrap(), 1);
    let mut killed = Vec::new();
    for _ in 0..5 {
        let a = Counter::remote().unwrap();
        assert_eq!(ferry::get_timeout(&a.incr(), T).unwrap(), 1);
        killed.push(a.id());
        ferry::kill(&a).unwrap();
        eventually("the killed actor is dead in the node's table", T, || {
            state::list_actors().unwrap().iter().any(|v| v.actor == a.id() && v.state == "dead")
        });
    }
    let actors = state::list_actors().unwrap();
    let alive: Vec<_> = actors.iter().filter(|a| a.state == "alive").collect();
    assert_eq!(alive.len(), 1, "{actors:?}");
    assert_eq!((alive[0].actor, alive[0].restarts), (live.id(), 0));
    let dead: Vec<_> = actors.iter().filter(|a| a.state == "dead").map(|a| a.actor).collect();
    let mut newest = killed[2..].to_vec();
    newest.sort();
    let mut got = dead.clone();
    got.sort();
    assert_eq!(got, newest, "the 3 newest dead are kept, the older forgotten: {actors:?}");
    assert!(actors.iter().filter(|a| a.state == "dead").all(|a| a.death.as_deref().unwrap_or("").contains("kill")));

    let workers = state::list_workers().unwrap();
    let host = workers.iter().find(|w| w.actor == Some(live.id())).expect("the live actor's worker");
    assert_eq!(host.state, "actor");
    assert!(host.pid.is_some_and(pid_alive), "{host:?}");
    assert!(workers.iter().any(|w| w.kind == ferry::state::ProcKind::Driver), "{workers:?}");
}
