//! Streaming returns, as Ray's generators (test_streaming_generator*, test_generator_retry):
//! a task that yields values gives its caller a `RefStream` whose refs arrive one by one as
//! the values are made, in order, with back-pressure, errors in place, retries that neither
//! lose nor repeat a value, actor methods that stream, and a stream dropped early freeing
//! what it held and stopping its producer.

mod common;

use common::*;
use ferry::prelude::*;
use ferry::RefStream;
use std::path::PathBuf;
use std::time::Duration;

const MB: usize = 1 << 20;

#[ferry::remote(streaming)]
fn count(n: u32) -> impl Iterator<Item = u32> {
    0..n
}

/// Yields 0, then waits for `gate` to exist before yielding 1 and 2.
#[ferry::remote(streaming)]
fn gated(gate: String) -> impl Iterator<Item = u32> {
    (0..3u32).inspect(move |i| {
        if *i == 1 {
            while !std::path::Path::new(&gate).exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

/// Notes in `log` each value it made (one line per value), then yields it.
#[ferry::remote(streaming)]
fn noted(n: u32, log: String) -> impl Iterator<Item = u32> {
    (0..n).inspect(move |i| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        writeln!(f, "{i}").unwrap();
    })
}

#[ferry::remote(streaming)]
fn fails_after(n: u32) -> impl Iterator<Item = u32> {
    (0..).map(move |i| if i == n { panic!("the source broke at item {i}") } else { i })
}

#[ferry::remote(streaming)]
fn chunks(n: u8) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(|i| vec![i; 2 * MB])
}

/// Endless, on both CPUs of the cluster.
#[ferry::remote(streaming, num_cpus = 2)]
fn endless() -> impl Iterator<Item = u64> {
    0u64..
}

/// Yields `n` values slowly, writing its pid to `pid_file` first.
#[ferry::remote(streaming, max_retries = 1)]
fn slow(n: u32, pid_file: String) -> impl Iterator<Item = u32> {
    std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
    (0..n).inspect(|_| std::thread::sleep(Duration::from_millis(100)))
}

#[ferry::remote]
fn double(x: u32) -> u32 {
    2 * x
}

#[ferry::remote(num_cpus = 2)]
fn whole_node() -> u32 {
    7
}

#[ferry::actor]
struct Lines {
    prefix: String,
    made: u32,
}

#[ferry::actor]
impl Lines {
    fn new(prefix: String) -> Self {
        Lines { prefix, made: 0 }
    }
    #[ferry::method(streaming)]
    fn lines(&mut self, n: u32) -> impl Iterator<Item = String> + '_ {
        (0..n).map(move |i| {
            self.made += 1;
            format!("{} {i}", self.prefix)
        })
    }
    fn made(&self) -> u32 {
        self.made
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-streaming-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The stream's next ref, or its end; a stream that does neither within `T` fails the test.
fn next<V>(s: &mut RefStream<V>) -> Option<ObjectRef<V>> {
    s.next_timeout(T).unwrap_or_else(|e| panic!("the stream neither yielded nor ended: {e}"))
}

/// The rest of the stream's refs, each waited for at most `T`.
fn refs<V>(mut s: RefStream<V>) -> Vec<ObjectRef<V>> {
    std::iter::from_fn(|| next(&mut s)).collect()
}

fn values<V: serde::de::DeserializeOwned + 'static>(s: RefStream<V>) -> Vec<V> {
    refs(s).iter().map(|r| ferry::get_timeout(r, T).unwrap()).collect()
}

#[test]
fn a_stream_yields_each_value_as_a_ref_in_order() {
    ferry_testkit::own_process!();
    cluster();
    assert_eq!(values(count::remote(5)), vec![0, 1, 2, 3, 4]);
    // An empty stream ends at once.
    assert_eq!(values(count::remote(0)), Vec::<u32>::new());
    // Each ref is an object like any other: it can be passed to tasks.
    let refs: Vec<ObjectRef<u32>> = refs(count::remote(4));
    assert_eq!(refs.iter().map(|r| r.id().index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let doubled: Vec<ObjectRef<u32>> = refs.iter().map(double::remote).collect();
    assert_eq!(ferry::get_all(&doubled).unwrap(), vec![0, 2, 4, 6]);
}

#[test]
fn a_value_is_yielded_as_soon_as_it_exists() {
    ferry_testkit::own_process!();
    cluster();
    let gate = temp("gate");
    let _ = std::fs::remove_file(&gate);
    let mut s = gated::remote(gate.to_string_lossy().to_string());
    // The first value arrives while the producer waits for the gate.
    let first = s.next_timeout(T).unwrap().expect("a first value");
    assert_eq!(ferry::get_timeout(&first, T).unwrap(), 0);
    assert!(matches!(s.next_timeout(Duration::from_millis(300)), Err(ferry::Error::Timeout { .. })));
    std::fs::write(&gate, b"open").unwrap();
    assert_eq!(values(s), vec![1, 2]);
}

#[test]
fn the_producer_waits_when_the_consumer_falls_behind() {
    ferry_testkit::own_process!();
    cluster();
    let log = temp("made");
    let _ = std::fs::remove_file(&log);
    let made = || std::fs::read_to_string(&log).map(|s| s.lines().count()).unwrap_or(0);
    let mut s = noted::options().backpressure(2).remote(20, log.to_string_lossy().to_string());
    eventually("the producer starts", T, || made() >= 2);
    // Nothing taken: it makes its window (2), and the value it then waits to send.
    std::thread::sleep(Duration::from_millis(500));
    assert!(made() <= 3, "it ran ahead of the window: {} values made", made());
    let first = s.next_timeout(T).unwrap().unwrap();
    assert_eq!(ferry::get_timeout(&first, T).unwrap(), 0);
    let rest: Vec<u32> = values(s);
    assert_eq!(rest, (1..20).collect::<Vec<_>>());
    assert_eq!(made(), 20);
}

#[test]
fn an_error_mid_stream_ends_it_after_the_values_made() {
    ferry_testkit::own_process!();
    cluster();
    let mut s = fails_after::remote(3);
    for i in 0..3 {
        assert_eq!(ferry::get_timeout(&next(&mut s).unwrap(), T).unwrap(), i);
    }
    let last = next(&mut s).expect("a ref carrying the error");
    match ferry::get_timeout(&last, T) {
        Err(ferry::Error::TaskPanicked { message, .. }) => {
            assert!(message.contains("the source broke at item 3"), "{message}")
        }
        other => panic!("expected the producer's panic, got {other:?}"),
    }
    assert!(next(&mut s).is_none(), "the stream ends after its error");
}

#[test]
fn large_values_are_stored_and_a_dropped_stream_frees_what_it_held() {
    ferry_testkit::own_process!();
    cluster();
    let mut s = chunks::remote(4);
    let first = s.next_timeout(T).unwrap().unwrap();
    let bytes = ferry::get_bytes(&first).unwrap();
    assert_eq!(bytes.len(), 2 * MB);
    assert!(bytes.iter().all(|b| *b == 0));
    drop(bytes);
    // Wait until the producer is done, so that its other values exist, then drop the stream.
    eventually("all four values are made", T, || {
        ferry::memory_summary().unwrap().objects.iter().filter(|o| o.object.task == first.id().task).count() == 4
    });
    drop(s);
    eventually("the values not taken are freed", T, || {
        let m = ferry::memory_summary().unwrap();
        m.objects.iter().filter(|o| o.object.task == first.id().task).count() == 1
    });
    drop(first);
    eventually("all freed", T, || ferry::memory_summary().unwrap().objects.is_empty());
}

#[test]
fn dropping_a_stream_early_stops_its_producer() {
    ferry_testkit::own_process!();
    cluster();
    let mut s = endless::options().backpressure(4).remote();
    for i in 0..3 {
        assert_eq!(ferry::get_timeout(&s.next_timeout(T).unwrap().unwrap(), T).unwrap(), i);
    }
    drop(s);
    // The producer held both CPUs: a task needing both runs once it stopped.
    assert_eq!(ferry::get_timeout(&whole_node::remote(), T).unwrap(), 7);
}

#[test]
fn a_stream_is_also_an_async_stream() {
    ferry_testkit::own_process!();
    cluster();
    let mut s = count::remote(3);
    // Awaited on a thread of its own, so that the test waits for it at most `T`.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got = ferry::block_on(async {
            let mut v = Vec::new();
            while let Some(r) = s.next_async().await {
                v.push(r.await.unwrap());
            }
            v
        });
        let _ = tx.send(got);
    });
    let got = rx.recv_timeout(T).expect("the async stream ended in time");
    assert_eq!(got, vec![0, 1, 2]);
}

