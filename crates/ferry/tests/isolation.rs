//! Sessions of one user on one host leave each other alone: a program in another PID
//! namespace (a container sharing `/tmp` and `/dev/shm`) does not take a live session for a
//! dead one, a session whose files were removed under it still stops, and a program that
//! starts a cluster and exits at once leaves no noise behind.

mod common;

use common::{cluster, T};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[ferry::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// With `FERRY_TEST_QUICK=1` this test binary is a program that starts a cluster, runs one
/// task and exits at once (entered before `main`, like worker mode).
#[used]
#[link_section = ".init_array"]
static QUICK: extern "C" fn() = quick;

extern "C" fn quick() {
    if std::env::var_os("FERRY_TEST_QUICK").is_none() || std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    // SAFETY: single-threaded here, before main; the workers must not inherit it.
    unsafe { std::env::remove_var("FERRY_TEST_QUICK") };
    ferry::init(ferry::Config::default().num_cpus(2)).unwrap();
    assert_eq!(ferry::get_timeout(&add::remote(1, 2), T).unwrap(), 3);
    println!("quick done");
    std::process::exit(0);
}

/// Runs `cmd` to its end (at most `within`) and returns its exit status and everything it and
/// any process that inherited its output (its workers) wrote, until the last of them closed it.
fn run_all_output(mut cmd: Command, within: Duration) -> (bool, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send((false, s));
    });
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        let _ = tx2.send((true, s));
    });
    let end = Instant::now() + within;
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, s)) => stderr = Some(s),
            Ok((false, s)) => stdout = Some(s),
            Err(_) => {
                let _ = child.kill();
                panic!("{cmd:?}: its output did not end within {within:?}");
            }
        }
    }
    let ok = child.wait().unwrap().success();
    (ok, stdout.unwrap_or_default(), stderr.unwrap_or_default())
}

/// The finding: cleanup of stale sessions judged liveness by `/proc/<pid>`, so a program in
/// another PID namespace deleted every live session it could see. Now a session is live while
/// its daemon holds its lock, in any namespace.
#[test]
fn a_program_in_another_pid_namespace_leaves_a_live_session_alone() {
    ferry_testkit::own_process!();
    cluster();
    let big = ferry::put(vec![5u8; 4 << 20]).unwrap();
    let info = ferry::__private::session_info().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"]).arg(&exe).env("FERRY_TEST_QUICK", "1");
    let (ok, out, err) = run_all_output(cmd, T);
    assert!(ok && out.contains("quick done"), "the program in a new PID namespace failed: {out}{err}");
    assert!(info.session_dir.exists() && info.store_dir.exists(), "the live session's files were deleted");
    // And everything works as before.
    assert_eq!(ferry::get_bytes(&big).unwrap()[4 << 19], 5);
    let again = ferry::put(vec![6u8; 4 << 20]).unwrap();
    assert_eq!(ferry::get_bytes(&again).unwrap()[17], 6);
    assert_eq!(ferry::get_timeout(&add::remote(2, 2), T).unwrap(), 4);
}

/// A session whose directories were removed under it (by a buggy cleanup, or by hand) still
/// stops: nothing waits on a wake-up through its socket file.
#[test]
fn a_session_whose_files_were_removed_still_shuts_down() {
    ferry_testkit::own_process!();
    cluster();
    assert_eq!(ferry::get_timeout(&add::remote(1, 1), T).unwrap(), 2);
    let info = ferry::__private::session_info().unwrap();
    // Workers may still be making their sockets there: removing races with them, so again
    // until it is gone.
    let end = Instant::now() + T;
    while let Err(e) = std::fs::remove_dir_all(&info.session_dir) {
        if e.kind() == std::io::ErrorKind::NotFound {
            break;
        }
        assert!(Instant::now() < end, "cannot remove the session directory: {e}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = std::thread::spawn(ferry::shutdown);
    let end = Instant::now() + T;
    while !t.is_finished() {
        assert!(Instant::now() < end, "shutdown hung on a session without its files");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The finding: a program that starts a cluster and exits within milliseconds sometimes
/// printed, after success, `ferry-worker: cannot reach the cluster: ... Connection refused`
/// (a worker started for a cluster that had just stopped). Twenty runs, not a line.
#[test]
fn a_program_that_exits_at_once_leaves_no_noise() {
    ferry_testkit::own_process!();
    let exe = std::env::current_exe().unwrap();
    for i in 0..20 {
        let mut cmd = Command::new(&exe);
        cmd.env("FERRY_TEST_QUICK", "1");
        let (ok, out, err) = run_all_output(cmd, T);
        assert!(ok && out.contains("quick done"), "run {i}: {out}{err}");
        assert!(!err.contains("ferry"), "run {i} printed after it was done:\n{err}");
    }
}

/// Without `init`, the first ferry call starts an embedded cluster with `Config::default()`,
/// as Ray's first call does.
#[test]
fn the_first_call_starts_ferry_without_init() {
    ferry_testkit::own_process!();
    let r = ferry::put(41u64).expect("put starts ferry");
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 41);
    assert_eq!(ferry::get_timeout(&add::remote(1, 1), T).unwrap(), 2);
}
