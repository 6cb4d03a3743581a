//! `ferry timeline` (and the dashboard's timeline download) on a real job with nested tasks:
//! the file is Chrome trace-event JSON as Perfetto reads it (checked event by event against
//! the format: phases, fields, named rows, paired flow arrows), with a slice per task run
//! on its worker's row and arrows from the submitting task (or the driver) to each run.

use ferry_testkit::Head;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

#[ferry::remote]
fn leaf(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x + 1
}

#[ferry::remote]
fn fan(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(leaf::remote).collect();
    ferry::get_all(&refs).unwrap().into_iter().sum()
}

#[used]
#[link_section = ".init_array"]
static JOB: extern "C" fn() = job_entry;

extern "C" fn job_entry() {
    if std::env::var_os("FERRY_WORKER").is_some() || std::env::args().nth(1).as_deref() != Some("--ferry-test-job") {
        return;
    }
    ferry::init(ferry::Config::default()).unwrap();
    let refs: Vec<_> = (0..3).map(|_| fan::remote(4)).collect();
    assert_eq!(ferry::get_all(&refs).unwrap(), vec![10, 10, 10]);
    // A put of 8 MiB into the store: a put slice on the driver's row.
    let big = ferry::put(vec![1u8; 8 << 20]).unwrap();
    drop(big);
    ferry::shutdown();
    std::process::exit(0);
}

