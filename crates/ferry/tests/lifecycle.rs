//! An actor's end on purpose, as Ray's test_actor tests `exit_actor` and `__ray_terminate__`:
//! `ferry::exit_actor()` inside a method ends the actor once the method returns (its caller
//! gets the result; calls after it fail with `ActorDied` saying it exited on purpose; no
//! restart); a handle's `terminate()` runs the calls sent before it and then ends the actor;
//! either way the actor's `on_exit` runs. Outside an actor, `exit_actor` is an error.

mod common;

use common::*;
use ferry::prelude::*;

#[ferry::actor]
struct Journal {
    path: String,
    lines: Vec<String>,
}

#[ferry::actor]
impl Journal {
    fn new(path: String) -> Self {
        Journal { path, lines: Vec::new() }
    }
    fn write(&mut self, line: String) -> usize {
        self.lines.push(line);
        self.lines.len()
    }
    fn slow_write(&mut self, line: String) -> usize {
        std::thread::sleep(std::time::Duration::from_millis(200));
        self.write(line)
    }
    fn close(&mut self) -> String {
        ferry::exit_actor().unwrap();
        "closing".into()
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn fail(&self) -> u32 {
        panic!("on purpose")
    }
    /// Flushes what it kept: runs when the actor ends on purpose.
    fn on_exit(&mut self) {
        std::fs::write(&self.path, self.lines.join("\n")).unwrap();
    }
}

fn journal(tag: &str) -> (std::path::PathBuf, ferry::ActorHandle<Journal>) {
    let path = std::env::temp_dir().join(format!("ferry-lifecycle-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let j = Journal::options().max_restarts(3).remote(path.display().to_string()).unwrap();
    (path, j)
}

fn exited_on_purpose(r: ferry::Result<usize>, why: &str) {
    match r {
        Err(ferry::Error::ActorDied { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected ActorDied ({why}), got {other:?}"),
    }
}

#[test]
fn exit_actor_ends_it_after_the_method_with_its_hook_and_no_restart() {
    ferry_testkit::own_process!();
    cluster();
    let (path, j) = journal("exit");
    assert_eq!(ferry::get_timeout(&j.write(String::from("a")), T).unwrap(), 1);
    let pid = ferry::get_timeout(&j.pid(), T).unwrap();
    let closing = j.close();
    let after = j.write(String::from("b"));
    assert_eq!(ferry::get_timeout(&closing, T).unwrap(), "closing", "the method's result reaches its caller");
    exited_on_purpose(ferry::get_timeout(&after, T), "exited on purpose");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "a", "on_exit ran, before the later call");
    eventually("its process ended", T, || !pid_alive(pid));
    // Not restarted, though it had restarts left.
    exited_on_purpose(ferry::get_timeout(&j.write(String::from("c")), T), "exited on purpose");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn terminate_runs_the_calls_before_it_then_ends_the_actor() {
    ferry_testkit::own_process!();
    cluster();
    let (path, j) = journal("terminate");
    let before: Vec<_> = (0..3).map(|i| j.slow_write(format!("line {i}"))).collect();
    j.terminate();
    let after = j.write(String::from("too late"));
    assert_eq!(ferry::get_all(&before).unwrap(), vec![1, 2, 3]);
    exited_on_purpose(ferry::get_timeout(&after, T), "terminated");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 0\nline 1\nline 2");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn exit_actor_outside_an_actor_is_an_error() {
    ferry_testkit::own_process!();
    cluster();
    let e = ferry::exit_actor().unwrap_err().to_string();
    assert!(e.contains("inside an actor's method"), "{e}");
}

/// Per-call options (Ray's `actor.method.options(name=..)`): the call goes by that name in
/// its error; other calls keep the method's.
#[test]
fn a_call_can_be_given_a_name_of_its_own() {
    ferry_testkit::own_process!();
    cluster();
    let (_, j) = journal("named");
    let e = ferry::get_timeout(&j.method_options().name("nightly-check").fail(), T).unwrap_err();
    assert!(matches!(&e, ferry::Error::TaskPanicked { task, .. } if task == "nightly-check"), "{e}");
    let e = ferry::get_timeout(&j.fail(), T).unwrap_err();
    assert!(matches!(&e, ferry::Error::TaskPanicked { task, .. } if task == "fail"), "{e}");
    assert_eq!(ferry::get_timeout(&j.method_options().name("w").write(String::from("x")), T).unwrap(), 1);
}
