//! Actors on a real embedded cluster: each actor is its own worker process.

mod common;

use common::{cluster, eventually, pid_alive, sigkill, T};
use ferry::prelude::*;
use ferry::Error;

#[ferry::actor]
pub struct Counter {
    n: i64,
}

#[ferry::actor]
impl Counter {
    pub fn new(start: i64) -> Self {
        Counter { n: start }
    }
    pub fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }
    pub fn get(&self) -> i64 {
        self.n
    }
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
    pub fn slow_get(&self, ms: u64) -> i64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.n
    }
    pub fn fail(&mut self, msg: String) -> i64 {
        self.n += 1000;
        panic!("counter failed: {msg}")
    }
    pub fn die(&self) -> i64 {
        std::process::abort()
    }
    /// Dies `ms` milliseconds into the call.
    pub fn die_after(&self, ms: u64) -> i64 {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::abort()
    }
    /// Calls another actor from inside this one.
    pub fn add_from(&mut self, other: ActorHandle<Counter>) -> i64 {
        let v = ferry::get(&other.get()).unwrap();
        self.n += v;
        self.n
    }
}

/// Counts how many of its calls run at the same moment.
#[ferry::actor]
#[derive(Default)]
pub struct Gauge {
    active: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

#[ferry::actor]
impl Gauge {
    pub fn new() -> Self {
        Gauge::default()
    }
    pub fn hold(&self, ms: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.active.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        self.active.fetch_sub(1, SeqCst);
    }
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An async actor: its calls interleave on one event loop where they `.await`.
#[ferry::actor]
pub struct Waiter {
    calls: std::sync::atomic::AtomicU64,
    active: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

#[ferry::actor]
impl Waiter {
    pub fn new() -> Self {
        Waiter { calls: Default::default(), active: Default::default(), peak: Default::default() }
    }
    /// Waits for a task of `ms` milliseconds; returns the thread it ran on.
    pub async fn wait_for(&self, ms: u64) -> String {
        use std::sync::atomic::Ordering::SeqCst;
        self.calls.fetch_add(1, SeqCst);
        let now = self.active.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        let r = sleep_ms::options().num_cpus(0.0).remote(ms);
        assert_eq!(r.await.unwrap(), ms);
        self.active.fetch_sub(1, SeqCst);
        format!("{:?}", std::thread::current().id())
    }
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub async fn add_async(&self, a: i64, b: i64) -> i64 {
        add::remote(a, b).await.unwrap()
    }
    pub async fn boom(&self) -> i64 {
        panic!("async boom")
    }
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Default for Waiter {
    fn default() -> Self {
        Waiter::new()
    }
}

#[ferry::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[ferry::actor]
pub struct Other {
    s: String,
}

#[ferry::actor]
impl Other {
    pub fn new() -> Self {
        Other { s: "other".into() }
    }
    pub fn name(&self) -> String {
        self.s.clone()
    }
}

impl Default for Other {
    fn default() -> Self {
        Other::new()
    }
}

#[ferry::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// A task that receives a handle and calls the actor from its own process.
#[ferry::remote]
fn bump_from_task(c: ActorHandle<Counter>, times: u32) -> i64 {
    let mut last = 0;
    for _ in 0..times {
        last = ferry::get(&c.incr(1)).unwrap();
    }
    last
}

fn live_actors() -> u64 {
    ferry::node_stats().unwrap().actors
}

#[test]
fn calls_run_in_submission_order_and_return_refs() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::remote(10).unwrap();
    let refs: Vec<_> = (0..200).map(|_| c.incr(1)).collect();
    let vals = ferry::get_all(&refs).unwrap();
    assert_eq!(vals, (11..=210).collect::<Vec<i64>>());
    assert_eq!(ferry::get_timeout(&c.get(), T).unwrap(), 210);
    // Results are ordinary refs: pass one to a task, to another actor, and wait on them.
    let r = add::remote(c.get(), 5);
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 215);
    let other = Counter::remote(1000).unwrap();
    let chained = other.incr(c.incr(1));
    let (ready, pending) = ferry::wait(&[chained.clone(), c.get()], 2, Some(T)).unwrap();
    assert_eq!((ready.len(), pending.len()), (2, 0));
    assert_eq!(ferry::get_timeout(&chained, T).unwrap(), 1211);
}

#[test]
fn constructor_and_method_arguments_may_be_refs() {
    ferry_testkit::own_process!();
    cluster();
    let start = add::remote(40, 2);
    let c = Counter::remote(&start).unwrap();
    let by = add::remote(1, 1);
    assert_eq!(ferry::get_timeout(&c.incr(&by), T).unwrap(), 44);
    // A call whose argument is not ready does not let later calls overtake it.
    let slow = add::remote(1, 0);
    let first = c.incr(slow);
    let second = c.incr(100);
    assert_eq!(ferry::get_timeout(&first, T).unwrap(), 45);
    assert_eq!(ferry::get_timeout(&second, T).unwrap(), 145);
}

#[test]
fn handles_are_first_class() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::remote(0).unwrap();
    let t = bump_from_task::remote(c.clone(), 5);
    assert_eq!(ferry::get_timeout(&t, T).unwrap(), 5);
    // A handle given to another actor, which calls the first one directly.
    let d = Counter::remote(100).unwrap();
    assert_eq!(ferry::get_timeout(&d.add_from(c.clone()), T).unwrap(), 105);
    // The task keeps the actor alive even when the caller drops its handle at once.
    let t = bump_from_task::remote(c.clone(), 3);
    drop(c);
    assert_eq!(ferry::get_timeout(&t, T).unwrap(), 8);
}

#[test]
fn actor_stops_when_every_handle_is_dropped() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::remote(1).unwrap();
    let pid = ferry::get_timeout(&c.pid(), T).unwrap();
    let c2 = c.clone();
    drop(c);
    assert_eq!(ferry::get_timeout(&c2.get(), T).unwrap(), 1, "one handle left");
    assert_eq!(live_actors(), 1);
    let pending = c2.slow_get(200);
    drop(c2);
    // Pending calls finish first.
    assert_eq!(ferry::get_timeout(&pending, T).unwrap(), 1);
    eventually("the actor stopped", T, || live_actors() == 0);
    eventually("its process exited", T, || !pid_alive(pid));
}