#[test]
fn an_actor_method_can_stream() {
    ferry_testkit::own_process!();
    cluster();
    let a = Lines::remote("line").unwrap();
    assert_eq!(values(a.lines(3)), vec!["line 0", "line 1", "line 2"]);
    // Calls after it see the state it changed, in order.
    assert_eq!(ferry::get_timeout(&a.made(), T).unwrap(), 3);
    assert_eq!(values(a.lines(2)).len(), 2);
    assert_eq!(ferry::get_timeout(&a.made(), T).unwrap(), 5);
}

#[test]
fn a_producer_whose_worker_dies_runs_again_without_losing_or_repeating_a_value() {
    ferry_testkit::own_process!();
    cluster();
    let pid_file = temp("pid");
    let _ = std::fs::remove_file(&pid_file);
    let mut s = slow::remote(8, pid_file.to_string_lossy().to_string());
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(ferry::get_timeout(&s.next_timeout(T).unwrap().unwrap(), T).unwrap());
    }
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    sigkill(pid);
    got.extend(values(s));
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    let again: u32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_ne!(again, pid, "it ran again on another worker");
    assert!(ferry::recovery_stats().unwrap().task_retries >= 1);
}

#[ferry::remote(streaming)]
fn stored_chunks(n: u8) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(|i| vec![i + 1; 2 * MB])
}

