//! `ferry-bench [GROUP...]`: ferry's figures, one `name value unit` line each, with the names
//! `../shared/anchors/ray_bench.py` prints so the two can be set side by side. Lines starting
//! with `#` are information.
//!
//! Groups: `memory` (startup and idle memory), `tasks`, `objects`, `actors`; with no argument
//! all of them run, in about two minutes. On their own: `cluster` and `recovery` (namespace
//! hosts), `observability` (what task events cost, then `history`), `history` (the state
//! tools over a large history) and `priority` (real-time tasks beside best-effort ones). Sizes and iteration counts follow ray_bench.py.

mod cluster;
mod fair;
mod groups;
mod history;
mod observability;
mod priority;
mod scale;
mod store;

use ferry::prelude::*;
use std::time::Instant;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

#[ferry::remote]
fn noop() {}

#[ferry::remote]
fn one() -> u64 {
    1
}

#[ferry::remote]
fn fanout(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(|_| one::remote()).collect();
    ferry::get_all(&refs).unwrap().into_iter().sum()
}

/// Builds its 100 MiB in the store (`BytesMut`), as ferry code returning large bytes does: the
/// buffer becomes the object with no copy.
#[ferry::remote]
fn produce(n: usize) -> ferry::Bytes {
    let mut b = ferry::BytesMut::zeroed(n).unwrap();
    b.fill(7);
    b.freeze()
}

/// The same with a heap `Vec<u8>`, copied into the store on return.
#[ferry::remote]
fn produce_vec(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

/// Takes `Bytes`: a view of the stored object, like numpy's zero-copy read in Ray.
#[ferry::remote]
fn length(v: ferry::Bytes) -> usize {
    v.len()
}

/// Ray's `create_object_containing_ref`: 10,000 small objects put by the task, returned as a
/// list of refs (owned by the worker, borrowed by the caller).
#[ferry::remote]
fn containing_10k_refs() -> Vec<ObjectRef<u64>> {
    (0..10_000u64).map(|i| ferry::put(i).unwrap()).collect()
}

// ---- actors, as in Ray's ray_perf.py ----

#[ferry::actor]
#[derive(Default)]
pub struct Server;

#[ferry::actor]
impl Server {
    pub fn new() -> Self {
        Server
    }
    pub fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }
    pub fn small_value_arg(&self, _x: i64) -> Vec<u8> {
        b"ok".to_vec()
    }
    pub fn noop(&self) {}
}

#[ferry::actor]
#[derive(Default)]
pub struct AsyncServer;

#[ferry::actor]
impl AsyncServer {
    pub fn new() -> Self {
        AsyncServer
    }
    pub async fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }
    pub async fn small_value_with_arg(&self, _x: i64) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// Ray's `Client`: calls its servers from inside an actor.
#[ferry::actor]
pub struct Client {
    servers: Vec<ActorHandle<Server>>,
}

#[ferry::actor]
impl Client {
    pub fn new(servers: Vec<ActorHandle<Server>>) -> Self {
        Client { servers }
    }
    pub fn small_value_batch(&self, n: u64) {
        let refs: Vec<_> = self.servers.iter().flat_map(|s| (0..n).map(|_| s.small_value())).collect();
        ferry::get_all(&refs).unwrap();
    }
    pub fn small_value_batch_arg(&self, n: u64) {
        let x = ferry::put(0i64).unwrap();
        let refs: Vec<_> = self.servers.iter().flat_map(|s| (0..n).map(|_| s.small_value_arg(&x))).collect();
        ferry::get_all(&refs).unwrap();
    }
}

#[ferry::actor]
pub struct AsyncClient {
    servers: Vec<ActorHandle<AsyncServer>>,
}

#[ferry::actor]
impl AsyncClient {
    pub fn new(servers: Vec<ActorHandle<AsyncServer>>) -> Self {
        AsyncClient { servers }
    }
    pub fn small_value_batch(&self, n: u64) {
        let refs: Vec<_> = self.servers.iter().flat_map(|s| (0..n).map(|_| s.small_value())).collect();
        ferry::get_all(&refs).unwrap();
    }
}

