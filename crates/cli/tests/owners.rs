//! Owner death across nodes (DESIGN §8): a driver on one host owns a large object stored on
//! another host's node. When the driver is killed, or when its whole node freezes and is
//! declared dead, the other node frees the object (and releases the driver's leases there):
//! nothing would ever ask for it again. And a borrower on a third host waiting for an object
//! whose owner's node freezes gets `OwnerDied` once that node is declared dead, not a hang.

use ferry::prelude::*;
use ferry_testkit::{signal, Cluster, Hosts};
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[ferry::remote]
fn big(n: usize) -> Vec<u8> {
    vec![7; n]
}

#[ferry::remote]
fn forever() -> u64 {
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// Keeps refs it was given; `wait_value` gets the first (as a borrower).
#[ferry::actor]
#[derive(Default)]
pub struct Keeper {
    held: Vec<ObjectRef<u64>>,
}

#[ferry::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper::default()
    }
    pub fn hold(&mut self, refs: Vec<ObjectRef<u64>>) {
        self.held = refs;
    }
    pub fn wait_value(&self) -> String {
        match ferry::get_timeout(&self.held[0], Duration::from_secs(25)) {
            Ok(v) => format!("value {v}"),
            Err(e) => format!("error {e}"),
        }
    }
}

/// Borrows large objects it is given, for as long as it lives.
#[ferry::actor]
#[derive(Default)]
pub struct Holder {
    held: Vec<ObjectRef<Vec<u8>>>,
}

#[ferry::actor]
impl Holder {
    pub fn new() -> Self {
        Holder::default()
    }
    pub fn hold(&mut self, refs: Vec<ObjectRef<Vec<u8>>>) {
        self.held = refs;
    }
}

#[ferry::remote]
fn forward(refs: Vec<ObjectRef<Vec<u8>>>) {
    let holder = ferry::get_actor::<Holder>("holder").unwrap();
    ferry::get(&holder.hold(refs)).unwrap();
}

ferry_testkit::job!("FERRY_TEST_OWNER_JOB", owner_job);
ferry_testkit::job!("FERRY_TEST_LENDING_OWNER", lending_owner_job);
ferry_testkit::job!("FERRY_TEST_LENDER_JOB", lender_job);
ferry_testkit::job!("FERRY_TEST_WAITER_JOB", waiter_job);

/// Joins the node at `address`, puts an 8 MiB object, lends it to a holder actor on the host
/// with the `keep` resource, drops its own handle and waits.
fn lending_owner_job(address: &str) {
    ferry::init(ferry::Config::default().address(address).namespace("owners")).unwrap();
    let data = ferry::put(vec![1u8; 8 << 20]).unwrap();
    let _holder = Holder::options().name("holder").resource("keep", 1.0).remote().unwrap();
    // A task passes it on, so that this process never connects to the holder: only the
    // holder connects here (to register as a borrower).
    ferry::get_timeout(&forward::remote(vec![data.clone()]), T).unwrap();
    drop(data);
    println!("lent");
    std::thread::sleep(T * 2);
    std::process::exit(1);
}

/// Asks the keeper for the value and prints what it got.
fn waiter_job(address: &str) {
    ferry::init(ferry::Config::default().address(address).namespace("owners")).unwrap();
    let keeper = ferry::get_actor::<Keeper>("keeper").unwrap();
    let r = keeper.wait_value();
    println!("waiting");
    println!("{}", ferry::get_timeout(&r, T).unwrap_or_else(|e| format!("call failed: {e}")));
    std::process::exit(0);
}

/// Joins the node at `address`, gives a keeper actor on the host with the `keep` resource a
/// ref to a task that never ends, and waits to be frozen.
fn lender_job(address: &str) {
    ferry::init(ferry::Config::default().address(address).namespace("owners")).unwrap();
    let me = ferry::node_id().unwrap();
    let r = forever::options().scheduling_strategy(SchedulingStrategy::NodeAffinity { node: me, soft: false }).remote();
    let keeper = Keeper::options().name("keeper").detached().resource("keep", 1.0).remote().unwrap();
    ferry::get_timeout(&keeper.hold(vec![r]), T).unwrap();
    println!("held");
    std::thread::sleep(T * 2);
    std::process::exit(1);
}

/// Joins the node at `address`, stores an 8 MiB object on the node at `FERRY_TEST_OWNER_ON`,
/// says so, and waits to be killed.
fn owner_job(address: &str) {
    let on = std::env::var("FERRY_TEST_OWNER_ON").unwrap();
    ferry::init(ferry::Config::default().address(address).namespace("owners")).unwrap();
    let node = ferry::nodes().unwrap().into_iter().find(|n| n.addr == on).expect("the other node").node;
    let s = SchedulingStrategy::NodeAffinity { node, soft: false };
    let r = big::options().scheduling_strategy(s).remote(8 << 20);
    ferry::wait(std::slice::from_ref(&r), 1, Some(T)).unwrap();
    println!("stored");
    std::thread::sleep(T);
    std::process::exit(1);
}

