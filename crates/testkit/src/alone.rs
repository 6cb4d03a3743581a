//! A test in a process of its own, under either test runner.
//!
//! ferry's runtime is per process: the embedded cluster a test starts with its own
//! configuration, `ferry::shutdown`, failpoints set in the environment and the node's
//! cluster-wide figures all belong to the process. `cargo nextest` runs every test in a
//! process of its own; plain `cargo test` runs a file's tests as threads of one process,
//! where they would share (and stop) one another's cluster. [`own_process!`] gives each test
//! what nextest gives it: under `cargo test` the test runs itself again, alone, in a child
//! process (the same binary, filtered to its exact name) and passes or fails with it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the child that runs the test, to the test's name.
const ALONE: &str = "FERRY_TEST_ALONE";

/// How long the child may run: past nextest's own bound for a test (3 × 60 s).
const WITHIN: Duration = Duration::from_secs(200);

/// Runs the calling `#[test]` in a process of its own: returns from it at once when it
/// already has one (under nextest, or in the child), else runs it in a child and returns
/// from the test when the child passed (panics with the child's output if it did not).
#[macro_export]
macro_rules! own_process {
    () => {{
        fn here() {}
        if !$crate::alone::run_alone(::std::any::type_name_of_val(&here)) {
            return;
        }
    }};
}

/// Whether the test at `path` (the path of a function inside it: `crate::test::here`) is
/// alone in this process and should go on; if not, runs it in a child first.
pub fn run_alone(path: &str) -> bool {
    // `krate::module::test::here` → `module::test`, the name libtest filters on.
    let parts: Vec<&str> = path.split("::").collect();
    let name = parts[1..parts.len().saturating_sub(1)].join("::");
    if std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test")
        || std::env::var(ALONE).is_ok_and(|n| n == name)
    {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, &name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary runs again");
    // Read both pipes on threads so a chatty child never blocks on a full pipe.
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().expect("piped")));
    let err = read(Box::new(child.stderr.take().expect("piped")));
    let end = Instant::now() + WITHIN;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    let told = format!("--- its output:\n{out}\n--- its errors:\n{err}");
    match status {
        None => panic!("{name}, run alone, did not finish within {WITHIN:?}\n{told}"),
        Some(s) if !s.success() => panic!("{name}, run alone, failed ({s})\n{told}"),
        // A filter that matched nothing would pass too: it must have run exactly this test.
        Some(_) if !out.contains("1 passed") => panic!("{name} did not run alone (no test matched)\n{told}"),
        Some(_) => false,
    }
}