#[test]
fn a_streamed_value_lost_with_its_node_is_made_again_by_running_the_producer_again() {
    use ferry::testing::{Cluster, NodeConfig};
    ferry_testkit::own_process!();
    let mut cluster = Cluster::new(NodeConfig::cpus(1)).unwrap();
    let b = cluster.add_node(NodeConfig::cpus(1).resource("source", 1.0)).unwrap();
    cluster.connect().unwrap();
    let refs: Vec<ObjectRef<Vec<u8>>> = refs(stored_chunks::options().resource("source", 1.0).remote(3));
    assert_eq!(refs.len(), 3);
    // (Not fetched here: their only copies stay on node b.)
    let opts = ferry::WaitOptions { num_ready: 3, timeout: Some(T), fetch_local: false };
    assert_eq!(ferry::wait_with(&refs, opts).unwrap().0.len(), 3);
    // Their only copies are in the store of node b, which goes.
    assert!(cluster.remove_node(b));
    eventually("node b is declared dead", T, || ferry::nodes().unwrap().iter().any(|n| n.node == b && !n.alive));
    cluster.add_node(NodeConfig::cpus(1).resource("source", 1.0)).unwrap();
    let v = ferry::get_timeout(&refs[1], T).unwrap();
    assert_eq!((v.len(), v[0]), (2 * MB, 2));
    assert!(ferry::recovery_stats().unwrap().reconstructions >= 1);
    assert_eq!(ferry::get_timeout(&refs[2], T).unwrap()[0], 3);
    ferry::shutdown();
}