#[ferry::remote]
fn work(actors: Vec<ActorHandle<Server>>, n: u64) {
    let refs: Vec<_> = (0..n as usize).map(|i| actors[i % actors.len()].small_value()).collect();
    ferry::get_all(&refs).unwrap();
}

#[ferry::remote]
fn async_work(actors: Vec<ActorHandle<AsyncServer>>, n: u64) {
    let refs: Vec<_> = (0..n as usize).map(|i| actors[i % actors.len()].small_value()).collect();
    ferry::get_all(&refs).unwrap();
}

/// Ray's `timeit`: warm up for a second, then four runs, each as many calls of `f` as fit in
/// `RUN` (in steps of a tenth of the warm-up count); prints the mean rate.
fn timeit(name: &str, multiplier: f64, mut f: impl FnMut()) {
    const RUN: Duration = Duration::from_secs(1);
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        f();
        count += 1;
    }
    let step = count / 10 + 1;
    let mut rates = Vec::new();
    for _ in 0..4 {
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < RUN {
            for _ in 0..step {
                f();
            }
            count += step;
        }
        rates.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
    }
    emit(name, rates.iter().sum::<f64>() / rates.len() as f64, "calls/s");
}

fn group_actors() {
    let a = Server::remote().unwrap();
    for _ in 0..200 {
        ferry::get(&a.noop()).unwrap();
    }
    let mut samples = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        ferry::get(&a.noop()).unwrap();
        samples.push(ns(t));
    }
    emit_latency("actor_call_roundtrip_us", &samples);
    let warm: Vec<_> = (0..1000).map(|_| a.noop()).collect();
    ferry::get_all(&warm).unwrap();
    let t = Instant::now();
    let refs: Vec<_> = (0..10_000).map(|_| a.noop()).collect();
    ferry::get_all(&refs).unwrap();
    emit("actor_call_throughput_per_s", 10_000.0 / t.elapsed().as_secs_f64(), "calls/s");
    drop(refs);

    // Ray's microbenchmark, same shapes: n_cpu = cores / 2 servers, m = 4 callers.
    let n_cpu = (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) / 2).max(1);
    let m = 4;
    timeit("actor_calls_1_1_sync_per_s", 1.0, || {
        ferry::get(&a.small_value()).unwrap();
    });
    let a = Server::remote().unwrap();
    timeit("actor_calls_1_1_async_per_s", 1000.0, || {
        ferry::get_all(&(0..1000).map(|_| a.small_value()).collect::<Vec<_>>()).unwrap();
    });
    let c = Server::options().max_concurrency(16).remote().unwrap();
    timeit("actor_calls_1_1_concurrent_per_s", 1000.0, || {
        ferry::get_all(&(0..1000).map(|_| c.small_value()).collect::<Vec<_>>()).unwrap();
    });
    let n = 5000;
    let servers: Vec<_> = (0..n_cpu).map(|_| Server::remote().unwrap()).collect();
    let client = Client::remote(servers.clone()).unwrap();
    timeit("actor_calls_1_n_async_per_s", (n * servers.len() as u64) as f64, || {
        ferry::get(&client.small_value_batch(n)).unwrap();
    });
    timeit("actor_calls_n_n_async_per_s", (m * n) as f64, || {
        ferry::get_all(&(0..m).map(|_| work::remote(servers.clone(), n)).collect::<Vec<_>>()).unwrap();
    });
    let n = 1000;
    let clients: Vec<_> = (0..n_cpu).map(|_| Client::remote(vec![Server::remote().unwrap()]).unwrap()).collect();
    timeit("actor_calls_n_n_with_arg_async_per_s", (n * clients.len() as u64) as f64, || {
        ferry::get_all(&clients.iter().map(|c| c.small_value_batch_arg(n)).collect::<Vec<_>>()).unwrap();
    });
    let a = AsyncServer::remote().unwrap();
    timeit("async_actor_calls_1_1_sync_per_s", 1.0, || {
        ferry::get(&a.small_value()).unwrap();
    });
    timeit("async_actor_calls_1_1_async_per_s", 1000.0, || {
        ferry::get_all(&(0..1000).map(|_| a.small_value()).collect::<Vec<_>>()).unwrap();
    });
    timeit("async_actor_calls_1_1_with_args_async_per_s", 1000.0, || {
        ferry::get_all(&(0..1000).map(|i| a.small_value_with_arg(i)).collect::<Vec<_>>()).unwrap();
    });
    let n = 5000;
    let aservers: Vec<_> = (0..n_cpu).map(|_| AsyncServer::remote().unwrap()).collect();
    let aclient = AsyncClient::remote(aservers.clone()).unwrap();
    timeit("async_actor_calls_1_n_async_per_s", (n * aservers.len() as u64) as f64, || {
        ferry::get(&aclient.small_value_batch(n)).unwrap();
    });
    timeit("async_actor_calls_n_n_async_per_s", (m * n) as f64, || {
        ferry::get_all(&(0..m).map(|_| async_work::remote(aservers.clone(), n)).collect::<Vec<_>>()).unwrap();
    });
    drop((servers, client, clients, aservers, aclient, a, c));

    // Creating many actors: each is a process.
    let before = ferry::node_stats().unwrap().actors;
    let n = 1000;
    let t = Instant::now();
    let actors: Vec<_> = (0..n).map(|_| Server::remote().unwrap()).collect();
    let refs: Vec<_> = actors.iter().map(|a| a.small_value()).collect();
    ferry::get_all(&refs).unwrap();
    let dt = t.elapsed().as_secs_f64();
    emit("actor_create_1000_and_call_s", dt, "s");
    emit("actor_create_per_s", n as f64 / dt, "actors/s");
    let kids: Vec<Mem> = children_of(std::process::id()).into_iter().filter_map(mem_of).collect();
    emit("actor_create_1000_rss_sum_MiB", kids.iter().map(|m| m.rss).sum::<u64>() as f64 / MIB as f64, "MiB");
    emit("actor_create_1000_pss_sum_MiB", kids.iter().map(|m| m.pss).sum::<u64>() as f64 / MIB as f64, "MiB");
    emit("actor_create_1000_nprocs", kids.len() as f64, "procs");
    let t = Instant::now();
    drop(refs);
    drop(actors);
    while ferry::node_stats().unwrap().actors > before {
        std::thread::sleep(Duration::from_millis(5));
    }
    emit("actor_release_1000_s", t.elapsed().as_secs_f64(), "s");
}

