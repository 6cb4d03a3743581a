//! `ferry list actors|workers|objects`, `ferry get actor`, `ferry summary actors|objects` and
//! `ferry memory` on a real cluster: a head started by the CLI runs a job (this test binary)
//! that holds actors (one named, one killed) and a stored object, and the commands show
//! each as it is: alive or dead with the reason, the actor's worker with its pid, the
//! object's size, owner, node and why it is alive.

use ferry::prelude::*;
use ferry_testkit::Head;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

#[ferry::actor]
struct Counter {
    n: u64,
}

#[ferry::actor]
impl Counter {
    fn new() -> Self {
        Counter { n: 0 }
    }
    fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        println!("counter adds {k}");
        self.n
    }
}

#[ferry::remote]
fn shout(i: u64) -> u64 {
    println!("shout {i}");
    i
}

#[used]
#[link_section = ".init_array"]
static JOB: extern "C" fn() = job_entry;

extern "C" fn job_entry() {
    if std::env::var_os("FERRY_WORKER").is_some() || std::env::args().nth(1).as_deref() != Some("--ferry-test-job") {
        return;
    }
    ferry::init(ferry::Config::default()).unwrap();
    let kept = Counter::options().name("kept").remote().unwrap();
    let gone = Counter::remote().unwrap();
    ferry::get_timeout(&kept.add(1), T).unwrap();
    ferry::get_timeout(&gone.add(1), T).unwrap();
    ferry::kill(&gone).unwrap();
    let big = ferry::put(vec![7u8; 4 << 20]).unwrap();
    ferry::wait(std::slice::from_ref(&big), 1, Some(T)).unwrap();
    // Two tasks one after the other (on the same worker, likely): each one's lines are its own.
    let one = shout::remote(1);
    ferry::get_timeout(&one, T).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let two = shout::remote(2);
    ferry::get_timeout(&two, T).unwrap();
    println!("ready {} {} {}", big.id(), one.id().task, two.id().task);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let _ = (&kept, &big);
    }
}