#[test]
fn kill_stops_at_once_and_calls_fail_with_actor_died() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::remote(1).unwrap();
    let pid = ferry::get_timeout(&c.pid(), T).unwrap();
    let pending = c.slow_get(5000);
    std::thread::sleep(Duration::from_millis(50));
    ferry::kill(&c).unwrap();
    match ferry::get_timeout(&pending, T) {
        Err(e @ Error::ActorDied { .. }) => assert!(e.to_string().contains("kill"), "{e}"),
        other => panic!("expected ActorDied, got {other:?}"),
    }
    assert!(matches!(ferry::get_timeout(&c.get(), T), Err(Error::ActorDied { .. })));
    eventually("the actor's process is gone", T, || !pid_alive(pid));
}

#[test]
fn named_and_detached_actors() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::options().name("hits").detached().remote(7).unwrap();
    ferry::get_timeout(&c.incr(1), T).unwrap();
    drop(c); // detached: lives on without handles
    let same = ferry::get_actor::<Counter>("hits").unwrap();
    assert_eq!(ferry::get_timeout(&same.get(), T).unwrap(), 8);
    assert!(matches!(ferry::get_actor::<Counter>("nope"), Err(Error::ActorNotFound { .. })));
    match ferry::get_actor::<Other>("hits") {
        Err(e @ Error::ActorTypeMismatch { .. }) => assert!(e.to_string().contains("Counter"), "{e}"),
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    assert!(matches!(Counter::options().name("hits").remote(0), Err(Error::ActorNameTaken { .. })));
    ferry::kill(&same).unwrap();
    eventually("the name is free again", T, || ferry::get_actor::<Counter>("hits").is_err());
    let again = Counter::options().name("hits").remote(0).unwrap();
    assert_eq!(ferry::get_timeout(&again.get(), T).unwrap(), 0);
    let o = Other::remote().unwrap();
    assert_eq!(ferry::get_timeout(&o.name(), T).unwrap(), "other");
}