// ---- output, formatted like bench_common.emit ----

fn emit(name: &str, v: f64, unit: &str) {
    let s = if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.6}")
    };
    println!("{name} {s} {unit}");
}

fn info(s: &str) {
    println!("# {s}");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// numpy's `percentile` (linear interpolation).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

fn emit_latency(prefix: &str, samples_ns: &[u64]) {
    let mut us: Vec<f64> = samples_ns.iter().map(|n| *n as f64 / 1e3).collect();
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    emit(&format!("{prefix}_median"), median(&mut us), "us");
    emit(&format!("{prefix}_p99"), percentile(&mut us, 99.0), "us");
    emit(&format!("{prefix}_mean"), mean, "us");
}

fn ns(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

/// Non-zero, fully written data (no zero-page shortcuts), like bench_common.make_array.
fn make_array(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        v.extend_from_slice(&b[..(n - v.len()).min(8)]);
    }
    v
}

// ---- process memory, like bench_common.process_tree_memory ----

struct Mem {
    rss: u64,
    pss: u64,
}

fn mem_of(pid: u32) -> Option<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Some(Mem { rss: field("Rss:"), pss: field("Pss:") })
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let ppid = st.lines().find(|l| l.starts_with("PPid:")).and_then(|l| l.split_whitespace().nth(1));
        if ppid == Some(&parent.to_string()) {
            out.push(pid);
        }
    }
    out
}

