//! A three-node cluster on namespace hosts (head + two members, one CPU each, the third with
//! a custom resource), and a job on the head's host that uses all of it: tasks spilling over
//! to other nodes, spread and node-affine tasks, a custom resource, large objects made on one
//! node and read on another and by the driver, refs owned by a worker of another node,
//! nested tasks submitted from a remote worker, an infeasible task that waits with a warning,
//! and a remote task's output reaching the driver. Everything is torn down at the end.

use ferry::prelude::*;
use ferry::{NodeId, SchedulingStrategy};
use ferry_testkit::{signal, wait_exit, Cluster, Hosts};
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[ferry::remote]
fn where_am_i(sleep_ms: u64) -> NodeId {
    std::thread::sleep(Duration::from_millis(sleep_ms));
    ferry::node_id().unwrap()
}

#[ferry::remote]
fn make_bytes(n: usize, seed: u8) -> (NodeId, Vec<u8>) {
    (ferry::node_id().unwrap(), (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect())
}

#[ferry::remote]
fn big(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

/// Two objects of one task (`num_returns`), each made again on its own.
#[ferry::remote(num_returns = 2)]
fn big_pair(n: usize, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let a: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect();
    let b = a.iter().map(|x| x.wrapping_add(1)).collect();
    (a, b)
}

#[ferry::remote]
fn checksum(data: Vec<u8>) -> (NodeId, u64) {
    (ferry::node_id().unwrap(), data.iter().map(|b| *b as u64).sum())
}

/// Reads the object inside its argument (so this task borrows it) and sums it, or says why not.
#[ferry::remote]
fn checksum_inner(refs: Vec<ObjectRef<Vec<u8>>>) -> Result<u64, String> {
    ferry::get(&refs[0]).map(|d| d.iter().map(|b| *b as u64).sum()).map_err(|e| e.to_string())
}

/// Adds one to every byte.
#[ferry::remote]
fn bump(data: Vec<u8>) -> Vec<u8> {
    data.into_iter().map(|b| b.wrapping_add(1)).collect()
}

/// Puts objects in a worker (so that the worker owns them) and returns refs to them.
#[ferry::remote]
fn put_some(n: u64) -> Vec<ObjectRef<u64>> {
    (0..n).map(|i| ferry::put(i * 10).unwrap()).collect()
}

/// Runs `n` nested tasks from wherever it runs and reports their nodes.
#[ferry::remote]
fn fan_out(n: u64) -> Vec<NodeId> {
    let refs: Vec<_> = (0..n).map(|_| where_am_i::remote(100)).collect();
    ferry::get_all(&refs).unwrap()
}

#[ferry::remote]
fn shout(text: String) -> u32 {
    println!("{text}");
    1
}

#[ferry::actor]
pub struct Tally {
    n: i64,
}

#[ferry::actor]
impl Tally {
    pub fn new(start: i64) -> Self {
        Tally { n: start }
    }
    pub fn add(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }
    pub fn node(&self) -> NodeId {
        ferry::node_id().unwrap()
    }
}

/// Calls an actor from wherever this task runs.
#[ferry::remote]
fn add_to(t: ActorHandle<Tally>, by: i64) -> i64 {
    ferry::get(&t.add(by)).unwrap()
}

/// Adds to the actor registered as `name`, found by name from this task's node.
#[ferry::remote]
fn add_to_named(name: String, by: i64) -> i64 {
    let t = ferry::get_actor::<Tally>(&name).unwrap();
    ferry::get(&t.add(by)).unwrap()
}

/// Creates an actor from a task (its entry lives at this task's node) and returns it.
#[ferry::remote]
fn make_tally(start: i64) -> (NodeId, ActorHandle<Tally>) {
    (ferry::node_id().unwrap(), Tally::remote(start).unwrap())
}

fn expected_checksum(n: usize, seed: u8) -> u64 {
    (0..n).map(|i| (i as u8).wrapping_mul(seed) as u64).sum()
}

type Check = fn() -> Result<(), String>;

/// With `FERRY_TEST_CLUSTER_JOB` set this binary is the job: it joins that address, runs
/// each check, prints `ok <name>` or `FAIL <name>: <why>`, and exits.
#[used]
#[link_section = ".init_array"]
static JOB: extern "C" fn() = job_entry;

extern "C" fn job_entry() {
    if std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("--submitted-job") {
        submitted_job();
    }
    if let Ok(address) = std::env::var("FERRY_TEST_FREEZE_JOB") {
        freeze_job(&address);
    }
    if let Ok(address) = std::env::var("FERRY_TEST_LINEAGE_JOB") {
        lineage_job(&address);
    }
    if let Ok(address) = std::env::var("FERRY_TEST_ACTOR_NODE_JOB") {
        actor_node_job(&address);
    }
    if let Ok(address) = std::env::var("FERRY_TEST_GROUP_JOB") {
        group_job(&address);
    }
    let Ok(address) = std::env::var("FERRY_TEST_CLUSTER_JOB") else { return };
    if let Err(e) = ferry::init(ferry::Config::default().address(&address)) {
        println!("FAIL init: {e}");
        std::process::exit(0);
    }
    let checks: &[(&str, Check)] = &[
        ("nodes", check_nodes),
        ("spillback", check_spillback),
        ("spread", check_spread),
        ("affinity", check_affinity),
        ("custom_resource", check_custom_resource),
        ("transfer", check_transfer),
        ("fetch_local", check_fetch_local),
        ("remote_owner", check_remote_owner),
        ("nested", check_nested),
        ("infeasible_waits", check_infeasible),
        ("logs", check_logs),
        ("actors", check_actors),
        ("actor_placement", check_actor_placement),
        ("stores_empty", check_stores_empty),
    ];
    let only = std::env::var("FERRY_TEST_ONLY").ok();
    for (name, f) in checks {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        match f() {
            Ok(()) => println!("ok {name}"),
            Err(e) => {
                println!("FAIL {name}: {e}");
                for n in ferry::nodes().unwrap_or_default() {
                    println!(
                        "  node {:?} alive={} available {} of {}, {} workers, {} actors",
                        n.node, n.alive, n.available, n.total, n.workers, n.actors
                    );
                }
            }
        }
    }
    ferry::shutdown();
    std::process::exit(0);
}

/// The binary each task runs from, and its node.
#[ferry::remote]
fn my_binary() -> (NodeId, String) {
    (ferry::node_id().unwrap(), std::env::current_exe().unwrap().display().to_string())
}

/// Run by `ferry submit` on the head (`--submitted-job N`): joins through `FERRY_ADDRESS`,
/// runs tasks on every node, prints what binary each node ran them from, exits with N.
fn submitted_job() -> ! {
    let code: i32 = std::env::args().nth(2).and_then(|c| c.parse().ok()).unwrap_or(0);
    ferry::init(ferry::Config::default()).unwrap();
    let refs: Vec<_> =
        (0..6).map(|_| my_binary::options().scheduling_strategy(SchedulingStrategy::Spread).remote()).collect();
    let mut seen = ferry::get_all(&refs).unwrap();
    seen.sort();
    seen.dedup();
    for (node, exe) in seen {
        println!("node {node:?} ran {exe}");
    }
    ferry::shutdown();
    std::process::exit(code);
}

/// Sleeps, then says where it ran.
#[ferry::remote]
fn slow_where(ms: u64) -> NodeId {
    std::thread::sleep(Duration::from_millis(ms));
    ferry::node_id().unwrap()
}

/// The job of the freeze test: starts a task on a member, asks the harness (on stdout) to
/// freeze that member, and reports where the task finished and how long it took.
fn freeze_job(address: &str) -> ! {
    ferry::init(ferry::Config::default().address(address)).unwrap();
    let me = ferry::node_id().unwrap();
    let target = ferry::nodes().unwrap().into_iter().find(|n| n.node != me && n.alive).unwrap();
    let s = SchedulingStrategy::NodeAffinity { node: target.node, soft: true };
    let r = slow_where::options().scheduling_strategy(s).remote(3000);
    std::thread::sleep(Duration::from_millis(300));
    println!("freeze {}", target.addr);
    let t = std::time::Instant::now();
    match ferry::get_timeout(&r, Duration::from_secs(20)) {
        Ok(n) if n != target.node => println!("retried on another node after {:.2}s", t.elapsed().as_secs_f64()),
        other => println!("FAIL: {other:?}"),
    }
    ferry::shutdown();
    std::process::exit(0);
}

/// Prints "`what` ok" once `node` holds `n` objects, or "FAIL `what`" after 10 s.
fn say_when_node_holds(node: NodeId, n: u64, what: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let objects = ferry::nodes().unwrap().iter().find(|v| v.node == node).map(|v| v.objects);
        if objects == Some(n) {
            println!("{what} ok");
            return;
        }
        if std::time::Instant::now() > end {
            println!("FAIL {what}: {objects:?} objects on the node");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The job of the lineage test: an 8 MiB object made on a member (soft affinity: it may be
/// made again elsewhere), the harness kills that member, then a task reads the object and the
/// driver gets it: both need it made again from its lineage.
fn lineage_job(address: &str) -> ! {
    ferry::init(ferry::Config::default().address(address)).unwrap();
    let me = ferry::node_id().unwrap();
    let target = ferry::nodes().unwrap().into_iter().find(|n| n.node != me && n.alive).unwrap();
    let s = SchedulingStrategy::NodeAffinity { node: target.node, soft: true };
    let n = 8 << 20;
    let data = big::options().scheduling_strategy(s.clone()).remote(n, 5);
    let (made_on, sum) = ferry::get(&checksum::options().scheduling_strategy(s.clone()).remote(&data)).unwrap();
    assert_eq!((made_on, sum), (target.node, expected_checksum(n, 5)));
    // A chain whose first link's value is released (nothing holds it but the second link's
    // lineage): making the second again needs the first made again too.
    let first = big::options().scheduling_strategy(s.clone()).remote(n, 3);
    let second = bump::options().scheduling_strategy(s.clone()).remote(&first);
    // (Not fetched here: the only copies must stay on the member.)
    let only_there = ferry::WaitOptions::new(1).fetch_local(false);
    ferry::wait_with(std::slice::from_ref(&second), only_there).unwrap();
    drop(first);
    // Its value goes from the store (the lineage keeps only its name): `data` and `second` stay.
    say_when_node_holds(target.node, 2, "released");
    // Lent to a task inside a value: that task borrows it, and asks this process (its owner)
    // to make it again when it finds it lost.
    let lent = big::options().scheduling_strategy(s.clone()).remote(n, 7);
    ferry::wait_with(std::slice::from_ref(&lent), only_there).unwrap();
    // Two returns of one task: the first dropped (and freed on its own), the second kept, to
    // be made again after the node dies (its task runs again; nothing of the first is kept).
    let (pa, pb) = big_pair::options().scheduling_strategy(s).remote(n, 9);
    ferry::wait_with(&[pa.clone(), pb.clone()], ferry::WaitOptions::new(2).fetch_local(false)).unwrap();
    drop(pa);
    // data, second, lent and the pair's second.
    say_when_node_holds(target.node, 4, "pair freed");
    println!("kill {}", target.addr);
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while ferry::nodes().unwrap().iter().any(|v| v.node == target.node && v.alive) {
        assert!(std::time::Instant::now() < end, "the node was never declared dead");
        std::thread::sleep(Duration::from_millis(20));
    }
    match ferry::get_timeout(&checksum_inner::remote(vec![lent.clone()]), Duration::from_secs(20)) {
        Ok(Ok(sum)) if sum == expected_checksum(n, 7) => println!("borrower ok"),
        other => println!("FAIL borrower: {other:?}"),
    }
    let t = std::time::Instant::now();
    let r = checksum::remote(&data);
    match ferry::get_timeout(&r, Duration::from_secs(20)) {
        Ok((_, sum)) if sum == expected_checksum(n, 5) => println!("task ok after {:.2}s", t.elapsed().as_secs_f64()),
        other => println!("FAIL task: {other:?}"),
    }
    match ferry::get_timeout(&data, Duration::from_secs(20)) {
        Ok(v) if v.iter().map(|x| *x as u64).sum::<u64>() == expected_checksum(n, 5) => println!("get ok"),
        Ok(_) => println!("FAIL get: wrong bytes"),
        Err(err) => println!("FAIL get: {err}"),
    }
    let want: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(3).wrapping_add(1)).collect();
    match ferry::get_timeout(&second, Duration::from_secs(20)) {
        Ok(v) if v == want => println!("chain ok"),
        Ok(_) => println!("FAIL chain: wrong bytes"),
        Err(err) => println!("FAIL chain: {err}"),
    }
    let want_b: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(9).wrapping_add(1)).collect();
    match ferry::get_timeout(&pb, Duration::from_secs(20)) {
        Ok(v) if v == want_b => println!("pair ok"),
        Ok(_) => println!("FAIL pair: wrong bytes"),
        Err(err) => println!("FAIL pair: {err}"),
    }
    // Made again: `lent`, `data`, `second`, the released `first` and the pair's second.
    println!("reconstructions {}", ferry::recovery_stats().unwrap().reconstructions);
    ferry::shutdown();
    std::process::exit(0);
}

/// The job of the actor-restart test: a filler actor takes the head's `spot`, so a named
/// detached actor needing a `spot` is placed on a member; the harness kills that member; the
/// actor comes back on the other member (`max_restarts`) under its name, and a call made after
/// the death is answered there.
fn actor_node_job(address: &str) -> ! {
    ferry::init(ferry::Config::default().address(address)).unwrap();
    let me = ferry::node_id().unwrap();
    let filler = Tally::options().resource("spot", 1.0).remote(0).unwrap();
    assert_eq!(ferry::get_timeout(&filler.node(), Duration::from_secs(20)).unwrap(), me);
    // Named and detached: its home is the control store, which places it by its view of the
    // nodes. That view may not show the filler yet: the head node then passes it on.
    let t = Tally::options().name("phoenix").detached().resource("spot", 1.0).max_restarts(1).remote(100).unwrap();
    let first = ferry::get_timeout(&t.node(), Duration::from_secs(20)).unwrap();
    assert_ne!(first, me);
    assert_eq!(ferry::get_timeout(&t.add(1), Duration::from_secs(20)).unwrap(), 101);
    let addr = ferry::nodes().unwrap().into_iter().find(|n| n.node == first).unwrap().addr;
    println!("kill {addr}");
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while ferry::nodes().unwrap().iter().any(|v| v.node == first && v.alive) {
        assert!(std::time::Instant::now() < end, "the node was never declared dead");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The restarted actor runs its constructor again: its state starts over. It is found
    // under its name.
    let t = ferry::get_actor::<Tally>("phoenix").unwrap();
    match ferry::get_timeout(&t.add(1), Duration::from_secs(20)) {
        Ok(101) => {}
        other => println!("FAIL call after the death: {other:?}"),
    }
    match ferry::get_timeout(&t.node(), Duration::from_secs(20)) {
        Ok(n) if n != first && n != me => println!("restarted ok"),
        other => println!("FAIL where: {other:?}"),
    }
    ferry::kill(&t).unwrap();
    drop(filler);
    ferry::shutdown();
    std::process::exit(0);
}

/// A strict-spread placement group over two of the three nodes: each bundle's tasks run on
/// its node; the member holding one is killed and the bundle is reserved again on the third
/// node; a group of three bundles, with two nodes left, is infeasible.
fn group_job(address: &str) -> ! {
    use ferry::{GroupPhase, GroupStrategy, Shape};
    ferry::init(ferry::Config::default().address(address)).unwrap();
    let me = ferry::node_id().unwrap();
    let slot = || Shape::with_resources(0.0, &[("slot".to_string(), 1.0)]);
    let pg = ferry::placement_group_named("pair", vec![slot(), slot()], GroupStrategy::StrictSpread).unwrap();
    pg.wait(Duration::from_secs(20)).unwrap();
    let run_in = |i: u32| {
        let r = where_am_i::options().num_cpus(0.0).resource("slot", 1.0).placement_group(&pg, Some(i)).remote(0);
        ferry::get_timeout(&r, Duration::from_secs(20)).unwrap()
    };
    let nodes: Vec<NodeId> = pg.bundle_nodes().unwrap().into_iter().map(|n| n.unwrap()).collect();
    assert_ne!(nodes[0], nodes[1], "strict spread: two nodes");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(run_in(i as u32), *n, "bundle {i}'s task ran off its node");
    }
    println!("placed ok");
    let (i, victim) = nodes.iter().copied().enumerate().find(|(_, n)| *n != me).expect("a member holds one");
    let addr = ferry::nodes().unwrap().into_iter().find(|n| n.node == victim).unwrap().addr;
    println!("kill {addr}");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = pg.info().unwrap();
        let now: Vec<Option<NodeId>> = info.bundles.iter().map(|(_, n)| *n).collect();
        if info.phase == GroupPhase::Created && !now.contains(&Some(victim)) {
            let moved = now[i].unwrap();
            assert!(moved != victim && Some(moved) != now[1 - i], "{now:?}");
            assert_eq!(run_in(i as u32), moved, "the moved bundle's task ran off its node");
            println!("rescheduled ok");
            break;
        }
        assert!(std::time::Instant::now() < end, "the bundle was never placed again: {info:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let three = ferry::placement_group(vec![slot(), slot(), slot()], GroupStrategy::StrictSpread).unwrap();
    match ferry::get_timeout(&three.ready(), Duration::from_secs(20)) {
        Err(ferry::Error::Infeasible { .. }) => println!("infeasible ok"),
        other => println!("FAIL three bundles on two nodes: {other:?}"),
    }
    ferry::shutdown();
    std::process::exit(0);
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn node_ids() -> Result<(NodeId, Vec<NodeId>), String> {
    let me = ferry::node_id().map_err(e)?;
    let mut all: Vec<NodeId> = ferry::nodes().map_err(e)?.into_iter().filter(|n| n.alive).map(|n| n.node).collect();
    all.sort();
    Ok((me, all))
}

fn check_nodes() -> Result<(), String> {
    let nodes = ferry::nodes().map_err(e)?;
    let alive = nodes.iter().filter(|n| n.alive).count();
    if alive != 3 {
        return Err(format!("{alive} nodes alive: {nodes:?}"));
    }
    Ok(())
}

/// One CPU per node: six 300 ms tasks at once cannot all run on the driver's node.
fn check_spillback() -> Result<(), String> {
    let refs: Vec<_> = (0..6).map(|_| where_am_i::remote(300)).collect();
    let got = ferry::get_all(&refs).map_err(e)?;
    let mut distinct = got.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() < 2 {
        return Err(format!("every task ran on one node: {got:?}"));
    }
    Ok(())
}

fn check_spread() -> Result<(), String> {
    let (_, all) = node_ids()?;
    let refs: Vec<_> =
        (0..6).map(|_| where_am_i::options().scheduling_strategy(SchedulingStrategy::Spread).remote(0)).collect();
    let mut got = ferry::get_all(&refs).map_err(e)?;
    got.sort();
    got.dedup();
    if got != all {
        return Err(format!("spread reached {got:?}, nodes are {all:?}"));
    }
    Ok(())
}

fn check_affinity() -> Result<(), String> {
    let (me, all) = node_ids()?;
    for n in all {
        let s = SchedulingStrategy::NodeAffinity { node: n, soft: false };
        let got = ferry::get(&where_am_i::options().scheduling_strategy(s).remote(0)).map_err(e)?;
        if got != n {
            return Err(format!("asked for {n:?}, ran on {got:?}"));
        }
    }
    // A node that is not in the cluster: a hard affinity fails with a clear error, a soft one
    // runs anyway.
    let nowhere = NodeId(12345);
    let hard =
        where_am_i::options().scheduling_strategy(SchedulingStrategy::NodeAffinity { node: nowhere, soft: false });
    match ferry::get(&hard.remote(0)) {
        Err(err) if err.to_string().contains("not in the cluster") => {}
        other => return Err(format!("hard affinity to a missing node gave {other:?}")),
    }
    let soft =
        where_am_i::options().scheduling_strategy(SchedulingStrategy::NodeAffinity { node: nowhere, soft: true });
    let _ = (ferry::get(&soft.remote(0)).map_err(e)?, me);
    Ok(())
}

fn check_custom_resource() -> Result<(), String> {
    let special = ferry::nodes().map_err(e)?.into_iter().find(|n| n.total.get_milli("special") > 0);
    let Some(special) = special else { return Err("no node has the resource".into()) };
    for _ in 0..3 {
        let got = ferry::get(&where_am_i::options().resource("special", 1.0).remote(0)).map_err(e)?;
        if got != special.node {
            return Err(format!("ran on {got:?}, only {:?} has it", special.node));
        }
    }
    Ok(())
}

/// An 8 MiB object made on one member is read by a task on the other (pulled between their
/// daemons) and by the driver (pulled to the head); many readers at once share transfers.
/// Ray's `wait(fetch_local=...)`: by default a ready value on another node is copied here
/// before `wait` returns, so the `get` after it makes no transfer; without, nothing moves.
fn check_fetch_local() -> Result<(), String> {
    let (me, all) = node_ids()?;
    let other = all.into_iter().find(|n| *n != me).ok_or("no other node")?;
    let on = SchedulingStrategy::NodeAffinity { node: other, soft: false };
    let pulls = || ferry::node_stats().map(|s| s.transfers_in).map_err(e);
    let r = big::options().scheduling_strategy(on.clone()).remote(4 << 20, 5);
    let before = pulls()?;
    let (ready, _) =
        ferry::wait_with(std::slice::from_ref(&r), ferry::WaitOptions::new(1).fetch_local(false)).map_err(e)?;
    if ready.len() != 1 || pulls()? != before {
        return Err(format!("without fetch_local: {} ready, {} pulls", ready.len(), pulls()? - before));
    }
    let (ready, _) = ferry::wait(std::slice::from_ref(&r), 1, None).map_err(e)?;
    let fetched = pulls()?;
    if ready.len() != 1 || fetched != before + 1 {
        return Err(format!("with fetch_local: {} ready, {} pulls", ready.len(), fetched - before));
    }
    let v = ferry::get(&r).map_err(e)?;
    if v.len() != 4 << 20 || pulls()? != fetched {
        return Err(format!("the get after it made {} more pulls", pulls()? - fetched));
    }
    Ok(())
}

fn check_transfer() -> Result<(), String> {
    let (me, all) = node_ids()?;
    let others: Vec<NodeId> = all.into_iter().filter(|n| *n != me).collect();
    let (a, b) = (others[0], others[1]);
    let on = |n: NodeId| SchedulingStrategy::NodeAffinity { node: n, soft: false };
    let n = 8 << 20;
    let data = big::options().scheduling_strategy(on(a)).remote(n, 7);
    let want = expected_checksum(n, 7);
    let reads: Vec<_> = (0..4).map(|_| checksum::options().scheduling_strategy(on(b)).remote(&data)).collect();
    for r in ferry::get_all(&reads).map_err(e)? {
        if r != (b, want) {
            return Err(format!("read on {b:?} gave {r:?}, want {want}"));
        }
    }
    // Default placement prefers the node holding the argument's bytes (when it has room: a
    // task needing no CPU always does).
    let near = checksum::options().num_cpus(0.0).remote(&data);
    let (ran_on, sum) = ferry::get(&near).map_err(e)?;
    if (ran_on, sum) != (a, want) {
        return Err(format!("a task on {a:?}'s 8 MiB ran on {ran_on:?} (sum {sum})"));
    }
    let local = ferry::get(&data).map_err(e)?;
    if local.len() != n || local.iter().map(|x| *x as u64).sum::<u64>() != want {
        return Err("the driver read wrong bytes".into());
    }
    // A value made on a member, returned with its node, read in the driver.
    let (made_on, bytes) = ferry::get(&make_bytes::options().scheduling_strategy(on(b)).remote(n, 3)).map_err(e)?;
    if made_on != b || bytes.iter().map(|x| *x as u64).sum::<u64>() != expected_checksum(n, 3) {
        return Err(format!("made on {made_on:?}, wrong bytes"));
    }
    Ok(())
}

/// Refs owned by a worker on another node: the driver reaches that worker by the address
/// the refs carry.
fn check_remote_owner() -> Result<(), String> {
    let (me, all) = node_ids()?;
    let other = all.into_iter().find(|n| *n != me).ok_or("no other node")?;
    let s = SchedulingStrategy::NodeAffinity { node: other, soft: false };
    let refs = ferry::get(&put_some::options().scheduling_strategy(s).remote(5)).map_err(e)?;
    let got = ferry::get_all(&refs).map_err(e)?;
    if got != vec![0, 10, 20, 30, 40] {
        return Err(format!("got {got:?}"));
    }
    Ok(())
}

/// A task on a member submits tasks itself; with one CPU per node they spill to others.
fn check_nested() -> Result<(), String> {
    let (me, all) = node_ids()?;
    let other = all.into_iter().find(|n| *n != me).ok_or("no other node")?;
    let s = SchedulingStrategy::NodeAffinity { node: other, soft: false };
    let got = ferry::get(&fan_out::options().scheduling_strategy(s).remote(4)).map_err(e)?;
    if got.len() != 4 {
        return Err(format!("got {got:?}"));
    }
    Ok(())
}

/// A task or an actor no node can fit waits (with a warning) rather than fail.
fn check_infeasible() -> Result<(), String> {
    let r = where_am_i::options().resource("unobtainium", 1.0).remote(0);
    match ferry::get_timeout(&r, Duration::from_millis(800)) {
        Err(ferry::Error::Timeout { .. }) => {}
        other => return Err(format!("expected the task to wait, got {other:?}")),
    }
    let a = Tally::options().resource("unobtainium", 2.0).remote(0).map_err(e)?;
    match ferry::get_timeout(&a.add(1), Duration::from_millis(800)) {
        Err(ferry::Error::Timeout { .. }) => Ok(()),
        other => Err(format!("expected the actor to wait, got {other:?}")),
    }
}

fn check_logs() -> Result<(), String> {
    let (me, all) = node_ids()?;
    let other = all.into_iter().find(|n| *n != me).ok_or("no other node")?;
    let s = SchedulingStrategy::NodeAffinity { node: other, soft: false };
    ferry::get(&shout::options().scheduling_strategy(s).remote("hello from afar".to_string())).map_err(e)?;
    // Lines travel worker → its daemon → head → this driver; give them a moment.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Actors holding a CPU each fill the three nodes (placed like spilled tasks); calls reach
/// them from the driver and from tasks on other nodes; a named actor is found by name from
/// another node; an actor created by a task on a member is called from the driver.
/// Scheduling strategies for actors: `Spread` puts three on three nodes, a hard affinity puts
/// one where it says (and fails clearly for a node that is not there), a soft one runs anyway.
fn check_actor_placement() -> Result<(), String> {
    let g = |r: &ObjectRef<NodeId>, what: &str| {
        ferry::get_timeout(r, Duration::from_secs(15)).map_err(|err| format!("{what}: {err}"))
    };
    let (me, all) = node_ids()?;
    let spread: Vec<ActorHandle<Tally>> = (0..3)
        .map(|i| Tally::options().scheduling_strategy(SchedulingStrategy::Spread).remote(i))
        .collect::<ferry::Result<_>>()
        .map_err(e)?;
    let mut at = spread.iter().map(|t| g(&t.node(), "a spread actor")).collect::<Result<Vec<_>, _>>()?;
    at.sort();
    if at != all {
        return Err(format!("spread actors ran on {at:?}, not on each of {all:?}"));
    }
    // Listed once each (by their home, not again by the node hosting them), where they run.
    let listed = ferry::state::list_actors().map_err(e)?;
    for t in &spread {
        let rows: Vec<_> = listed.iter().filter(|v| v.actor == t.id()).collect();
        let ran = g(&t.node(), "a spread actor")?;
        if rows.len() != 1 || rows[0].node != Some(ran) || rows[0].state != "alive" {
            return Err(format!("actor {:?} (on {ran:?}) is listed as {rows:?}", t.id()));
        }
    }
    let other = *all.iter().find(|n| **n != me).expect("another node");
    let pinned = Tally::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node: other, soft: false })
        .remote(0)
        .map_err(e)?;
    if g(&pinned.node(), "a pinned actor")? != other {
        return Err("a hard node affinity was not kept".into());
    }
    let nowhere = NodeId(12345);
    let lost = Tally::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node: nowhere, soft: false })
        .remote(0)
        .map_err(e)?;
    match ferry::get_timeout(&lost.node(), Duration::from_secs(15)) {
        Err(err) if err.to_string().contains("node affinity") => {}
        other => return Err(format!("an actor pinned to a missing node: {other:?}")),
    }
    let soft = Tally::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity { node: nowhere, soft: true })
        .remote(0)
        .map_err(e)?;
    g(&soft.node(), "a soft-pinned actor")?;
    Ok(())
}

fn check_actors() -> Result<(), String> {
    // Every wait is bounded, and says which step did not finish.
    fn g<T: serde::de::DeserializeOwned + 'static>(r: &ObjectRef<T>, what: &str) -> Result<T, String> {
        ferry::get_timeout(r, Duration::from_secs(15)).map_err(|err| format!("{what}: {err}"))
    }
    let (_, all) = node_ids()?;
    let tallies: Vec<ActorHandle<Tally>> =
        (0..3).map(|i| Tally::options().num_cpus(1.0).remote(i)).collect::<ferry::Result<_>>().map_err(e)?;
    let mut at = Vec::new();
    for (i, t) in tallies.iter().enumerate() {
        at.push(g(&t.node(), &format!("actor {i} placed"))?);
    }
    at.sort();
    if at != all {
        return Err(format!("actors on {at:?}, nodes are {all:?}"));
    }
    // Each actor called from a task (on whatever node has room: 0-CPU tasks run anywhere).
    let calls: Vec<_> = tallies.iter().map(|t| add_to::options().num_cpus(0.0).remote(t, 10)).collect();
    let mut got = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        got.push(g(c, &format!("call from a task to actor {i}"))?);
    }
    if got != vec![10, 11, 12] {
        return Err(format!("calls from tasks gave {got:?}"));
    }
    drop(tallies);
    // A named actor: its entry is at the head; found by name from a task on another node.
    let named = Tally::options().num_cpus(0.0).name("shared").remote(100).map_err(e)?;
    let (me, _) = node_ids()?;
    let other = all.iter().copied().find(|n| *n != me).ok_or("no other node")?;
    let s = SchedulingStrategy::NodeAffinity { node: other, soft: false };
    let v = g(&add_to_named::options().scheduling_strategy(s).remote("shared".to_string(), 5), "named from a task")?;
    let now = g(&named.add(0), "named from the driver")?;
    if v != 105 || now != 105 {
        return Err(format!("named actor: task saw {v}, driver {now}"));
    }
    drop(named);
    // An actor whose entry lives on a member (its creator ran there), called from the driver.
    let s = SchedulingStrategy::NodeAffinity { node: other, soft: false };
    let (made_on, t) =
        g(&make_tally::options().num_cpus(0.0).scheduling_strategy(s).remote(1), "actor made by a task")?;
    let v = g(&t.add(2), "call to an actor homed on a member")?;
    if made_on != other || v != 3 {
        return Err(format!("actor made on {made_on:?} answered {v}"));
    }
    Ok(())
}

