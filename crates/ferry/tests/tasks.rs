//! Tasks, refs, objects and errors on a real embedded cluster.

mod common;

use common::{cluster, eventually, T};
use ferry::prelude::*;
use ferry::Error;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[ferry::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[ferry::remote]
fn concat(a: String, b: Vec<String>) -> String {
    let mut s = a;
    for x in b {
        s.push_str(&x);
    }
    s
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
pub struct Point {
    x: f64,
    y: f64,
    tag: Option<String>,
}

#[ferry::remote]
fn mirror(p: Point) -> Point {
    Point { x: p.y, y: p.x, tag: p.tag.map(|t| t.to_uppercase()) }
}

#[ferry::remote(num_cpus = 1)]
fn tree(depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let (l, r) = (tree::remote(depth - 1), tree::remote(depth - 1));
    ferry::get(&l).unwrap() + ferry::get(&r).unwrap()
}

#[ferry::remote]
fn one() -> u64 {
    1
}

#[ferry::remote]
fn fanout(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(|_| one::remote()).collect();
    ferry::get_all(&refs).unwrap().into_iter().sum()
}

#[ferry::remote]
fn boom(msg: String) -> i64 {
    panic!("boom: {msg}")
}

#[ferry::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Sleeps; returns when it started and ended (ms since the epoch).
#[ferry::remote]
fn span_ms(ms: u64) -> (u128, u128) {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let start = now();
    std::thread::sleep(Duration::from_millis(ms));
    (start, now())
}

#[ferry::remote]
fn sum_bytes(v: Vec<u8>) -> u64 {
    v.iter().map(|b| *b as u64).sum()
}

/// Reads its argument in place: the pointer must lie in the store's mapping.
#[ferry::remote]
fn view_info(b: ferry::Bytes) -> (usize, bool, u64) {
    (b.len(), b.is_shared_memory(), b.iter().step_by(4096).map(|x| *x as u64).sum())
}

/// Builds its result in place in the store.
#[ferry::remote]
fn make_in_store(n: usize, fill: u8) -> ferry::Bytes {
    let mut b = ferry::BytesMut::zeroed(n).unwrap();
    b.fill(fill);
    b.freeze()
}

#[ferry::remote]
fn make_bytes(n: usize, fill: u8) -> Vec<u8> {
    vec![fill; n]
}

#[ferry::remote]
async fn async_double(x: i64) -> i64 {
    let r = one::remote();
    x * 2 + r.await.unwrap() as i64 - 1
}

#[ferry::remote(resources(widget = 1))]
fn needs_widget() -> String {
    "ran".into()
}

#[ferry::remote(resources(unobtainium = 1))]
fn never_schedulable() -> u8 {
    0
}

#[ferry::remote]
fn pid() -> u32 {
    std::process::id()
}

#[test]
fn add_and_refs_as_arguments() {
    ferry_testkit::own_process!();
    cluster();
    let a = add::remote(1, 2);
    let b = add::remote(&a, 10);
    let c = add::remote(&a, b.clone());
    assert_eq!(ferry::get_timeout(&b, T).unwrap(), 13);
    assert_eq!(ferry::get_timeout(&c, T).unwrap(), 16);
    assert_eq!(ferry::get_timeout(&a, T).unwrap(), 3);
}

#[test]
fn strings_structs_and_vectors_round_trip() {
    ferry_testkit::own_process!();
    cluster();
    let r = concat::remote("a".to_string(), vec!["b".into(), "c".into()]);
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), "abc");
    let p = Point { x: 1.5, y: -2.0, tag: Some("hi".into()) };
    let m = mirror::remote(p.clone());
    assert_eq!(ferry::get_timeout(&m, T).unwrap(), Point { x: -2.0, y: 1.5, tag: Some("HI".into()) });
    // A put value as an argument.
    let pr = ferry::put(p).unwrap();
    assert_eq!(ferry::get_timeout(&mirror::remote(&pr), T).unwrap().tag.as_deref(), Some("HI"));
}

#[test]
fn nested_depth_ten_without_deadlock() {
    ferry_testkit::own_process!();
    cluster();
    let r = tree::remote(10);
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 1024);
}