fn report_memory(prefix: &str) {
    let me = std::process::id();
    let mib = MIB as f64;
    let kids: Vec<(u32, Mem)> = children_of(me).into_iter().filter_map(|p| mem_of(p).map(|m| (p, m))).collect();
    let drv = mem_of(me).unwrap_or(Mem { rss: 0, pss: 0 });
    for (p, m) in kids.iter().take(8) {
        info(&format!("{prefix} pid={p} worker rss={:.1}MiB pss={:.1}MiB", m.rss as f64 / mib, m.pss as f64 / mib));
    }
    if kids.len() > 8 {
        info(&format!("{prefix} ... and {} more workers", kids.len() - 8));
    }
    info(&format!("{prefix} pid={me} driver rss={:.1}MiB pss={:.1}MiB", drv.rss as f64 / mib, drv.pss as f64 / mib));
    let rss: u64 = kids.iter().map(|(_, m)| m.rss).sum();
    let pss: u64 = kids.iter().map(|(_, m)| m.pss).sum();
    emit(&format!("{prefix}_nprocs_excl_driver"), kids.len() as f64, "procs");
    emit(&format!("{prefix}_rss_sum_excl_driver"), rss as f64 / mib, "MiB");
    emit(&format!("{prefix}_pss_sum_excl_driver"), pss as f64 / mib, "MiB");
    emit(&format!("{prefix}_driver_rss"), drv.rss as f64 / mib, "MiB");
    emit(&format!("{prefix}_rss_sum_incl_driver"), (rss + drv.rss) as f64 / mib, "MiB");
    emit(&format!("{prefix}_pss_sum_incl_driver"), (pss + drv.pss) as f64 / mib, "MiB");
}

// ---- groups ----

fn startup(t_main: Instant) {
    let t0 = Instant::now();
    ferry::init(ferry::Config::default()).expect("ferry::init");
    let dt = t0.elapsed();
    emit("startup_s", dt.as_secs_f64(), "s");
    emit("startup_from_script_start_s", t_main.elapsed().as_secs_f64(), "s");
    let cpus = ferry::node_stats().unwrap().total.get_milli("CPU") / 1000;
    while ferry::node_stats().unwrap().workers < cpus {
        std::thread::sleep(Duration::from_micros(200));
    }
    emit("startup_workers_ready_s", t0.elapsed().as_secs_f64(), "s");
    info(&format!("ferry resources: {}", ferry::node_stats().unwrap().total));
}

fn group_memory() {
    std::thread::sleep(Duration::from_secs(1)); // workers are up; no task has run yet
    report_memory("idle_mem");
}

fn group_tasks() {
    let t = Instant::now();
    ferry::get(&noop::remote()).unwrap();
    emit("first_task_s", t.elapsed().as_secs_f64(), "s");

    for _ in 0..200 {
        ferry::get(&noop::remote()).unwrap();
    }
    let mut samples = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        ferry::get(&noop::remote()).unwrap();
        samples.push(ns(t));
    }
    emit_latency("task_roundtrip_us", &samples);

    let warm: Vec<_> = (0..2000).map(|_| noop::remote()).collect();
    ferry::get_all(&warm).unwrap();
    drop(warm);
    let n = 20_000;
    let t = Instant::now();
    let refs: Vec<_> = (0..n).map(|_| noop::remote()).collect();
    let t_sub = t.elapsed();
    ferry::get_all(&refs).unwrap();
    let total = t.elapsed();
    drop(refs);
    emit("task_throughput_per_s", n as f64 / total.as_secs_f64(), "tasks/s");
    emit("task_throughput_submit_only_per_s", n as f64 / t_sub.as_secs_f64(), "tasks/s");
    emit("task_throughput_total_s", total.as_secs_f64(), "s");

    ferry::get(&fanout::remote(100)).unwrap();
    let mut fs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(ferry::get(&fanout::remote(1000)).unwrap(), 1000);
        fs.push(t.elapsed().as_secs_f64());
    }
    let m = median(&mut fs);
    emit("nested_fanout_1000_s", m, "s");
    emit("nested_fanout_1000_subtasks_per_s", 1000.0 / m, "tasks/s");

    let refs: Vec<_> = (0..1000).map(|_| noop::remote()).collect();
    ferry::get_all(&refs).unwrap();
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let (ready, _) = ferry::wait(&refs, 1, None).unwrap();
        samples.push(ns(t) as f64 / 1e3);
        assert_eq!(ready.len(), 1);
    }
    emit("wait_first_of_1000_ready_median", median(&mut samples), "us");
    drop(refs);
    let (mut sub, mut wt, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let refs: Vec<_> = (0..1000).map(|_| noop::remote()).collect();
        let t2 = Instant::now();
        ferry::wait(&refs, 1, None).unwrap();
        let w = ns(t2) as f64 / 1e3;
        let s = (t2 - t).as_nanos() as f64 / 1e3;
        sub.push(s);
        wt.push(w);
        both.push(s + w);
        ferry::get_all(&refs).unwrap();
    }
    emit("wait_first_of_1000_pending_median", median(&mut wt), "us");
    emit("wait_first_of_1000_pending_incl_submit_median", median(&mut both), "us");
}

