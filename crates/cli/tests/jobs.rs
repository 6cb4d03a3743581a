//! `ferry job submit|list|status|logs|stop` as Ray's job submission CLI is used: a job
//! started with `--no-wait` is listed with its entrypoint, status and exit code, its output
//! is in its log (`--follow` ends with it); a stopped job's driver, workers, objects and
//! actors go, a detached actor stays; a Ctrl-C on a foreground submit stops the job and says
//! so. Real processes: a head started by the CLI, this test binary as the job.

use ferry::prelude::*;
use ferry_testkit::Head;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[ferry::remote]
fn double(x: u64) -> u64 {
    2 * x
}

#[ferry::remote]
fn broken() -> u64 {
    panic!("broken on purpose")
}

#[ferry::actor]
struct Keeper;

#[ferry::actor]
impl Keeper {
    fn new() -> Self {
        Keeper
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// This binary as a job (`--ferry-test-job MODE`, run by the head with `FERRY_ADDRESS`).
#[used]
#[link_section = ".init_array"]
static JOB: extern "C" fn() = job_entry;

extern "C" fn job_entry() {
    if std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("--ferry-test-job") {
        return;
    }
    match args.next().as_deref() {
        Some("quick") => {
            println!("hello from the job");
            eprintln!("a warning from the job");
            std::process::exit(3);
        }
        Some("sleepy") => sleepy(),
        Some("fair") => {
            let from: u64 = args.next().and_then(|a| a.parse().ok()).unwrap();
            let to: u64 = args.next().and_then(|a| a.parse().ok()).unwrap();
            fair_job(from, to)
        }
        Some("tasks") => {
            ferry::init(ferry::Config::default()).unwrap();
            let refs: Vec<_> = (0..5).map(double::remote).collect();
            assert_eq!(ferry::get_all(&refs).unwrap(), vec![0, 2, 4, 6, 8]);
            assert!(ferry::get(&broken::remote()).is_err());
            ferry::shutdown();
            std::process::exit(0);
        }
        _ => std::process::exit(2),
    }
}

#[ferry::remote]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Keeps 16 tasks of 100 ms (one CPU each) outstanding until `to` (Unix ms), and prints how
/// many ended between `from` and `to`: this job's share of the node then.
fn fair_job(from: u64, to: u64) -> ! {
    ferry::init(ferry::Config::default()).unwrap();
    let mut pending: Vec<_> = (0..16).map(|_| nap::remote(100)).collect();
    let mut done = 0;
    while unix_ms() < to {
        let (ready, rest) = ferry::wait(&pending, 1, Some(Duration::from_millis(200))).unwrap();
        let now = unix_ms();
        if now >= from && now < to {
            done += ready.len();
        }
        pending = rest;
        while pending.len() < 16 {
            pending.push(nap::remote(100));
        }
    }
    println!("done {done}");
    std::process::exit(0);
}

/// Holds an actor, a detached named actor and a stored object, says "ready", then ticks.
fn sleepy() -> ! {
    ferry::init(ferry::Config::default()).unwrap();
    let mine = Keeper::remote().unwrap();
    let kept = Keeper::options().name("kept").detached().remote().unwrap();
    let actor_pid = ferry::get_timeout(&mine.pid(), T).unwrap();
    ferry::get_timeout(&kept.pid(), T).unwrap();
    let big = ferry::put(vec![7u8; 4 << 20]).unwrap();
    ferry::wait(std::slice::from_ref(&big), 1, Some(T)).unwrap();
    println!("ready pid={} actor={actor_pid}", std::process::id());
    for i in 0.. {
        println!("tick {i}");
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

fn start_head() -> Head {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block"]);
    // Stopping takes SIGKILL after this long if SIGTERM was not enough.
    cmd.env("FERRY_JOB_STOP_GRACE_MS", "2000");
    Head::start(cmd, T).unwrap()
}

fn ferry_at(head: &Head, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_TOKEN", &head.token).env("FERRY_ADDRESS", &head.address).args(args);
    run(c)
}

/// Runs a command, killed (and the test failed) if it takes longer than `T`.
fn run(mut c: Command) -> std::process::Output {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{c:?} took more than {T:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn exe() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

/// Polls `ferry job status ID` until it contains `want`.
fn status_until(head: &Head, id: &str, want: &str) -> String {
    let end = Instant::now() + T;
    loop {
        let out = text(&ferry_at(head, &["job", "status", id]));
        if out.contains(want) {
            return out;
        }
        assert!(Instant::now() < end, "job {id} never showed {want:?}: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number after `label` in `ferry status`'s output (e.g. "actors:").
fn node_count(head: &Head, label: &str) -> u64 {
    let out = text(&ferry_at(head, &["status"]));
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(label).map(|r| r.split_whitespace().next().unwrap_or("").to_string()))
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in: {out}"))
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) != Some("Z"))
}

/// Reads `child`'s stdout lines until one starts with "ready"; returns (job pid, actor pid).
fn wait_ready(out: impl std::io::Read + Send + 'static) -> (u32, u32) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("ready") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(T).expect("the job said it was ready");
    let num = |k: &str| line.split(k).nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
    (num("pid="), num("actor="))
}

#[test]
fn jobs_are_listed_logged_and_stopped_with_what_they_own() {
    let head = start_head();
    // A quick job in the background: its id is printed, its output logged.
    let sub = ferry_at(&head, &["job", "submit", "--no-wait", "--", &exe(), "--ferry-test-job", "quick"]);
    assert!(sub.status.success(), "{}", text(&sub));
    let id = String::from_utf8_lossy(&sub.stdout).trim().to_string();
    assert_eq!(id, "1", "{}", text(&sub));
    let st = status_until(&head, "1", "failed");
    assert!(st.contains("exit code:  3") && st.contains("--ferry-test-job quick"), "{st}");
    let logs = text(&ferry_at(&head, &["job", "logs", "1"]));
    assert!(logs.contains("hello from the job") && logs.contains("a warning from the job"), "{logs}");
    let list = text(&ferry_at(&head, &["job", "list"]));
    assert!(list.contains("ENTRYPOINT"), "{list}");
    let row = list.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("failed") && row.contains(" 3 ") && row.contains("--ferry-test-job quick"), "{row}");

    // A long job, followed, then stopped: what it owns goes, its detached actor stays.
    let sub = ferry_at(&head, &["job", "submit", "--no-wait", "--", &exe(), "--ferry-test-job", "sleepy"]);
    assert_eq!(String::from_utf8_lossy(&sub.stdout).trim(), "2", "{}", text(&sub));
    let mut follow = Command::new(env!("CARGO_BIN_EXE_ferry"));
    follow.env("FERRY_TOKEN", &head.token).env("FERRY_ADDRESS", &head.address);
    let mut follow = follow.args(["job", "logs", "2", "--follow"]).stdout(Stdio::piped()).spawn().unwrap();
    let (job_pid, actor_pid) = wait_ready(follow.stdout.take().unwrap());
    assert!(status_until(&head, "2", "running").contains("job 2: running"));
    assert_eq!(node_count(&head, "actors:"), 2);
    assert!(node_count(&head, "store:") >= 1);
    let stop = ferry_at(&head, &["job", "stop", "2"]);
    assert!(stop.status.success() && text(&stop).contains("job 2 (jobs-"), "{}", text(&stop));
    status_until(&head, "2", "job 2: stopped");
    eventually("the job's driver is gone", || !alive(job_pid));
    eventually("its actor's process is gone", || !alive(actor_pid));
    eventually("its actor is gone and the detached one stays", || node_count(&head, "actors:") == 1);
    eventually("its objects are gone", || node_count(&head, "store:") == 0);
    // `logs --follow` ended with the job.
    let end = Instant::now() + T;
    while follow.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "logs --follow outlived the job");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stopping it again, or a job that does not exist, says what is wrong.
    let again = ferry_at(&head, &["job", "stop", "2"]);
    assert!(!again.status.success() && text(&again).contains("has ended already"), "{}", text(&again));
    let none = ferry_at(&head, &["job", "logs", "99"]);
    assert!(!none.status.success() && text(&none).contains("no job 99"), "{}", text(&none));
    drop(head);
}

#[test]
fn ctrl_c_on_a_foreground_submit_stops_the_job_and_says_so() {
    let head = start_head();
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_TOKEN", &head.token).env("FERRY_ADDRESS", &head.address);
    c.args(["submit", "--", &exe(), "--ferry-test-job", "sleepy"]);
    let mut sub = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (job_pid, _) = wait_ready(sub.stdout.take().unwrap());
    ferry_testkit::signal(sub.id(), 2);
    let end = Instant::now() + T;
    let code = loop {
        if let Some(s) = sub.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < end, "ferry submit did not end after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut sub.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("Ctrl-C: stopping job 1") && err.contains("job 1 (jobs-"), "{err}");
    assert!(err.contains("stopped after"), "{err}");
    assert!(!alive(job_pid), "the job's driver is gone");
    status_until(&head, "1", "job 1: stopped");
}

/// `ferry list tasks`, `ferry summary tasks` and `ferry get task` show a job's tasks, as
/// `ray list tasks` / `ray summary tasks` / `ray get tasks` do.
#[test]
fn the_state_commands_show_a_jobs_tasks() {
    let head = start_head();
    let sub = ferry_at(&head, &["submit", "--", &exe(), "--ferry-test-job", "tasks"]);
    assert!(sub.status.success(), "{}", text(&sub));
    // Its tasks reach the history in batches: wait for the failed one.
    let end = Instant::now() + T;
    let failed = loop {
        let out = ferry_at(&head, &["list", "tasks", "--filter", "state=failed", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["matched"] == 1 {
            break v["tasks"][0].clone();
        }
        assert!(Instant::now() < end, "no failed task listed: {}", text(&out));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(failed["info"]["name"], "broken", "{failed}");
    let table = text(&ferry_at(&head, &["list", "tasks"]));
    assert!(table.contains("TASK") && table.contains("double") && table.contains("finished"), "{table}");
    assert!(table.contains("6 of 6 matching tasks shown"), "{table}");
    let summary = text(&ferry_at(&head, &["summary", "tasks"]));
    let row = summary.lines().find(|l| l.contains("::double")).unwrap_or_else(|| panic!("{summary}"));
    assert!(row.split_whitespace().filter(|w| *w == "5").count() >= 2, "5 finished, 5 in all: {row}");
    // One task in full, by the id the list gave.
    let list = ferry_at(&head, &["list", "tasks", "--filter", "name=broken", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let t = &v["tasks"][0]["task"];
    let id = format!("{:016x}{:016x}", t["owner"].as_u64().unwrap(), t["seq"].as_u64().unwrap());
    let one = text(&ferry_at(&head, &["get", "task", &id]));
    assert!(one.contains("failed") && one.contains("broken on purpose"), "{one}");
    // Bad input says what is wrong.
    let bad = ferry_at(&head, &["list", "tasks", "--filter", "state=sleeping"]);
    assert!(!bad.status.success() && text(&bad).contains("is not a task state"), "{}", text(&bad));
    let bad = ferry_at(&head, &["get", "task", "nope"]);
    assert!(!bad.status.success() && text(&bad).contains("is not a task id"), "{}", text(&bad));
}

/// Two jobs that each want more CPUs than the head's four, submitted with weights 3 and 1,
/// get about three and one of them: counted by the tasks each finished in the same window.
#[test]
fn jobs_share_a_node_by_weight() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "4", "--block"]);
    let head = Head::start(cmd, T).unwrap();
    let from = unix_ms() + 3000;
    let to = from + 6000;
    let (f, t) = (from.to_string(), to.to_string());
    let mut ids = Vec::new();
    for weight in ["3", "1"] {
        let args = ["job", "submit", "--no-wait", "--weight", weight, "--", &exe(), "--ferry-test-job", "fair", &f, &t];
        let out = ferry_at(&head, &args);
        assert!(out.status.success(), "{}", text(&out));
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let mut done = Vec::new();
    for id in &ids {
        let out = ferry_at(&head, &["job", "logs", id, "--follow"]);
        let log = text(&out);
        let n: f64 = log
            .lines()
            .find_map(|l| l.strip_prefix("done "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("job {id} printed no count: {log}"));
        done.push(n);
    }
    let ratio = done[0] / done[1].max(1.0);
    println!("tasks done in the window by the jobs of weight 3 and 1: {done:?}");
    assert!(done[0] + done[1] > 100.0, "the node was not kept busy: {done:?}");
    assert!((2.0..=4.5).contains(&ratio), "weights 3:1 gave {done:?} tasks ({ratio:.2}:1)");
}

/// A head that runs one job at a time (`FERRY_MAX_RUNNING_JOBS=1`, ray#41241): a second and
/// a third job wait in order, listed as queued; one stopped while it waits never runs; the
/// next starts when the running one ends.
#[test]
fn jobs_past_the_running_limit_wait_their_turn() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block"]);
    cmd.env("FERRY_MAX_RUNNING_JOBS", "1").env("FERRY_JOB_STOP_GRACE_MS", "2000");
    let head = Head::start(cmd, T).unwrap();
    let submit = |mode: &str| {
        let out = ferry_at(&head, &["job", "submit", "--no-wait", "--", &exe(), "--ferry-test-job", mode]);
        assert!(out.status.success(), "{}", text(&out));
        (String::from_utf8_lossy(&out.stdout).trim().to_string(), text(&out))
    };
    let (first, _) = submit("sleepy");
    status_until(&head, &first, "running");
    let (second, said) = submit("quick");
    assert!(said.contains("queued"), "{said}");
    let (third, _) = submit("quick");
    let list = text(&ferry_at(&head, &["job", "list"]));
    for id in [&second, &third] {
        let row = list.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap_or_else(|| panic!("{list}"));
        assert!(row.contains("queued"), "{row}");
    }
    // The third is stopped while it waits: it never runs.
    assert!(ferry_at(&head, &["job", "stop", &third]).status.success());
    status_until(&head, &third, "stopped");
    // The first ends: the second runs (and prints), the third does not.
    assert!(ferry_at(&head, &["job", "stop", &first]).status.success());
    status_until(&head, &second, "failed"); // the quick job exits with 3
    let logs = text(&ferry_at(&head, &["job", "logs", &second]));
    assert!(logs.contains("hello from the job"), "{logs}");
    let logs = text(&ferry_at(&head, &["job", "logs", &third]));
    assert!(!logs.contains("hello from the job"), "a stopped queued job ran: {logs}");
}