/// The number of objects `ferry status` shows for the node at `addr`.
fn objects_on(hosts: &Hosts, cluster: &Cluster, addr: &str) -> Option<u64> {
    let text = cluster.status(hosts, env!("CARGO_BIN_EXE_ferry")).ok()?;
    let line = text.lines().find(|l| l.trim_start().starts_with("node ") && l.contains(&format!("at {addr}:")))?;
    let before = line.split(" object").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

fn wait_objects(hosts: &Hosts, cluster: &Cluster, addr: &str, want: u64, what: &str) -> Duration {
    let t = Instant::now();
    loop {
        if objects_on(hosts, cluster, addr) == Some(want) {
            return t.elapsed();
        }
        assert!(t.elapsed() < T, "{what}: node {addr} has {:?} objects", objects_on(hosts, cluster, addr));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three hosts of 1 CPU, the third with the resource `keep`; a node timeout of 1 s.
fn keep_cluster() -> (Hosts, Cluster) {
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let one = || vec!["--num-cpus".to_string(), "1".to_string()];
    let keep = vec!["--num-cpus".to_string(), "1".to_string(), "--resources".to_string(), "keep=1".to_string()];
    let env = [("FERRY_NODE_TIMEOUT_MS", "1000")];
    let cluster = Cluster::start_with(&hosts, env!("CARGO_BIN_EXE_ferry"), &[one(), one(), keep], &env, T).unwrap();
    (hosts, cluster)
}

/// Runs this binary on host `host` as a job with `env`, and returns it with its standard
/// output, once it printed `first`.
fn job_on(hosts: &Hosts, cluster: &Cluster, host: usize, env: &[(&str, &String)], first: &str) -> (Child, Lines) {
    let mut job = hosts
        .command(host, std::env::current_exe().unwrap())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("FERRY_TOKEN", &cluster.head.token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(job.stdout.take().unwrap()).lines();
    let line = out.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(line, first, "the job on host {host} did not say {first:?}");
    (job, out)
}

type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Starts the owner job on host 1 (joining that host's node), storing on host 2's node.
fn start_job(hosts: &Hosts, cluster: &Cluster) -> Child {
    let env =
        [("FERRY_TEST_OWNER_JOB", &cluster.members[0].address), ("FERRY_TEST_OWNER_ON", &cluster.members[1].address)];
    job_on(hosts, cluster, 1, &env, "stored").0
}

#[test]
fn a_dead_owners_objects_on_other_nodes_are_freed() {
    let (hosts, mut cluster) = keep_cluster();
    let far = cluster.members[1].address.clone();
    let far = far.rsplit_once(':').unwrap().0.to_string();

    // The owner process is killed: its link to the far node closes.
    let mut job = start_job(&hosts, &cluster);
    wait_objects(&hosts, &cluster, &far, 1, "the object stored");
    job.kill().unwrap();
    job.wait().unwrap();
    let took = wait_objects(&hosts, &cluster, &far, 0, "freed after its owner was killed");
    eprintln!("freed {took:?} after the owner was killed");

    // The owner's whole node freezes: its links stay open, but it is declared dead.
    let mut job = start_job(&hosts, &cluster);
    wait_objects(&hosts, &cluster, &far, 1, "the object stored again");
    let node = cluster.members[0].child.id();
    signal(job.id(), 19);
    signal(node, 19);
    let took = wait_objects(&hosts, &cluster, &far, 0, "freed after its owner's node was declared dead");
    eprintln!("freed {took:?} after the owner's node froze (timeout 1 s)");
    signal(node, 18);
    signal(job.id(), 18);
    job.kill().unwrap();
    job.wait().unwrap();
    let _ = cluster.members[0].child.kill();
    drop(cluster);
    hosts.tear_down().unwrap();
}

/// A borrower whose whole node freezes stops holding the object once that node is declared
/// dead: its owner frees it.

#[test]
fn an_object_lent_to_a_frozen_node_is_freed_when_it_is_declared_dead() {
    let (hosts, cluster) = keep_cluster();
    let (mut owner, _) =
        job_on(&hosts, &cluster, 1, &[("FERRY_TEST_LENDING_OWNER", &cluster.members[0].address)], "lent");
    let here = cluster.members[0].address.rsplit_once(':').unwrap().0.to_string();
    // Still stored: the holder borrows it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(objects_on(&hosts, &cluster, &here), Some(1));
    let node = cluster.members[1].child.id();
    let frozen: Vec<u32> = std::iter::once(node).chain(ferry_testkit::children_of(node)).collect();
    for p in &frozen {
        signal(*p, 19);
    }
    let took = wait_objects(&hosts, &cluster, &here, 0, "freed after its borrower's node was declared dead");
    eprintln!("freed {took:?} after the borrower's node froze (timeout 1 s)");
    for p in &frozen {
        signal(*p, 18);
    }
    let _ = owner.kill();
    let _ = owner.wait();
    drop(cluster);
    hosts.tear_down().unwrap();
}

#[test]
fn a_borrower_gets_owner_died_when_the_owners_node_is_declared_dead() {
    let (hosts, cluster) = keep_cluster();
    let (mut lender, _) =
        job_on(&hosts, &cluster, 1, &[("FERRY_TEST_LENDER_JOB", &cluster.members[0].address)], "held");
    let (mut waiter, mut out) =
        job_on(&hosts, &cluster, 0, &[("FERRY_TEST_WAITER_JOB", &cluster.head.address)], "waiting");
    std::thread::sleep(Duration::from_millis(300));
    let node = cluster.members[0].child.id();
    let t = Instant::now();
    signal(lender.id(), 19);
    signal(node, 19);
    let line = out.next().and_then(|l| l.ok()).unwrap_or_default();
    let took = t.elapsed();
    eprintln!("the borrower heard {took:?} after the owner's node froze (timeout 1 s): {}", line.trim());
    signal(node, 18);
    signal(lender.id(), 18);
    let _ = lender.kill();
    let _ = lender.wait();
    let _ = waiter.wait();
    assert!(line.starts_with("error") && line.contains("owner"), "{line}");
    assert!(took < Duration::from_secs(10), "not prompt: {took:?}");
    drop(cluster);
    hosts.tear_down().unwrap();
}
