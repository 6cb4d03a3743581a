//! Errors nobody reads are reported, as Ray's "unhandled errors" are (test_failure's
//! `test_unhandled_errors`): a failed task whose every ref is dropped without a `get` is
//! reported once, with its name, its error and where it ran; one whose error was read, or
//! passed on to a task that needed it, is not (the downstream task's is, if nobody reads it).
//! `Config::on_unhandled_error` takes them; by default the driver prints them.

mod common;

use common::*;
use std::sync::{Arc, Mutex};

#[ferry::remote]
fn fails(why: String) -> u64 {
    panic!("{why}")
}

#[ferry::remote]
fn double(x: u64) -> u64 {
    x * 2
}

type Seen = Arc<Mutex<Vec<ferry::UnhandledError>>>;

fn cluster_taking_them() -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let cfg = ferry::Config::default().num_cpus(2).on_unhandled_error(move |u| s.lock().unwrap().push(u.clone()));
    ferry::init(cfg).unwrap();
    seen
}

/// With `FERRY_TEST_UNHANDLED_CHILD` set, this binary is a driver that drops a failed task's
/// ref unread and exits; the test reads what it printed.
#[used]
#[link_section = ".init_array"]
static CHILD: extern "C" fn() = child;

extern "C" fn child() {
    if std::env::var_os("FERRY_TEST_UNHANDLED_CHILD").is_none() || std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    ferry::init(ferry::Config::default().num_cpus(1)).unwrap();
    let r = fails::remote(String::from("nobody reads this"));
    ferry::wait(std::slice::from_ref(&r), 1, Some(T)).unwrap();
    drop(r);
    std::thread::sleep(std::time::Duration::from_millis(200));
    ferry::shutdown();
    std::process::exit(0);
}

#[test]
fn an_error_nobody_reads_is_reported_once_with_its_task_and_where_it_ran() {
    ferry_testkit::own_process!();
    let seen = cluster_taking_them();
    let r = fails::remote(String::from("boom"));
    ferry::wait(std::slice::from_ref(&r), 1, Some(T)).unwrap();
    let copy = r.clone();
    drop(r);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(seen.lock().unwrap().is_empty(), "a ref still lives: not yet");
    drop(copy);
    eventually("the error is reported", T, || !seen.lock().unwrap().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "once: {seen:?}");
    let u = &seen[0];
    assert_eq!(u.task, "fails");
    assert!(matches!(u.error, ferry::Error::TaskPanicked { .. }) && u.error.to_string().contains("boom"), "{u:?}");
    assert!(u.worker.is_some() && u.node == Some(ferry::node_id().unwrap()), "{u:?}");
}

#[test]
fn an_error_read_or_passed_on_is_not_reported_twice() {
    ferry_testkit::own_process!();
    let seen = cluster_taking_them();
    // Read: handled.
    let r = fails::remote(String::from("read"));
    assert!(ferry::get_timeout(&r, T).is_err());
    drop(r);
    // Passed on to a task that needed it, whose own ref is read: handled.
    let up = fails::remote(String::from("upstream, read downstream"));
    let down = double::remote(&up);
    drop(up);
    assert!(ferry::get_timeout(&down, T).is_err());
    drop(down);
    // Passed on, and the downstream ref dropped unread: reported once, as the downstream's.
    let up = fails::remote(String::from("upstream, unread"));
    let down = double::remote(&up);
    ferry::wait(std::slice::from_ref(&down), 1, Some(T)).unwrap();
    drop(up);
    drop(down);
    eventually("the downstream error is reported", T, || !seen.lock().unwrap().is_empty());
    // Succeeded tasks are never reported.
    assert_eq!(ferry::get_timeout(&double::remote(2), T).unwrap(), 4);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].task, "double");
    assert!(seen[0].error.to_string().contains("upstream, unread"), "{:?}", seen[0]);
}

#[test]
fn by_default_the_driver_prints_it() {
    ferry_testkit::own_process!();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("FERRY_TEST_UNHANDLED_CHILD", "1")
        .env_remove("FERRY_LOG")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("unhandled error in task fails")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("nobody reads this") && lines[0].contains("Config::on_unhandled_error"), "{err}");
}