#[test]
fn max_concurrency_runs_shared_methods_together() {
    ferry_testkit::own_process!();
    cluster();
    let g = Gauge::options().max_concurrency(4).remote().unwrap();
    ferry::get_all(&(0..4).map(|_| g.hold(300)).collect::<Vec<_>>()).unwrap();
    assert_eq!(ferry::get_timeout(&g.peak(), T).unwrap(), 4, "four calls ran at once");
    // With the default of one, they run one after another.
    let s = Gauge::remote().unwrap();
    ferry::get_all(&(0..3).map(|_| s.hold(50)).collect::<Vec<_>>()).unwrap();
    assert_eq!(ferry::get_timeout(&s.peak(), T).unwrap(), 1);
}

#[test]
fn async_methods_interleave_on_one_event_loop() {
    ferry_testkit::own_process!();
    cluster();
    let w = Waiter::remote().unwrap();
    assert_eq!(ferry::get_timeout(&w.add_async(40, 2), T).unwrap(), 42);
    // Warm the pool so the timing below measures the actor, not process starts.
    ferry::get_all(&(0..4).map(|_| sleep_ms::options().num_cpus(0.0).remote(1)).collect::<Vec<_>>()).unwrap();
    let calls: Vec<_> = (0..4).map(|_| w.wait_for(400)).collect();
    let threads = ferry::get_all(&calls).unwrap();
    // The four waits were in progress at the same moment...
    assert_eq!(ferry::get_timeout(&w.peak(), T).unwrap(), 4);
    // ...on a single thread.
    assert!(threads.iter().all(|x| *x == threads[0]), "{threads:?}");
    assert_eq!(ferry::get_timeout(&w.calls(), T).unwrap(), 4);
    // A panic in an async method fails that call only.
    assert!(matches!(ferry::get_timeout(&w.boom(), T), Err(Error::TaskPanicked { .. })));
    assert_eq!(ferry::get_timeout(&w.add_async(1, 1), T).unwrap(), 2);
}

#[test]
fn a_panic_fails_only_that_call() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::remote(1).unwrap();
    match ferry::get_timeout(&c.fail("oops"), T) {
        Err(Error::TaskPanicked { task, message }) => {
            assert_eq!(task, "fail");
            assert!(message.contains("counter failed: oops"), "{message}");
        }
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    // The actor goes on, with the state the method left.
    assert_eq!(ferry::get_timeout(&c.incr(1), T).unwrap(), 1002);
}

#[test]
fn a_dead_actor_fails_pending_and_later_calls() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::remote(1).unwrap();
    let dying = c.die();
    let after = c.get();
    assert!(matches!(ferry::get_timeout(&dying, T), Err(Error::ActorDied { .. })));
    assert!(matches!(ferry::get_timeout(&after, T), Err(Error::ActorDied { .. })));
    assert!(matches!(ferry::get_timeout(&c.get(), T), Err(Error::ActorDied { .. })));
    eventually("no live actor", T, || live_actors() == 0);
    // The cluster is fine.
    assert_eq!(ferry::get_timeout(&add::remote(1, 1), T).unwrap(), 2);
}

#[test]
fn killed_process_is_restarted_and_calls_in_flight_retried() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::options().max_restarts(2).max_task_retries(2).remote(100).unwrap();
    assert_eq!(ferry::get_timeout(&c.incr(1), T).unwrap(), 101);
    let pid = ferry::get_timeout(&c.pid(), T).unwrap();
    let in_flight = c.slow_get(2000);
    std::thread::sleep(Duration::from_millis(100));
    sigkill(pid);
    // The call in flight is retried on the new incarnation, whose constructor ran again.
    assert_eq!(ferry::get_timeout(&in_flight, T).unwrap(), 100);
    let new_pid = ferry::get_timeout(&c.pid(), T).unwrap();
    assert_ne!(pid, new_pid);
    assert_eq!(ferry::get_timeout(&c.incr(5), T).unwrap(), 105);
    // The state API counts the restart, and the one left.
    let seen = ferry::state::list_actors().unwrap().into_iter().find(|a| a.actor == c.id()).unwrap();
    assert_eq!((seen.state.as_str(), seen.restarts, seen.restarts_left), ("alive", 1, 1), "{seen:?}");
}