/// `ferry ARGS` against the head, bounded in time: its whole output, succeeding or not.
fn ferry_out(head: &Head, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_TOKEN", &head.token).env("FERRY_ADDRESS", &head.address).args(args);
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "ferry {args:?} took more than {T:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ferry(head: &Head, args: &[&str]) -> String {
    let out = ferry_out(head, args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ferry {args:?}: {text}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn json(head: &Head, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = ferry(head, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ferry {args:?} printed no JSON ({e}): {out}"))
}

#[test]
fn the_cluster_lists_its_actors_workers_objects_and_what_each_task_printed() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block", "--no-dashboard"]);
    let head = Head::start(cmd, T).unwrap();
    // The job, in the foreground of a `ferry submit` whose output says when it is ready.
    let mut submit = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env("FERRY_TOKEN", &head.token)
        .env("FERRY_ADDRESS", &head.address)
        .args(["job", "submit", "--"])
        .arg(std::env::current_exe().unwrap())
        .arg("--ferry-test-job")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = submit.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (object, task_one, task_two) = loop {
        let line = rx.recv_timeout(T).expect("the job never said it was ready");
        if let Some(ids) = line.strip_prefix("ready ") {
            let ids: Vec<&str> = ids.split(' ').collect();
            break (ids[0].to_string(), ids[1].to_string(), ids[2].to_string());
        }
    };

    // Actors: the named one alive, the killed one dead with why.
    let actors = json(&head, &["list", "actors"]);
    let list = actors["actors"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{actors}");
    let alive = list.iter().find(|a| a["state"] == "alive").unwrap_or_else(|| panic!("no live actor: {actors}"));
    assert!(alive["class"].as_str().unwrap().contains("Counter"), "{alive}");
    assert_eq!(alive["name"], "kept");
    let dead = list.iter().find(|a| a["state"] == "dead").unwrap_or_else(|| panic!("no dead actor: {actors}"));
    assert!(dead["death"].as_str().unwrap().contains("kill"), "{dead}");
    let only_dead = json(&head, &["list", "actors", "--filter", "state=dead"]);
    assert_eq!(only_dead["matched"], 1);
    let one = json(&head, &["get", "actor", alive["actor"].as_str().unwrap()]);
    assert_eq!((one["state"].as_str(), one["worker"].is_string()), (Some("alive"), true), "{one}");
    let summary = ferry(&head, &["summary", "actors"]);
    assert!(
        summary
            .lines()
            .any(|l| l.contains("Counter") && l.split_whitespace().skip(1).collect::<Vec<_>>() == ["1", "0", "1", "2"]),
        "{summary}"
    );

    // Workers: the live actor's, with its pid.
    let workers = json(&head, &["list", "workers"]);
    let actor_worker = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["state"] == "actor" && w["actor"] == alive["actor"])
        .unwrap_or_else(|| panic!("no worker runs the live actor: {workers}"));
    assert!(actor_worker["pid"].as_u64().is_some_and(|p| p > 1), "{actor_worker}");
    assert!(
        workers["workers"].as_array().unwrap().iter().any(|w| w["state"] == "driver"),
        "the job's driver: {workers}"
    );
    // Every list takes --filter on any field, --limit, --detail and --format, as `ray list`.
    let drivers = json(&head, &["list", "workers", "--filter", "state=driver"]);
    assert_eq!(drivers["matched"], 1, "{drivers}");
    let one = json(&head, &["list", "workers", "--limit", "1"]);
    assert_eq!(one["workers"].as_array().map(Vec::len), Some(1), "{one}");
    let nodes = json(&head, &["list", "nodes", "--filter", "state=alive"]);
    assert_eq!(nodes["matched"], 1, "{nodes}");
    let jobs = json(&head, &["list", "jobs", "--filter", "status=running"]);
    assert_eq!(jobs["matched"], 1, "{jobs}");
    let detail = ferry(&head, &["list", "actors", "--detail", "--filter", "name=kept"]);
    assert!(detail.contains("restarts_left") && detail.contains("namespace"), "{detail}");
    let bad = ferry_out(&head, &["list", "workers", "--filter", "colour=red"]);
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && said.contains("cannot filter workers by \"colour\"") && said.contains("pid"),
        "{said}"
    );

    // Objects: the 4 MiB one, in the head's store, owned by the job's driver.
    let objects = json(&head, &["list", "objects"]);
    let big = objects["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object"] == object.as_str())
        .unwrap_or_else(|| panic!("no object {object}: {objects}"));
    assert!(big["size"].as_u64().unwrap() >= 4 << 20, "{big}");
    let per_node = json(&head, &["summary", "objects"]);
    assert!(per_node[0]["in_store_bytes"].as_u64().unwrap() >= 4 << 20, "{per_node}");

    // Memory: where it is and why it is alive (its driver holds a ref).
    let memory = json(&head, &["memory"]);
    let m = memory["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object"] == object.as_str())
        .unwrap_or_else(|| panic!("no object {object} in ferry memory: {memory}"));
    assert_eq!((m["location"].as_str(), m["owner"] == big["owner"]), (Some("in store"), true), "{m}");
    assert!(m["local_refs"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(memory["unreachable_processes"].as_array().map(Vec::len), Some(0), "{memory}");
    let table = ferry(&head, &["memory", "--group-by", "owner"]);
    assert!(table.contains(&format!("owner {}", big["owner"].as_str().unwrap())), "{table}");
    assert!(table.lines().any(|l| l.contains(&object) && l.contains("local ref")), "{table}");

    // Logs: a task's own lines, an actor's, a node's workers' files.
    let end = Instant::now() + T;
    let mine = loop {
        let out = ferry(&head, &["logs", "--task", &task_one]);
        if out.contains("shout 1") || Instant::now() > end {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(mine.contains("shout 1") && !mine.contains("shout 2"), "task {task_one}'s log: {mine}");
    assert!(ferry(&head, &["logs", "--task", &task_two]).contains("shout 2"));
    let actor_log = ferry(&head, &["logs", "--actor", alive["actor"].as_str().unwrap()]);
    assert!(actor_log.contains("counter adds 1"), "the actor's log: {actor_log}");
    let node = alive["node"].as_str().unwrap();
    let files = ferry(&head, &["logs", "--node", node]);
    assert!(files.lines().filter(|l| l.contains("running")).count() >= 2, "the node's worker logs: {files}");

    ferry(&head, &["job", "stop", "1"]);
    // The foreground submit ends with its job.
    let end = Instant::now() + T;
    while submit.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = submit.kill();
            panic!("ferry job submit did not end with its stopped job");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