/// `get` of an object containing 10k refs, as ray_perf's: the object is made once (by a
/// task, so the refs are the worker's and the driver borrows them) and each `get` decodes the
/// 10,000 refs. Then the same with a new object each time (task, 10,000 puts, get, release).
fn group_refs() {
    let outer = containing_10k_refs::remote();
    timeit("get_object_containing_10k_refs_per_s", 1.0, || {
        let refs = ferry::get(&outer).unwrap();
        assert_eq!(refs.len(), 10_000);
    });
    drop(outer);
    // Owner metadata: the driver's memory per live small object (entry + value), and what
    // is left after 100,000 finished tasks whose results were dropped.
    let me = std::process::id();
    let before = mem_of(me).map(|m| m.rss).unwrap_or(0);
    let held: Vec<_> = (0..100_000u64).map(|i| ferry::put(i).unwrap()).collect();
    let after = mem_of(me).map(|m| m.rss).unwrap_or(0);
    emit("owner_bytes_per_live_object", after.saturating_sub(before) as f64 / held.len() as f64, "B");
    drop(held);
    let refs: Vec<_> = (0..100_000).map(|_| one::remote()).collect();
    ferry::get_all(&refs).unwrap();
    drop(refs);
    std::thread::sleep(Duration::from_millis(50));
    let m = ferry::memory_summary().unwrap();
    emit("owner_entries_after_100k_dropped_tasks", (m.objects.len() as u64 + m.pending_tasks) as f64, "entries");
    timeit("create_and_get_object_containing_10k_refs_per_s", 1.0, || {
        let refs = ferry::get(&containing_10k_refs::remote()).unwrap();
        assert_eq!(refs.len(), 10_000);
    });
}

/// Runs a `dd` and returns its GB/s (GNU dd's last stderr line ends in "<rate> <unit>").
fn dd(args: &[&str]) -> f64 {
    let out = std::process::Command::new("dd").args(args).output().expect("run dd");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().last().unwrap_or_default();
    let mut words = line.rsplit(' ');
    let unit = words.next().unwrap_or_default();
    let rate: f64 = words.next().and_then(|w| w.replace(',', ".").parse().ok()).unwrap_or(0.0);
    rate * match unit {
        "GB/s" => 1.0,
        "MB/s" => 1e-3,
        "kB/s" => 1e-6,
        _ => 0.0,
    }
}

