//! Progress bars: a `get_all` on many refs that lasts over a second draws one on a terminal
//! (this test runs a driver under `script`, which gives it a pseudo-terminal), and draws
//! nothing when standard error is a pipe.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[ferry::remote]
fn nap(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    i
}

/// This binary as a driver that waits on 3,000 tasks (about 1.5 s on two CPUs).
#[used]
#[link_section = ".init_array"]
static DRIVER: extern "C" fn() = driver_entry;

extern "C" fn driver_entry() {
    if std::env::var_os("FERRY_WORKER").is_some() || std::env::var_os("FERRY_PROGRESS_TEST_DRIVER").is_none() {
        return;
    }
    ferry::init(ferry::Config::default().num_cpus(2)).unwrap();
    let refs: Vec<_> = (0..3000).map(nap::remote).collect();
    let sum: u64 = ferry::get_all(&refs).unwrap().into_iter().sum();
    println!("sum {sum}");
    ferry::shutdown();
    std::process::exit(0);
}

/// Runs `cmd` for at most a minute; returns everything it printed.
fn run(mut cmd: Command) -> String {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{cmd:?} took more than a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_long_get_all_on_a_terminal_shows_a_progress_bar() {
    ferry_testkit::own_process!();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("script");
    // -q: no banner; -e: its exit status; -c: the command; the typescript goes nowhere.
    cmd.args(["-qec", &format!("{} --nocapture", exe.display()), "/dev/null"]).env("FERRY_PROGRESS_TEST_DRIVER", "1");
    let out = run(cmd);
    assert!(out.contains(&format!("sum {}", 2999 * 3000 / 2)), "the driver did not finish: {out}");
    assert!(out.contains("get_all ["), "no progress bar on a terminal: {out}");
    assert!(out.contains("/3000 ready"), "the bar does not count the refs: {out}");
}

#[test]
fn no_progress_bar_when_standard_error_is_a_pipe() {
    ferry_testkit::own_process!();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("FERRY_PROGRESS_TEST_DRIVER", "1");
    let out = run(cmd);
    assert!(out.contains("sum"), "the driver did not finish: {out}");
    assert!(!out.contains("get_all ["), "a progress bar on a pipe: {out}");
}
