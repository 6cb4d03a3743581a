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
    std::thread::sleep(T);
    std::process::exit(1);
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