#[test]
fn fanout_of_a_thousand_from_inside_a_task() {
    ferry_testkit::own_process!();
    cluster();
    let r = fanout::remote(1000);
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 1000);
    // Two at once: both blocked parents must give their CPUs back.
    let (a, b) = (fanout::remote(1000), fanout::remote(1000));
    assert_eq!(ferry::get_timeout(&a, T).unwrap() + ferry::get_timeout(&b, T).unwrap(), 2000);
}

#[test]
fn many_tasks_complete_with_right_values() {
    ferry_testkit::own_process!();
    cluster();
    let refs: Vec<_> = (0..5000).map(|i| add::remote(i, 1)).collect();
    let vals = ferry::get_all(&refs).unwrap();
    assert!(vals.iter().enumerate().all(|(i, v)| *v == i as i64 + 1));
}

#[test]
fn large_put_is_zero_copy_view_of_shared_memory() {
    ferry_testkit::own_process!();
    cluster();
    let n = 100 << 20;
    let big = ferry::put(vec![7u8; n]).unwrap();
    let view = ferry::get_bytes(&big).unwrap();
    assert_eq!(view.len(), n);
    assert!(view.iter().step_by(4096).all(|b| *b == 7));
    // The view points into a mapping of the object's file in the store, not into our heap.
    let addr = view.as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let store = ferry::__private::session_info().unwrap().store_dir;
    let mapped = maps.lines().any(|l| {
        let mut it = l.split_whitespace();
        let range = it.next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
        lo <= addr && addr < hi && l.contains(store.to_str().unwrap())
    });
    assert!(mapped, "get_bytes view at {addr:#x} is not a mapping of the store");
    // Workers read the same object, and a typed get copies it out.
    assert_eq!(ferry::get_timeout(&sum_bytes::remote(&big), T).unwrap(), 7 * n as u64);
    assert_eq!(ferry::get(&big).unwrap().len(), n);
    // A task taking `Bytes` reads the stored object without copying it.
    let (len, shared, sum) = ferry::get_timeout(&view_info::remote(&big), T).unwrap();
    assert_eq!((len, shared, sum), (n, true, 7 * (n as u64 / 4096)));
    // `get` of a `Bytes` ref is a view as well; small values are private copies.
    let as_bytes: ferry::ObjectRef<ferry::Bytes> = ferry::put(ferry::Bytes::from(vec![5u8; 2 << 20])).unwrap();
    assert!(ferry::get(&as_bytes).unwrap().is_shared_memory());
    let (len, shared, _) = ferry::get_timeout(&view_info::remote(vec![1u8; 100]), T).unwrap();
    assert_eq!((len, shared), (100, false));
}

#[test]
fn large_task_returns_and_large_arguments_go_through_the_store() {
    ferry_testkit::own_process!();
    cluster();
    let r = make_bytes::remote(3 << 20, 2);
    assert_eq!(ferry::get_bytes(&r).unwrap().len(), 3 << 20);
    assert_eq!(ferry::get_timeout(&sum_bytes::remote(&r), T).unwrap(), 6 << 20);
    // A large value passed directly is stored first, then passed by reference.
    assert_eq!(ferry::get_timeout(&sum_bytes::remote(vec![1u8; 1 << 20]), T).unwrap(), 1 << 20);
    let stats = ferry::node_stats().unwrap();
    assert!(stats.store_used_bytes >= 3 << 20, "{stats:?}");
    // Small values stay inline: an empty store entry count for them.
    let small = make_bytes::remote(10, 1);
    assert_eq!(ferry::get_bytes(&small).unwrap().as_ref(), &[1u8; 10]);
}

#[test]
fn wait_returns_ready_and_pending() {
    ferry_testkit::own_process!();
    cluster();
    let fast = sleep_ms::remote(0);
    ferry::get_timeout(&fast, T).unwrap();
    let slow = sleep_ms::remote(3000);
    let (ready, pending) = ferry::wait(&[fast.clone(), slow.clone()], 1, Some(Duration::from_millis(10))).unwrap();
    assert_eq!(ready, vec![fast.clone()]);
    assert_eq!(pending, vec![slow.clone()]);
    // Asking for both with a short timeout returns what is ready.
    let (ready, pending) = ferry::wait(&[fast.clone(), slow.clone()], 2, Some(Duration::from_millis(50))).unwrap();
    assert_eq!((ready.len(), pending.len()), (1, 1));
    let refs: Vec<_> = (0..100).map(|i| sleep_ms::remote(i % 3)).collect();
    let (ready, pending) = ferry::wait(&refs, 100, Some(T)).unwrap();
    assert_eq!((ready.len(), pending.len()), (100, 0));
}

