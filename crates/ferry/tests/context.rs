//! `ferry::runtime_context()`, as Ray's `get_runtime_context()` is tested (test_runtime_context,
//! test_basic's task and actor ids, test_failure's retry attempts): a driver, a task, a nested
//! task, a retried task and a restarted actor each see who and where they are.

mod common;

use common::*;
use ferry::prelude::*;
use ferry::RuntimeContext;

#[ferry::remote]
fn context() -> RuntimeContext {
    ferry::runtime_context().unwrap()
}

#[ferry::remote]
fn nested() -> (RuntimeContext, RuntimeContext) {
    let inner = ferry::get(&context::remote()).unwrap();
    (ferry::runtime_context().unwrap(), inner)
}

/// Dies the first time it runs for `marker`; the retry says which attempt it is.
#[ferry::remote]
fn attempt_after_dying(marker: String) -> u32 {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"x").unwrap();
        std::process::exit(3);
    }
    ferry::runtime_context().unwrap().attempt
}

#[ferry::actor]
struct Where;

#[ferry::actor]
impl Where {
    fn new() -> Self {
        Where
    }
    fn context(&self) -> RuntimeContext {
        ferry::runtime_context().unwrap()
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

#[test]
fn a_driver_a_task_and_a_nested_task_know_their_job_task_and_resources() {
    ferry_testkit::own_process!();
    cluster();
    let me = ferry::runtime_context().unwrap();
    assert!(me.is_driver(), "{me:?}");
    assert_eq!(me.job_id, me.worker_id, "a driver is its job");
    assert_eq!((me.task_id, me.actor_id, me.attempt), (None, None, 0));
    assert_eq!(me.resources, ferry::Shape::default());

    let r = context::remote();
    let c = ferry::get_timeout(&r, T).unwrap();
    assert_eq!(c.task_id, Some(r.id().task), "{c:?}");
    assert_eq!(c.job_id, me.job_id, "a task is its submitter's job's");
    assert_eq!(c.node_id, me.node_id);
    assert_ne!(c.worker_id, me.worker_id, "it ran in a worker");
    assert_eq!((c.actor_id, c.attempt), (None, 0));
    assert_eq!(c.resources, ferry::Shape::cpus(1.0));
    assert!(!c.is_driver());

    // What it was given to hold.
    let c = ferry::get_timeout(&context::options().num_cpus(0.5).resource("widget", 2.0).remote(), T);
    let err = c.expect_err("no node has widgets");
    assert!(matches!(err, ferry::Error::Infeasible { .. }), "{err}");
    let c = ferry::get_timeout(&context::options().num_cpus(0.5).remote(), T).unwrap();
    assert_eq!(c.resources, ferry::Shape::cpus(0.5));

    // A task's task: the same job, another task (owned by the outer task's worker).
    let (outer, inner) = ferry::get_timeout(&nested::remote(), T).unwrap();
    assert_eq!(inner.job_id, me.job_id);
    assert_eq!(inner.task_id.unwrap().owner, outer.worker_id, "the inner task is the outer worker's");
}

#[test]
fn a_retried_task_knows_it_is_a_retry() {
    ferry_testkit::own_process!();
    cluster();
    let marker = std::env::temp_dir().join(format!("ferry-context-attempt-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let r = attempt_after_dying::options().max_retries(2).remote(marker.display().to_string());
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 1, "the second run is attempt 1");
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn an_actor_knows_its_id_and_whether_it_was_restarted() {
    ferry_testkit::own_process!();
    cluster();
    let me = ferry::runtime_context().unwrap();
    let w = Where::options().max_restarts(1).num_cpus(1.0).remote().unwrap();
    let c = ferry::get_timeout(&w.context(), T).unwrap();
    assert_eq!(c.actor_id, Some(w.id()), "{c:?}");
    assert_eq!(c.job_id, me.job_id, "an actor is its creator's job's");
    assert_eq!((c.actor_restarted, c.actor_restarts), (false, 0));
    assert_eq!(c.resources, ferry::Shape::cpus(1.0));
    assert!(c.task_id.is_some(), "a method's call is a task");
    // Its process dies: the restarted actor says so.
    let pid = ferry::get_timeout(&w.pid(), T).unwrap();
    sigkill(pid);
    let mut again = None;
    eventually("the actor restarts", T, || match ferry::get_timeout(&w.context(), T) {
        Ok(c) => {
            again = Some(c);
            true
        }
        Err(_) => false,
    });
    let again = again.unwrap();
    assert_eq!((again.actor_id, again.actor_restarted, again.actor_restarts), (Some(w.id()), true, 1), "{again:?}");
    assert_ne!(again.worker_id, c.worker_id);
}