/// Every object the checks made is freed, and so are the copies other nodes took.
fn check_stores_empty() -> Result<(), String> {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = ferry::nodes().map_err(e)?;
        if nodes.iter().all(|n| n.objects == 0) {
            return Ok(());
        }
        if std::time::Instant::now() > end {
            let left: Vec<_> = nodes.iter().map(|n| (n.node, n.objects, n.object_bytes)).collect();
            return Err(format!("objects left in stores after 10 s: {left:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_job_uses_every_node_of_a_three_host_cluster() {
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let args = vec![
        vec!["--num-cpus".to_string(), "1".to_string()],
        vec!["--num-cpus".to_string(), "1".to_string()],
        vec!["--num-cpus".to_string(), "1".to_string(), "--resources".to_string(), "special=1".to_string()],
    ];
    let cluster = Cluster::start(&hosts, ferry, &args, T).unwrap();
    let mut job = cluster
        .job(&hosts, 0, std::env::current_exe().unwrap(), "FERRY_TEST_CLUSTER_JOB", &cluster.head.address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_exit(&mut job, T);
    if exited.is_err() {
        let _ = job.kill();
    }
    let (mut out, mut err) = (String::new(), String::new());
    job.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    job.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    eprintln!("job stdout:\n{out}\njob stderr:\n{err}");
    assert!(exited.is_ok(), "the job hung");
    for name in [
        "nodes",
        "spillback",
        "spread",
        "affinity",
        "custom_resource",
        "transfer",
        "fetch_local",
        "remote_owner",
        "nested",
        "infeasible_waits",
        "logs",
        "actors",
        "actor_placement",
        "stores_empty",
    ] {
        assert!(out.lines().any(|l| l == format!("ok {name}")), "check {name} failed or did not run");
    }
    assert!(err.contains("tasks needing {CPU: 1, unobtainium: 1} wait"), "no warning for the infeasible task");
    assert!(err.contains("unobtainium: 2} waits"), "no warning for the infeasible actor");
    assert!(
        out.lines().any(|l| l.starts_with("(node=") && l.ends_with("hello from afar")),
        "a remote task's output did not reach the driver, prefixed with its node"
    );

    // `ferry submit` from another host's view: the binary goes to the head by hash, runs there
    // as the driver, and every node runs its tasks from its own copy of it (fetched by hash).
    let submit = |code: &str| {
        hosts
            .command(1, ferry)
            .args(["submit", "--address", &cluster.head.address, "--token", &cluster.head.token, "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--submitted-job", code])
            .output()
            .unwrap()
    };
    let out = submit("3");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("submit stdout:\n{stdout}\nsubmit stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(3), "ferry submit exits with the job's code");
    assert!(stderr.contains("uploading"), "the first submit ships the binary");
    let exes: Vec<&str> = stdout.lines().filter_map(|l| l.split(" ran ").nth(1)).collect();
    assert_eq!(exes.len(), 3, "one line per node: {stdout}");
    let hash = exes[0].rsplit('/').next().unwrap().to_string();
    assert_eq!(hash.len(), 64, "nodes run the binary stored under its hash: {exes:?}");
    let mut dirs: Vec<&str> = exes.iter().map(|e| e.rsplit_once('/').unwrap().0).collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), 3, "each node ran its own copy: {exes:?}");
    assert!(exes.iter().all(|e| e.ends_with(&hash)));
    let again = submit("0");
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has"), "a binary is shipped once");
    let st = hosts
        .command(0, ferry)
        .args(["status", "--address", &cluster.head.address, "--token", &cluster.head.token])
        .output()
        .unwrap();
    let st = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(st.contains("jobs: 2") && st.contains("exited with 3") && st.contains("exited with 0"), "{st}");

    drop(cluster);
    hosts.tear_down().unwrap();
}

/// A member frozen in the middle of a task (its sockets stay open, its heartbeats stop): the
/// head declares it dead after the timeout, tells every process, and the task's owner runs it
/// again on another node at once.
#[test]
fn a_task_on_a_frozen_node_runs_again_elsewhere() {
    let (out, _) = job_with_failures("FERRY_TEST_FREEZE_JOB", &[]);
    let result = out.first().cloned().unwrap_or_default();
    assert!(result.starts_with("retried on another node after"), "{out:?}");
    let secs: f64 = result.rsplit(' ').next().unwrap().trim_end_matches('s').parse().unwrap();
    // Timeout 1 s, then the task's 1.5 s again: well under the 20 s it would take otherwise.
    assert!(secs < 10.0, "{result}");
}

/// An object whose only copy was on a node that was killed is made again from its lineage,
/// both when a task needs it and when the driver gets it.
#[test]
fn an_object_lost_with_its_node_is_made_again() {
    let (out, _) = job_with_failures("FERRY_TEST_LINEAGE_JOB", &[]);
    assert!(out.iter().any(|l| l.starts_with("task ok")), "{out:?}");
    assert!(out.iter().any(|l| l == "get ok"), "{out:?}");
    assert!(out.iter().any(|l| l == "chain ok"), "{out:?}");
    assert!(out.iter().any(|l| l == "released ok"), "{out:?}");
    assert!(out.iter().any(|l| l == "borrower ok"), "{out:?}");
    assert!(out.iter().any(|l| l == "pair freed ok"), "{out:?}");
    assert!(out.iter().any(|l| l == "pair ok"), "{out:?}");
    assert!(out.iter().any(|l| l == "reconstructions 5"), "{out:?}");
}

/// An actor on a node that dies comes back on another node (it has a restart left), and calls
/// made after the death reach it there.
#[test]
fn a_placement_group_spans_nodes_and_is_placed_again_when_one_dies() {
    let (out, clean) = job_with_failures("FERRY_TEST_GROUP_JOB", &["--resources", "slot=1"]);
    assert!(clean, "the job failed: {out:?}");
    for want in ["placed ok", "rescheduled ok", "infeasible ok"] {
        assert!(out.iter().any(|l| l == want), "no {want:?}: {out:?}");
    }
    let status = out.iter().filter(|l| l.starts_with("status: ")).cloned().collect::<Vec<_>>().join("\n");
    assert!(status.contains("placement groups: 2"), "{status}");
    assert!(status.contains("\"pair\" STRICT_SPREAD: Created"), "{status}");
    assert!(status.contains("STRICT_SPREAD: Infeasible"), "{status}");
}

#[test]
fn an_actor_on_a_dead_node_restarts_elsewhere() {
    let (out, clean) = job_with_failures("FERRY_TEST_ACTOR_NODE_JOB", &["--resources", "spot=1"]);
    assert!(clean, "the job failed: {out:?}");
    assert!(out.iter().any(|l| l == "restarted ok"), "{out:?}");
    assert!(!out.iter().any(|l| l.starts_with("FAIL")), "{out:?}");
}

/// Starts three namespace hosts of 1 CPU (with `args` added to each node) and a head timeout of
/// 1 s, runs this binary on the head's host as a job with `var` set to the head's address, and
/// does what it asks on its standard output: `kill ADDR` kills that member, `freeze ADDR` stops
/// it (thawed at the end). Returns the job's other lines and whether it exited cleanly.
fn job_with_failures(var: &str, args: &[&str]) -> (Vec<String>, bool) {
    use std::io::BufRead;
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let node = || {
        let mut a = vec!["--num-cpus".to_string(), "1".to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        a
    };
    let mut cluster =
        Cluster::start_with(&hosts, ferry, &[node(), node(), node()], &[("FERRY_NODE_TIMEOUT_MS", "1000")], T).unwrap();
    let mut job = cluster
        .job(&hosts, 0, std::env::current_exe().unwrap(), var, &cluster.head.address)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    let mut frozen = Vec::new();
    for line in std::io::BufReader::new(job.stdout.take().unwrap()).lines().map_while(Result::ok) {
        let member = |c: &Cluster, addr: &str| c.members.iter().position(|m| m.address == addr).expect("a member");
        if let Some(addr) = line.strip_prefix("kill ") {
            let i = member(&cluster, addr);
            let m = &mut cluster.members[i];
            let _ = m.child.kill();
            let _ = m.child.wait();
        } else if let Some(addr) = line.strip_prefix("freeze ") {
            let pid = cluster.members[member(&cluster, addr)].child.id();
            signal(pid, 19); // SIGSTOP
            frozen.push(pid);
        } else {
            out.push(line);
        }
    }
    let exited = wait_exit(&mut job, T);
    for pid in frozen {
        signal(pid, 18); // SIGCONT, so that it can be stopped
    }
    if exited.is_err() {
        let _ = job.kill();
    }
    // What `ferry status` says at the end, for the test to check.
    if let Ok(text) = cluster.status(&hosts, ferry) {
        out.extend(text.lines().map(|l| format!("status: {l}")));
    }
    drop(cluster);
    (out, exited.unwrap_or(false))
}
