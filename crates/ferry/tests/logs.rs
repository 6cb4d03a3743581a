//! What tasks and actors print reaches the driver's terminal, each line prefixed with the
//! task or actor and the worker's pid.

mod common;

use common::T;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

#[ferry::remote]
fn shout(word: String) -> u32 {
    println!("out: {word}");
    eprintln!("err: {word}");
    std::process::id()
}

#[ferry::actor]
#[derive(Default)]
pub struct Talker;

#[ferry::actor]
impl Talker {
    pub fn new() -> Self {
        Talker
    }
    pub fn say(&self, word: String) -> u32 {
        println!("actor says {word}");
        std::process::id()
    }
}

/// With `FERRY_TEST_LOG_CHILD=1` this test binary is a driver whose tasks print, and which
/// then waits to be killed (entered before `main`, like worker mode).
#[used]
#[link_section = ".init_array"]
static CHILD: extern "C" fn() = child;

extern "C" fn child() {
    if std::env::var_os("FERRY_TEST_LOG_CHILD").is_none() || std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    ferry::init(ferry::Config::default().num_cpus(1)).unwrap();
    let pid = ferry::get(&shout::remote("hello")).unwrap();
    println!("task pid {pid}");
    let t = Talker::remote().unwrap();
    let apid = ferry::get(&t.say("hi")).unwrap();
    println!("actor pid {apid}");
    if std::env::var_os("FERRY_TEST_LOG_CHILD").is_some_and(|v| v == "once") {
        ferry::shutdown();
        std::process::exit(0);
    }
    std::thread::sleep(T);
    std::process::exit(1);
}

/// Runs this binary as the driver above, to its end, with `log` as FERRY_LOG (none: neither
/// FERRY_LOG nor RUST_LOG); what it wrote to standard error.
fn driver_stderr(log: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("FERRY_TEST_LOG_CHILD", "once").env_remove("RUST_LOG").env_remove("FERRY_LOG");
    if let Some(l) = log {
        cmd.env("FERRY_LOG", l);
    }
    let mut c = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = c.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let end = Instant::now() + T;
    loop {
        match c.try_wait().unwrap() {
            Some(status) => {
                let text = reader.join().unwrap();
                assert!(status.success(), "the driver failed ({status}): {text}");
                return text;
            }
            None if Instant::now() < end => std::thread::sleep(std::time::Duration::from_millis(20)),
            None => {
                let _ = c.kill();
                panic!("the driver did not finish within {T:?}");
            }
        }
    }
}

/// ferry's own events go through `tracing`: filtered by FERRY_LOG, with spans naming the
/// lease (and task, actor, object) they concern; quiet by default; a filter that does not
/// parse is said to be so, and the default used.
#[test]
fn ferry_log_filters_what_ferry_logs_and_spans_name_their_ids() {
    ferry_testkit::own_process!();
    let debug = driver_stderr(Some("ferry_core=debug"));
    assert!(debug.contains("requesting a lease") && debug.contains("lease_request="), "{debug}");
    assert!(debug.lines().any(|l| l.contains("lease{") && l.contains("worker=") && l.contains("granted")), "{debug}");
    let quiet = driver_stderr(None);
    assert!(!quiet.contains("lease"), "debug events are off by default: {quiet}");
    let bad = driver_stderr(Some("ferry_core=loud"));
    assert!(bad.contains("is not valid") && bad.contains("FERRY_LOG"), "{bad}");
    assert!(!bad.contains("requesting a lease"), "{bad}");
}

#[test]
fn task_and_actor_output_reaches_the_driver_with_a_prefix() {
    ferry_testkit::own_process!();
    let mut c = Command::new(std::env::current_exe().unwrap())
        .env("FERRY_TEST_LOG_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in
        [Box::new(c.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(c.stderr.take().unwrap())]
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut seen = Vec::new();
    let end = Instant::now() + T;
    let done = |seen: &[String]| {
        let pid = seen.iter().find_map(|l| l.strip_prefix("task pid "))?.to_string();
        let apid = seen.iter().find_map(|l| l.strip_prefix("actor pid "))?.to_string();
        let want = [
            format!("(shout pid={pid}) out: hello"),
            format!("(shout pid={pid}) err: hello"),
            format!("(Talker pid={apid}) actor says hi"),
        ];
        want.iter().all(|w| seen.contains(w)).then_some(())
    };
    while done(&seen).is_none() {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = c.kill();
                panic!("the driver did not show the prefixed lines within {T:?}; it printed {seen:#?}");
            }
        }
    }
    let _ = c.kill();
    let _ = c.wait();
}