#[test]
fn panic_reaches_get_with_name_and_message_and_flows_downstream() {
    ferry_testkit::own_process!();
    cluster();
    let r = boom::remote("kaput".to_string());
    match ferry::get_timeout(&r, T) {
        Err(Error::TaskPanicked { task, message }) => {
            assert_eq!(task, "boom");
            assert!(message.contains("boom: kaput"), "{message}");
        }
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    // Everything downstream gets the same error, without running.
    let d1 = add::remote(&r, 1);
    let d2 = add::remote(&d1, 1);
    assert!(matches!(ferry::get_timeout(&d2, T), Err(Error::TaskPanicked { ref task, .. }) if task == "boom"));
    // A named task reports its name.
    let n = boom::options().name("custom-name").remote("x".to_string());
    assert!(matches!(ferry::get_timeout(&n, T), Err(Error::TaskPanicked { ref task, .. }) if task == "custom-name"));
    // The worker survived the panic.
    assert_eq!(ferry::get_timeout(&add::remote(2, 2), T).unwrap(), 4);
}

#[test]
fn timeout_is_an_error_and_the_task_goes_on() {
    ferry_testkit::own_process!();
    cluster();
    let r = sleep_ms::remote(300);
    assert!(matches!(ferry::get_timeout(&r, Duration::from_millis(20)), Err(Error::Timeout { .. })));
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 300);
}

#[test]
fn cancel_queued_and_running_tasks() {
    ferry_testkit::own_process!();
    cluster();
    // Occupy both CPUs, then queue more.
    let busy: Vec<_> = (0..2).map(|_| sleep_ms::remote(500)).collect();
    let queued = sleep_ms::remote(400);
    let dependent = add::remote(1, 2);
    let after_queued = sleep_ms::remote(&queued);
    ferry::cancel(&queued).unwrap();
    assert!(matches!(ferry::get_timeout(&queued, T), Err(Error::Cancelled { .. })));
    assert!(matches!(ferry::get_timeout(&after_queued, T), Err(Error::Cancelled { .. })));
    ferry::cancel(&busy[0]).unwrap();
    assert!(matches!(ferry::get_timeout(&busy[0], T), Err(Error::Cancelled { .. })));
    assert_eq!(ferry::get_timeout(&busy[1], T).unwrap(), 500);
    assert_eq!(ferry::get_timeout(&dependent, T).unwrap(), 3);
    // Cancelling something finished changes nothing.
    ferry::cancel(&dependent).unwrap();
    assert_eq!(ferry::get_timeout(&dependent, T).unwrap(), 3);
}

#[test]
fn async_get_and_async_remote_functions() {
    ferry_testkit::own_process!();
    cluster();
    let r = add::remote(20, 1);
    assert_eq!(ferry::block_on(async { r.clone().await }).unwrap(), 21);
    assert_eq!(ferry::block_on(ferry::get_async(&r)).unwrap(), 21);
    let d = async_double::remote(&r);
    assert_eq!(ferry::block_on(async { (&d).await }).unwrap(), 42);
}

#[test]
fn custom_and_infeasible_resources() {
    ferry_testkit::own_process!();
    match ferry::init(ferry::Config::default().num_cpus(2).resource("widget", 1.0)) {
        Ok(()) => {}
        Err(e) => panic!("{e}"),
    }
    assert_eq!(ferry::get_timeout(&needs_widget::remote(), T).unwrap(), "ran");
    match ferry::get_timeout(&never_schedulable::remote(), T) {
        Err(e @ Error::Infeasible { .. }) => assert!(e.to_string().contains("unobtainium"), "{e}"),
        other => panic!("expected Infeasible, got {other:?}"),
    }
    let too_big = add::options().num_cpus(64.0).remote(1, 1);
    assert!(matches!(ferry::get_timeout(&too_big, T), Err(Error::Infeasible { .. })));
    // Zero-CPU tasks run too.
    assert_eq!(ferry::get_timeout(&add::options().num_cpus(0.0).remote(1, 1), T).unwrap(), 2);
}

