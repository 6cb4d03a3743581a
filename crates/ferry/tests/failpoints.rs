//! Failpoints (`ferry_proto::fail`) at the protocol's steps, on a real embedded cluster: a worker
//! that crashes after running a task and before replying, one that crashes midway through
//! writing a large return, one that crashes after storing a large return and before reporting
//! where it is, and an actor's process that crashes during creation. Each fires once in the
//! cluster; the task is retried, the actor restarted, and the values come out right. And an
//! actor alive but unreachable: its calls fail typed, bounded in time.

mod common;

use common::{cluster, T};
use ferry::prelude::*;

/// Appends this process's pid to `log` (one line per run, whichever process runs it).
fn note_run(log: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    writeln!(f, "{}", std::process::id()).unwrap();
}

fn runs(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect()
}

#[ferry::remote]
fn add(log: String, a: i64, b: i64) -> i64 {
    note_run(&log);
    a + b
}

#[ferry::remote]
fn make_bytes(log: String, n: usize, fill: u8) -> Vec<u8> {
    note_run(&log);
    vec![fill; n]
}

#[ferry::actor]
pub struct Counter {
    n: i64,
}

#[ferry::actor]
impl Counter {
    pub fn new(log: String, start: i64) -> Self {
        note_run(&log);
        Counter { n: start }
    }
    pub fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }
}

#[test]
fn crashes_at_each_protocol_step_are_recovered() {
    ferry_testkit::own_process!();
    let dir = std::env::temp_dir().join(format!("ferry-failpoints-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let marker = |n: &str| dir.join(n);
    // Set before the cluster starts: its workers inherit it.
    std::env::set_var(
        "FERRY_FAILPOINTS",
        format!(
            "worker-before-reply=crash-once:{},worker-after-store=crash-once:{},actor-before-ready=crash-once:{},\
             store-mid-write=crash-once:{}",
            marker("reply").display(),
            marker("store").display(),
            marker("actor").display(),
            marker("midwrite").display()
        ),
    );
    cluster();

    let log = |n: &str| dir.join(format!("{n}.runs"));
    let twice_in_two_processes = |n: &str| {
        let r = runs(&log(n));
        assert_eq!(r.len(), 2, "{n}: ran {} times (the first run must crash)", r.len());
        assert_ne!(r[0], r[1], "{n}: the second run must be another process");
    };

    // After a task ran, before its reply: the caller sees the worker die and runs it again.
    let r = add::remote(log("add").display().to_string(), 2, 3);
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 5);
    twice_in_two_processes("add");

    // Midway through writing a large return into the arena (its first part written, the rest
    // not): nothing partial is ever sealed, the retry's value is whole, and the dead writer's
    // extent goes back.
    // (`worker-after-store` is held off meanwhile: its marker exists until the next step.)
    std::fs::write(marker("store"), "").unwrap();
    let log_mid = log("midwrite");
    let v = ferry::get_timeout(&make_bytes::remote(log_mid.display().to_string(), 5 << 20, 4), T).unwrap();
    assert!(v.len() == 5 << 20 && v.iter().all(|b| *b == 4));
    twice_in_two_processes("midwrite");
    std::fs::remove_file(marker("store")).unwrap();
    drop(v);
    common::eventually("no extent left taken", T, || {
        let s = ferry::node_stats().unwrap();
        s.store_objects == 0 && s.arena_free_bytes == s.arena_bytes
    });

    // After a large return was stored and sealed, before its location was reported.
    let v = ferry::get_timeout(&make_bytes::remote(log("big").display().to_string(), 3 << 20, 9), T).unwrap();
    assert!(v.len() == 3 << 20 && v.iter().all(|b| *b == 9));
    twice_in_two_processes("big");
    drop(v);

    // During actor creation: the actor is restarted (it may be once) and answers.
    let c = Counter::options().max_restarts(1).remote(log("actor").display().to_string(), 10).unwrap();
    assert_eq!(ferry::get_timeout(&c.incr(1), T).unwrap(), 11);
    twice_in_two_processes("actor");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An actor alive but unreachable (failpoint `actor-refuses-callers`: its process drops
/// every connection made to it, as a partition or a stopped process would): its calls end
/// in `ActorUnavailable` within bounded time rather than wait for ever, a later call tries
/// again and fails the same way, and the actor itself stays alive.
#[test]
fn calls_to_a_live_actor_nobody_can_reach_fail_typed() {
    ferry_testkit::own_process!();
    let dir = std::env::temp_dir().join(format!("ferry-unreachable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("FERRY_FAILPOINTS", "actor-refuses-callers=break");
    cluster();
    let log = dir.join("ctor.runs").display().to_string();
    let c = Counter::remote(log.clone(), 0).unwrap();
    let unavailable = |r: ObjectRef<i64>, what: &str| {
        let start = std::time::Instant::now();
        match ferry::get_timeout(&r, T) {
            Err(ferry::Error::ActorUnavailable { actor, detail }) => {
                assert!(actor.contains("Counter") && detail.contains("failed twice"), "{what}: {actor}: {detail}");
            }
            other => panic!("{what}: expected ActorUnavailable, got {other:?} after {:?}", start.elapsed()),
        }
    };
    unavailable(c.incr(1), "the first call");
    unavailable(c.incr(1), "a later call");
    let me = ferry::state::list_actors().unwrap().into_iter().find(|a| a.actor == c.id()).unwrap();
    assert_eq!(me.state, "alive", "the actor itself is fine: {me:?}");
    assert_eq!(runs(std::path::Path::new(&log)).len(), 1, "it was never restarted");
    let _ = std::fs::remove_dir_all(&dir);
}