/// Spilling and restoring, beside the disk's own speed (`dd`, same directory, same run).
/// Needs a small store: run alone (`ferry-bench spill`), or in a child process with one.
fn group_spill() {
    let stats = ferry::node_stats().unwrap();
    let spill = ferry::__private::session_info().unwrap().session_dir.join("spill");
    let cap = stats.store_capacity_bytes as usize;
    let obj = 64 * MIB;
    let total = 1024 * MIB;
    info(&format!(
        "spill: store {} MiB, {} MiB of {} MiB objects past it, to {}",
        cap / MIB,
        total / MIB,
        obj / MIB,
        spill.display()
    ));
    // The disk, as dd sees it: a 1 GiB sequential write (synced), then read with a cold cache.
    let f = spill.join("dd-test");
    let fs = f.to_string_lossy().to_string();
    let w = dd(&["if=/dev/zero", &format!("of={fs}"), "bs=1M", "count=1024", "conv=fdatasync"]);
    let _ = dd(&[&format!("if={fs}"), "iflag=nocache", "count=0"]);
    let r = dd(&[&format!("if={fs}"), "of=/dev/null", "bs=1M"]);
    let _ = std::fs::remove_file(&f);
    emit("disk_write_GB_per_s", w, "GB/s");
    emit("disk_read_GB_per_s", r, "GB/s");
    // Fill the store, then put 1 GiB more: the oldest objects spill as the puts wait.
    let mut refs = Vec::new();
    let fill = cap / obj;
    for i in 0..fill + total / obj {
        let mut b = ferry::BytesMut::zeroed(obj).unwrap();
        b.fill(i as u8);
        refs.push(ferry::put(b.freeze()).unwrap());
    }
    let st = ferry::node_stats().unwrap();
    let spilled = st.spill_total_bytes as f64;
    emit("spill_GB_per_s", spilled / (st.spill_total_ns as f64 / 1e9) / 1e9, "GB/s");
    info(&format!("spilled {} MiB in {} objects", st.spilled_bytes / MIB as u64, st.spilled_objects));
    // Read every spilled object back (every page touched), from a cold cache: spilled files
    // are dropped from the page cache as they are written; if we may, drop it all (as the Ray
    // side does), so that both read from disk.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    match std::fs::write("/proc/sys/vm/drop_caches", "3\n") {
        Ok(()) => info("page cache dropped before the restore"),
        Err(e) => info(&format!("could not drop the page cache ({e})")),
    }
    let t = Instant::now();
    let mut bytes = 0usize;
    let mut check = 0u64;
    for (i, r) in refs.iter().enumerate().take(st.spilled_objects as usize) {
        let b = ferry::get_bytes(r).unwrap();
        assert_eq!(b[0], i as u8);
        check += b.iter().step_by(4096).map(|x| *x as u64).sum::<u64>();
        bytes += b.len();
    }
    let dt = t.elapsed().as_secs_f64();
    std::hint::black_box(check);
    emit("restore_GB_per_s", bytes as f64 / dt / 1e9, "GB/s");
    drop(refs);
}

/// Runs `ferry-bench GROUP` in a child with a 256 MiB store and passes on the lines that start
/// with one of `keep`.
fn group_in_small_store(group: &str, keep: &[&str]) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .arg(group)
        .env("FERRY_OBJECT_STORE_BYTES", (256 * MIB).to_string())
        .output()
        .unwrap_or_else(|e| panic!("run ferry-bench {group}: {e}"));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if keep.iter().any(|p| line.starts_with(p)) {
            println!("{line}");
        }
    }
}

const GROUPS: &[&str] = &["memory", "tasks", "objects", "refs", "actors", "spill", "fragmentation"];
const LATER: &[(&str, &str)] = &[];