#[test]
fn workers_are_prestarted_and_reused_across_functions() {
    ferry_testkit::own_process!();
    cluster();
    common::eventually("two prestarted workers", T, || ferry::node_stats().unwrap().workers == 2);
    let mut pids = std::collections::HashSet::new();
    for _ in 0..20 {
        pids.insert(ferry::get_timeout(&pid::remote(), T).unwrap());
        ferry::get_timeout(&add::remote(1, 1), T).unwrap();
    }
    assert!(pids.len() <= 2, "{pids:?}");
    assert_eq!(ferry::node_stats().unwrap().workers, 2);
}

#[test]
fn short_tasks_are_not_stuck_behind_a_long_one() {
    ferry_testkit::own_process!();
    cluster();
    // Warm both leases, then put one long task and many short ones in flight.
    ferry::get_all(&(0..4).map(|_| sleep_ms::remote(1)).collect::<Vec<_>>()).unwrap();
    let long = sleep_ms::remote(3000);
    let short: Vec<_> = (0..30).map(|_| sleep_ms::remote(1)).collect();
    ferry::get_all(&short).unwrap();
    // Some of them were pipelined behind the long task; the idle worker steals them back, so
    // they are all done while the long one still runs.
    let (ready, _) = ferry::wait(std::slice::from_ref(&long), 1, Some(Duration::ZERO)).unwrap();
    assert!(ready.is_empty(), "the short tasks waited for the long one");
    assert_eq!(ferry::get_timeout(&long, T).unwrap(), 3000);
}

#[test]
fn idle_leases_go_back_to_the_daemon() {
    ferry_testkit::own_process!();
    cluster();
    // One task at a time: the node is never short, so the lease is kept for reuse...
    ferry::get_timeout(&add::remote(1, 1), T).unwrap();
    ferry::get_timeout(&add::remote(2, 2), T).unwrap();
    assert_eq!(ferry::node_stats().unwrap().leased_workers, 1);
    // ...and returned once idle past the lease timeout (1 s by default).
    common::eventually("all leases returned", T, || ferry::node_stats().unwrap().leased_workers == 0);
    let s = ferry::node_stats().unwrap();
    assert_eq!(s.available, s.total, "{s:?}");
}

#[test]
fn regression_a_burst_of_long_tasks_spreads_over_workers() {
    ferry_testkit::own_process!();
    cluster();
    // From a fresh owner holding no lease: the two tasks must not run one after another
    // on the first worker leased.
    let refs: Vec<_> = (0..2).map(|_| span_ms::remote(600)).collect();
    let spans = ferry::get_all(&refs).unwrap();
    let latest_start = spans.iter().map(|s| s.0).max().unwrap();
    let earliest_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(latest_start < earliest_end, "the two tasks did not overlap: {spans:?}");
}

#[test]
fn bytes_built_in_the_store_become_objects_without_a_copy() {
    ferry_testkit::own_process!();
    cluster();
    let store = ferry::__private::session_info().unwrap().store_dir;
    let n = 5 << 20;
    let r = make_in_store::remote(n, 3);
    let v = ferry::get_bytes(&r).unwrap();
    assert_eq!(v.len(), n);
    assert!(v.iter().step_by(4096).all(|b| *b == 3));
    // In the driver: fill, freeze, put; a task reads it in place.
    let mut b = ferry::BytesMut::zeroed(2 << 20).unwrap();
    b[0] = 9;
    b[(2 << 20) - 1] = 8;
    let frozen = b.freeze();
    assert!(frozen.is_shared_memory());
    let p = ferry::put(frozen).unwrap();
    let pv = ferry::get_bytes(&p).unwrap();
    assert_eq!((pv[0], pv[(2 << 20) - 1], pv.len()), (9, 8, 2 << 20));
    let (len, shared, _) = ferry::get_timeout(&view_info::remote(&p), T).unwrap();
    assert_eq!((len, shared), (2 << 20, true));
    // Small ones are inline, and an unfrozen buffer that is dropped leaves nothing.
    let mut small = ferry::BytesMut::zeroed(10).unwrap();
    small.fill(1);
    assert_eq!(ferry::get_bytes(&ferry::put(small.freeze()).unwrap()).unwrap().as_ref(), &[1u8; 10]);
    drop(ferry::BytesMut::zeroed(1 << 20).unwrap());
    drop((r, v, p, pv));
    common::eventually("store empty, no staged file or extent left", T, || {
        let s = ferry::node_stats().unwrap();
        let files = std::fs::read_dir(&store).unwrap().filter(|e| e.as_ref().unwrap().file_name() != "arena").count();
        s.store_used_bytes == 0 && files == 0 && s.arena_free_bytes == s.arena_bytes && s.arena_bytes > 0
    });
}