/// Creates two named actors from inside a task (so the task's worker is their creator) and
/// returns that worker's pid.
#[ferry::remote]
fn create_from_task(detached: String, attached: String) -> u32 {
    let d = Counter::options().name(&detached).detached().remote(1).unwrap();
    let a = Counter::options().name(&attached).remote(2).unwrap();
    assert_eq!(ferry::get(&d.get()).unwrap() + ferry::get(&a.get()).unwrap(), 3);
    // Keep the non-detached actor held by this process after the task returns.
    std::mem::forget(a);
    std::process::id()
}

#[test]
fn detached_actor_outlives_its_creator_and_an_attached_one_does_not() {
    ferry_testkit::own_process!();
    cluster();
    let creator = ferry::get_timeout(&create_from_task::remote("survivor", "follower"), T).unwrap();
    assert_eq!(ferry::get_timeout(&ferry::get_actor::<Counter>("follower").unwrap().get(), T).unwrap(), 2);
    sigkill(creator);
    eventually("the creator's actor died with it", T, || ferry::get_actor::<Counter>("follower").is_err());
    let survivor = ferry::get_actor::<Counter>("survivor").unwrap();
    assert_eq!(ferry::get_timeout(&survivor.incr(1), T).unwrap(), 2);
    ferry::kill(&survivor).unwrap();
}

#[test]
fn an_actor_no_node_can_host_fails_its_calls_with_the_reason() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::options().resource("unobtainium", 1.0).remote(0).unwrap();
    match ferry::get_timeout(&c.get(), T) {
        Err(e @ Error::ActorDied { .. }) => assert!(e.to_string().contains("never be scheduled"), "{e}"),
        other => panic!("expected ActorDied, got {other:?}"),
    }
}

#[test]
fn a_handle_inside_a_put_value_keeps_the_actor_alive() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::remote(7).unwrap();
    let boxed = ferry::put(vec![c.clone()]).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(live_actors(), 1, "the put value holds the actor");
    let handles: Vec<ActorHandle<Counter>> = ferry::get(&boxed).unwrap();
    assert_eq!(ferry::get_timeout(&handles[0].incr(1), T).unwrap(), 8);
    drop(handles);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(live_actors(), 1, "still held by the value");
    drop(boxed);
    eventually("the actor stops with the value", T, || live_actors() == 0);
}

#[ferry::remote]
fn make_counter(start: i64) -> Vec<ActorHandle<Counter>> {
    // The task's own handle goes when it returns: the caller must already hold the actor.
    vec![Counter::remote(start).unwrap()]
}

#[test]
fn a_handle_returned_from_a_task_is_held_by_the_caller() {
    ferry_testkit::own_process!();
    cluster();
    let out = make_counter::remote(40);
    ferry::wait(std::slice::from_ref(&out), 1, Some(T)).unwrap();
    // Give the worker's handle time to go before anyone decodes the value.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(live_actors(), 1);
    let handles = ferry::get(&out).unwrap();
    assert_eq!(ferry::get_timeout(&handles[0].incr(2), T).unwrap(), 42);
    drop(out);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(live_actors(), 1, "the decoded handle holds it");
    drop(handles);
    eventually("the actor stops with the last handle", T, || live_actors() == 0);
}