fn run(mut cmd: Command) -> std::process::Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "{cmd:?} took more than {T:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ferry(head: &Head, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_TOKEN", &head.token).env("FERRY_ADDRESS", &head.address).args(args);
    let out = run(c);
    assert!(
        out.status.success(),
        "ferry {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Checks `trace` against the trace-event format; returns its task slices.
fn check_trace_format(trace: &Value) -> Vec<&Value> {
    let events = trace["traceEvents"].as_array().expect("a traceEvents array");
    let mut named_pids = HashSet::new();
    let mut named_threads = HashSet::new();
    let mut starts = HashMap::new();
    let mut finishes = HashMap::new();
    let mut slices = Vec::new();
    let num = |e: &Value, k: &str| e[k].as_f64().unwrap_or_else(|| panic!("{k} is not a number in {e}"));
    for e in events {
        let ph = e["ph"].as_str().unwrap_or_else(|| panic!("no phase in {e}"));
        let (pid, tid) = (num(e, "pid") as u64, num(e, "tid") as u64);
        match ph {
            "M" => {
                let name = e["name"].as_str().unwrap();
                assert!(["process_name", "thread_name", "process_sort_index"].contains(&name), "unknown metadata {e}");
                match name {
                    "process_name" => assert!(named_pids.insert(pid), "process {pid} named twice"),
                    "thread_name" => assert!(named_threads.insert((pid, tid)), "thread {pid}/{tid} named twice"),
                    _ => {}
                }
                assert!(e["args"].is_object(), "metadata without args: {e}");
            }
            "X" => {
                assert!(e["name"].is_string() && e["cat"].is_string(), "a slice without name or category: {e}");
                assert!(num(e, "ts") > 0.0 && num(e, "dur") >= 1.0, "a slice without time: {e}");
                if e["cat"] == "task" {
                    slices.push(e);
                }
            }
            "s" | "f" => {
                let id = e["id"].as_u64().unwrap_or_else(|| panic!("a flow without id: {e}"));
                let at = (pid, tid, num(e, "ts") as u64);
                if ph == "s" {
                    assert!(starts.insert(id, at).is_none(), "flow {id} starts twice");
                } else {
                    assert_eq!(e["bp"], "e", "a flow end that binds to no enclosing slice: {e}");
                    assert!(finishes.insert(id, at).is_none(), "flow {id} ends twice");
                }
            }
            other => panic!("phase {other:?} is not one this timeline writes: {e}"),
        }
        // Every row an event is on is named (Perfetto shows unnamed rows by number).
        if ph != "M" {
            assert!(named_pids.contains(&pid), "process {pid} is not named before {e}");
            assert!(named_threads.contains(&(pid, tid)), "thread {pid}/{tid} is not named before {e}");
        }
    }
    assert_eq!(starts.len(), finishes.len(), "unpaired flow arrows");
    for (id, s) in &starts {
        let f = finishes.get(id).unwrap_or_else(|| panic!("flow {id} never ends"));
        assert!(s.2 <= f.2, "flow {id} ends before it starts");
    }
    assert_eq!(starts.len(), slices.len(), "one arrow per task run");
    slices
}

#[test]
fn the_timeline_of_a_job_with_nested_tasks_is_valid_trace_event_json() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block", "--dashboard-port", "0"]);
    let head = Head::start(cmd, T).unwrap();
    let exe = std::env::current_exe().unwrap();
    ferry(&head, &["job", "submit", "--", exe.to_str().unwrap(), "--ferry-test-job"]);

    let dir = std::env::temp_dir().join(format!("ferry-timeline-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("trace.json");
    // The job's last events reach the history as its driver shuts down: wait for all 15.
    let end = Instant::now() + T;
    let trace = loop {
        let out = ferry(&head, &["timeline", "-o", file.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let trace: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).expect("the timeline is JSON");
        if said.contains("wrote 15 task runs") {
            break trace;
        }
        assert!(Instant::now() < end, "the timeline never had the job's 15 task runs: {said}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let slices = check_trace_format(&trace);
    let names: Vec<&str> = slices.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        (names.iter().filter(|n| **n == "fan").count(), names.iter().filter(|n| **n == "leaf").count()),
        (3, 12)
    );
    assert!(slices.iter().all(|s| s["args"]["state"] == "finished"), "{slices:?}");
    // Each leaf's arrow starts on the row of the fan that submitted it, inside its run.
    let events = trace["traceEvents"].as_array().unwrap();
    let fans: Vec<(u64, u64, u64, u64)> = slices
        .iter()
        .filter(|s| s["name"] == "fan")
        .map(|s| {
            let n = |k: &str| s[k].as_f64().unwrap() as u64;
            (n("pid"), n("tid"), n("ts"), n("ts") + n("dur"))
        })
        .collect();
    let from_fans = events
        .iter()
        .filter(|e| e["ph"] == "s")
        .filter(|e| {
            let n = |k: &str| e[k].as_f64().unwrap() as u64;
            fans.iter().any(|f| f.0 == n("pid") && f.1 == n("tid") && f.2 <= n("ts") && n("ts") <= f.3)
        })
        .count();
    assert_eq!(from_fans, 12, "the leaves' arrows do not start in their fans' runs");
    // The waits: each fan's get_all of its leaves, on its row; the driver's, on the
    // driver's row (process 0); the driver's put.
    let of = |cat: &str| events.iter().filter(|e| e["ph"] == "X" && e["cat"] == cat).collect::<Vec<_>>();
    let gets = of("get");
    let on_fans = gets
        .iter()
        .filter(|g| {
            let n = |k: &str| g[k].as_f64().unwrap() as u64;
            fans.iter().any(|f| f.0 == n("pid") && f.1 == n("tid") && f.2 <= n("ts") && n("ts") <= f.3)
        })
        .count();
    assert_eq!(on_fans, 3, "each fan's wait for its leaves: {gets:?}");
    assert!(gets.iter().any(|g| g["pid"] == 0), "the driver's wait for the fans: {gets:?}");
    assert!(gets.iter().all(|g| g["args"]["object"].is_string()), "{gets:?}");
    let puts = of("put");
    assert!(puts.iter().any(|p| p["pid"] == 0), "the driver's put: {puts:?}");

    // The dashboard's download is the same timeline.
    let url = head.dashboard.clone().unwrap();
    let (addr, token) = url.strip_prefix("http://").unwrap().split_once("/?token=").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /api/timeline HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (headers, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(headers.starts_with("HTTP/1.1 200") && headers.contains("attachment"), "{headers}");
    // Streamed: chunked transfer encoding.
    assert!(headers.to_lowercase().contains("transfer-encoding: chunked"), "{headers}");
    let mut json = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        json.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    let downloaded: Value = serde_json::from_str(&json).expect("the download is JSON");
    assert_eq!(check_trace_format(&downloaded).len(), 15);
    let _ = std::fs::remove_dir_all(&dir);
}