/// Panics until it has run `times` times (counted in `file`, as runs happen in new workers).
#[ferry::remote]
fn flaky(file: String, times: u32) -> u32 {
    let n: u32 = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0) + 1;
    std::fs::write(&file, n.to_string()).unwrap();
    if n < times {
        panic!("attempt {n} fails");
    }
    n
}

#[test]
fn retry_exceptions_retries_panics_and_says_how_many_attempts() {
    ferry_testkit::own_process!();
    cluster();
    let file = |tag: &str| {
        let f = std::env::temp_dir().join(format!("ferry-flaky-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&f);
        f.display().to_string()
    };
    // Opted in: the third run succeeds.
    let f = file("a");
    let before = ferry::recovery_stats().unwrap().task_retries;
    let r = flaky::options().retry_exceptions(true).max_retries(3).remote(f.clone(), 3);
    assert_eq!(ferry::get_timeout(&r, T).unwrap(), 3);
    assert_eq!(ferry::recovery_stats().unwrap().task_retries - before, 2, "two retries, counted");
    // Not opted in: the first panic is the answer.
    let f2 = file("b");
    let r = flaky::options().max_retries(3).remote(f2.clone(), 3);
    match ferry::get_timeout(&r, T) {
        Err(Error::TaskPanicked { message, .. }) => assert!(message.contains("attempt 1 fails"), "{message}"),
        other => panic!("expected a panic, got {other:?}"),
    }
    // Retries run out: the error names the last attempt and how many there were.
    let f3 = file("c");
    let r = flaky::options().retry_exceptions(true).max_retries(1).remote(f3.clone(), 5);
    match ferry::get_timeout(&r, T) {
        Err(Error::TaskPanicked { message, .. }) => {
            assert!(message.contains("attempt 2 fails") && message.contains("the last of 2 attempts"), "{message}")
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    for f in [f, f2, f3] {
        let _ = std::fs::remove_file(f);
    }
}

#[ferry::remote]
fn put_inside(n: u8) -> Vec<ObjectRef<Vec<u8>>> {
    vec![ferry::put(vec![n; 1000]).unwrap(), ferry::put(vec![n; 200 << 10]).unwrap()]
}

#[ferry::remote]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Submits a task and returns its ref without waiting: the ref is owned by this worker.
#[ferry::remote]
fn spawn_inner(ms: u64) -> Vec<ObjectRef<u64>> {
    vec![sleepy::remote(ms)]
}

/// The finding: objects `put` by a task's worker, or returned by a pending inner task it
/// submitted, became `OwnerDied` when the pool stopped that worker as idle, though the driver
/// still held them. A worker that owns live objects or pending tasks is not idle (as in Ray).
#[test]
fn an_idle_worker_that_owns_objects_in_use_is_kept() {
    ferry_testkit::own_process!();
    let mut cfg = ferry::Config::default().num_cpus(2);
    // Every worker is beyond the warm pool, and idle ones go after 300 ms.
    cfg.prestart_workers = Some(0);
    cfg.idle_worker_timeout = Duration::from_millis(300);
    ferry::init(cfg).unwrap();
    let outer = ferry::get_timeout(&put_inside::remote(7), T).unwrap();
    let inner = ferry::get_timeout(&spawn_inner::remote(1500), T).unwrap();
    // Well past the idle timeout: the workers that own these are idle, and kept.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(ferry::get_bytes(&outer[0]).unwrap()[..], [7u8; 1000][..]);
    assert_eq!(ferry::get_bytes(&outer[1]).unwrap().len(), 200 << 10);
    assert_eq!(ferry::get_timeout(&inner[0], T).unwrap(), 1500);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(ferry::get_bytes(&outer[0]).unwrap()[3], 7, "still there");
    // Once nothing they own is in use, idle workers go as before.
    drop(outer);
    drop(inner);
    eventually("idle workers stopped once they own nothing in use", T, || ferry::node_stats().unwrap().workers == 0);
}

#[ferry::remote(max_retries = 0)]
fn fails_now() -> u64 {
    panic!("failing at once")
}

/// The finding: `get_all` waited for every ref before it reported an error. Like Ray's `get`,
/// it returns the first error as soon as it is known; and `wait` on a list with a ref twice is
/// an error, as in Ray, instead of counting it twice.
#[test]
fn get_all_fails_fast_and_wait_refuses_duplicates() {
    ferry_testkit::own_process!();
    cluster();
    // Far slower than any bound below, so a loaded machine (the whole suite on 2 cores) is
    // not mistaken for waiting on it; cancelled at the end.
    let slow = sleepy::remote(30_000);
    let t = Instant::now();
    match ferry::get_all(&[fails_now::remote(), slow.clone()]) {
        Err(Error::TaskPanicked { message, .. }) => assert!(message.contains("failing at once"), "{message}"),
        other => panic!("expected the panic, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(12), "get_all waited {:?} for the slow ref", t.elapsed());
    // An error after a ready ref, too, and with the failing ref last.
    let ok = sleepy::remote(1);
    ferry::wait(std::slice::from_ref(&ok), 1, Some(T)).unwrap();
    let t = Instant::now();
    assert!(ferry::get_all(&[ok.clone(), slow.clone(), fails_now::remote()]).is_err());
    assert!(t.elapsed() < Duration::from_secs(12));
    let a = sleepy::remote(1);
    match ferry::wait(&[a.clone(), a.clone()], 2, Some(T)) {
        Err(e @ Error::InvalidArgument { .. }) => assert!(e.to_string().contains("unique"), "{e}"),
        other => panic!("wait with a duplicate: {:?}", other.map(|(r, p)| (r.len(), p.len()))),
    }
    ferry::cancel(&slow).unwrap();
}

/// A value postcard cannot encode: a sequence whose length is not known up front.
#[derive(Debug)]
pub struct Unsized(Vec<u8>);

impl Serialize for Unsized {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().filter(|_| true))
    }
}

impl<'de> Deserialize<'de> for Unsized {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(Unsized)
    }
}

/// A value whose decoding refuses some inputs, with a message of its own.
#[derive(Serialize, Deserialize, Debug)]
pub struct Picky {
    #[serde(deserialize_with = "no_sevens")]
    v: u32,
}

fn no_sevens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v == 7 {
        return Err(serde::de::Error::custom("sevens are not allowed"));
    }
    Ok(v)
}

#[ferry::remote]
fn returns_unsized(n: u8) -> Unsized {
    Unsized(vec![n; 4])
}

#[ferry::remote]
fn takes_picky(p: Picky) -> u32 {
    p.v
}

/// The finding: serialisation errors lost the serde message or did not name the task, and
/// the hint "check that the types match" was printed twice, and where it was wrong. Each
/// message now names the value (task argument, return, object), keeps serde's words, and
/// gives one hint that fits.
#[test]
fn serialization_errors_keep_serdes_message_and_name_the_value() {
    ferry_testkit::own_process!();
    cluster();
    let e = ferry::get_timeout(&returns_unsized::remote(3), T).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, Error::Serialization { .. }), "{e:?}");
    assert!(s.contains("task returns_unsized") && s.contains("The length of a sequence must be known"), "{s}");
    assert!(s.contains("cannot encode") && !s.contains("types match") && !s.contains("another type"), "{s}");
    let e = ferry::get_timeout(&takes_picky::remote(Picky { v: 7 }), T).unwrap_err().to_string();
    assert!(e.contains("argument 0 of task takes_picky") && e.contains("sevens are not allowed"), "{e}");
    assert!(e.contains("its Deserialize refused") && !e.contains("another type"), "the hint that fits: {e}");
    assert_eq!(ferry::get_timeout(&takes_picky::remote(Picky { v: 8 }), T).unwrap(), 8);
    let r = ferry::put(Picky { v: 7 }).unwrap();
    let e = ferry::get(&r).unwrap_err().to_string();
    assert!(e.contains(&format!("{:?}", r.id())) && e.contains("sevens are not allowed"), "{e}");
    let e = ferry::put(Unsized(vec![1, 2])).unwrap_err().to_string();
    assert!(e.contains("cannot encode") && e.contains("Unsized"), "{e}");
}