/// On one node, an actor pinned (hard) to a node that is not in the cluster fails with the
/// reason; pinned to this node, or softly to the missing one, it runs here.
#[test]
fn an_actor_pinned_to_a_missing_node_fails_with_the_reason() {
    ferry_testkit::own_process!();
    cluster();
    let here = ferry::node_id().unwrap();
    let missing = ferry::NodeId(7);
    let pin = |node, soft| SchedulingStrategy::NodeAffinity { node, soft };
    let lost = Counter::options().scheduling_strategy(pin(missing, false)).remote(0).unwrap();
    let err = ferry::get_timeout(&lost.get(), T).unwrap_err().to_string();
    assert!(err.contains("node affinity") && err.contains("not in the cluster"), "{err}");
    for c in [pin(here, false), pin(missing, true), SchedulingStrategy::Spread] {
        let a = Counter::options().scheduling_strategy(c).remote(3).unwrap();
        assert_eq!(ferry::get_timeout(&a.get(), T).unwrap(), 3);
    }
}

/// The finding (Ray's test_actor_failures): an actor with restarts but no call retries whose
/// process died during a call left that call, and the calls sent behind it, pending for ever
/// while new calls were answered. Ray fails them with `ActorDied`: so does ferry now.
#[test]
fn calls_in_flight_when_a_restarting_actor_dies_fail_with_actor_died() {
    ferry_testkit::own_process!();
    cluster();
    let c = Counter::options().max_restarts(1).remote(0).unwrap();
    let warm: Vec<_> = (0..100).map(|_| c.incr(1)).collect();
    assert_eq!(ferry::get_all(&warm).unwrap().last(), Some(&100));
    let dying = c.die_after(300);
    let behind: Vec<_> = (0..7).map(|_| c.incr(1)).collect();
    for (i, r) in std::iter::once(&dying).chain(&behind).enumerate() {
        match ferry::get_timeout(r, T) {
            Err(e @ Error::ActorDied { .. }) => assert!(e.to_string().contains("no retries left"), "call {i}: {e}"),
            other => panic!("call {i} in flight when the actor died: expected ActorDied, got {other:?}"),
        }
    }
    // The restarted actor answers (its constructor ran again).
    assert_eq!(ferry::get_timeout(&c.incr(1), T).unwrap(), 1);
}

/// The finding: with `max_restarts = 1`, the first call after a kill of the actor's process
/// (sent before the caller learned of the death) never completed. Every call now ends: on
/// the new incarnation, or with `ActorDied`.
#[test]
fn a_call_sent_while_the_actors_process_dies_ends() {
    ferry_testkit::own_process!();
    cluster();
    for round in 0..5 {
        let c = Counter::options().max_restarts(1).remote(10).unwrap();
        let pid = ferry::get_timeout(&c.pid(), T).unwrap();
        sigkill(pid);
        let first = c.get();
        match ferry::get_timeout(&first, T) {
            Ok(10) | Err(Error::ActorDied { .. }) => {}
            other => panic!("round {round}: the call sent as the actor died: {other:?}"),
        }
        assert_eq!(ferry::get_timeout(&c.get(), T).unwrap(), 10, "round {round}: later calls work");
        assert_ne!(ferry::get_timeout(&c.pid(), T).unwrap(), pid);
    }
}

/// The finding: `ferry::kill` left the actor's constructor arguments pinned until the last
/// handle was dropped. After a kill nothing of the actor keeps objects alive.
#[test]
fn kill_lets_go_of_the_constructor_arguments() {
    ferry_testkit::own_process!();
    cluster();
    let start = ferry::put(10i64).unwrap();
    let id = start.id();
    let c = Counter::remote(&start).unwrap();
    assert_eq!(ferry::get_timeout(&c.get(), T).unwrap(), 10);
    drop(start);
    let held = || ferry::memory_summary().unwrap().objects.iter().any(|o| o.object == id);
    assert!(held(), "the live actor's constructor argument is kept (for restarts)");
    ferry::kill(&c).unwrap();
    eventually("the killed actor's constructor argument freed", T, || !held());
    assert!(matches!(ferry::get_timeout(&c.get(), T), Err(Error::ActorDied { .. })));
    drop(c);
}