fn main() {
    let t_main = Instant::now();
    if let Ok(address) = std::env::var("FERRY_BENCH_JOB") {
        cluster::job(&address);
        return;
    }
    if let Ok(v) = std::env::var("FERRY_BENCH_HISTORY_DRIVER") {
        let mut it = v.split(',').map(|x| x.parse::<usize>().expect("FERRY_BENCH_HISTORY_DRIVER: TASKS,ACTORS"));
        history::driver(it.next().unwrap_or(0), it.next().unwrap_or(0));
        return;
    }
    if let Ok(address) = std::env::var("FERRY_BENCH_PRIORITY_JOB") {
        priority::xnode_job(&address);
        return;
    }
    if let Ok(address) = std::env::var("FERRY_BENCH_FAIR_JOB") {
        fair::job(&address);
        return;
    }
    for (var, run) in [
        ("FERRY_BENCH_SCALE_TASKS", scale::tasks_child as fn(usize)),
        ("FERRY_BENCH_SCALE_PENDING", scale::pending_child as fn(usize)),
    ] {
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.parse().ok()) {
            return run(n);
        }
    }
    if let Ok(address) = std::env::var("FERRY_BENCH_SCALE_JOB") {
        return scale::job(&address);
    }
    if let Ok(address) = std::env::var("FERRY_BENCH_SCALE_ACTORS") {
        return scale::actors_job(&address);
    }
    if let Ok(address) = std::env::var("FERRY_BENCH_SIM_NODES") {
        return scale::sim_nodes(&address);
    }
    if let Ok(address) = std::env::var("FERRY_BENCH_RECOVERY") {
        cluster::recovery_job(&address);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(|s| s.as_str()) {
        Some("__tcp_send") => return cluster::tcp_send(&args[1]),
        Some("__tcp_recv") => return cluster::tcp_recv(&args[1]),
        Some("cluster") => {
            // Its own processes on namespace hosts; nothing to start here.
            info(&format!("ferry {} cluster (namespace hosts)", env!("CARGO_PKG_VERSION")));
            return cluster::group();
        }
        Some("__events_probe") => return observability::probe(),
        Some("observability") => {
            info(&format!("ferry {} observability (child processes, events off and on)", env!("CARGO_PKG_VERSION")));
            observability::group();
            return history::group();
        }
        Some("priority") => {
            info(&format!("ferry {} priority (real-time beside best-effort work)", env!("CARGO_PKG_VERSION")));
            return priority::group();
        }
        Some("fair") => {
            info(&format!("ferry {} fair sharing between two jobs", env!("CARGO_PKG_VERSION")));
            return fair::group();
        }
        Some("groups") => {
            info(&format!("ferry {} placement groups (Ray's create/removal shape)", env!("CARGO_PKG_VERSION")));
            return groups::group();
        }
        Some("priority_xnode") => {
            info(&format!("ferry {} priority across 3 namespace nodes", env!("CARGO_PKG_VERSION")));
            return priority::xnode_group();
        }
        Some("history") => {
            info(&format!("ferry {} history (the state tools at scale)", env!("CARGO_PKG_VERSION")));
            return history::group();
        }
        Some("scale") => {
            info(&format!(
                "ferry {} scale (a million tasks, 20 namespace nodes, 1,000 simulated nodes)",
                env!("CARGO_PKG_VERSION")
            ));
            return scale::group();
        }
        Some("recovery") => {
            info(&format!("ferry {} recovery (namespace hosts)", env!("CARGO_PKG_VERSION")));
            return cluster::recovery_group();
        }
        _ => {}
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: ferry-bench [GROUP...]   groups: {} (default: all of them)\n       ferry-bench cluster   \
             (as root: builds network-namespace hosts, needs the `ferry` binary next to this one)\n       ferry-bench observability   (task events off and on, alternately, in child processes)",
            GROUPS.join(", ")
        );
        return;
    }
    let groups: Vec<&str> = if args.is_empty() { GROUPS.to_vec() } else { args.iter().map(|s| s.as_str()).collect() };
    for g in &groups {
        if let Some((_, issue)) = LATER.iter().find(|(n, _)| n == g) {
            eprintln!("ferry-bench: group {g} is not built yet ({issue})");
            std::process::exit(2);
        }
        if !GROUPS.contains(g) {
            eprintln!("ferry-bench: unknown group {g}; groups: {}", GROUPS.join(", "));
            std::process::exit(2);
        }
    }
    info(&format!(
        "ferry {} nproc={} groups={}",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        groups.join(",")
    ));
    startup(t_main);
    for g in groups {
        match g {
            "memory" => group_memory(),
            "tasks" => group_tasks(),
            "objects" => store::group_objects(),
            "fragmentation" if std::env::var_os("FERRY_OBJECT_STORE_BYTES").is_some() => store::group_fragmentation(),
            "fragmentation" => group_in_small_store("fragmentation", &["put_64MiB", "fragmented_"]),
            "actors" => group_actors(),
            "refs" => group_refs(),
            "spill" if std::env::var_os("FERRY_OBJECT_STORE_BYTES").is_some() => group_spill(),
            "spill" => group_in_small_store("spill", &["disk_", "spill_", "restore_", "# spill", "# page", "# could"]),
            _ => unreachable!("checked above"),
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    report_memory("end_mem");
    let t = Instant::now();
    ferry::shutdown();
    emit("shutdown_s", t.elapsed().as_secs_f64(), "s");
}
