//! The daemon's actor book (`actors.rs`) through its protocol, on a real daemon: names are
//! one directory and die with their actor; an actor runs on a worker the daemon starts,
//! is restarted within its budget when that worker dies, and stops with its last handle or
//! its creator; a failing constructor is not restarted; an actor no node can hold is told so.
//!
//! The workers are real processes: this test binary, run again by the daemon as its worker
//! program (through a script that names the test), which then speaks the worker's side of the
//! actor protocol (`Register`, `BecomeActor` → `ActorReady`) and nothing more.

mod common;

use common::{call, register, Client, T};
use ferry_node::NodeHandle;
use ferry_proto::conn::{connect, Addr};
use ferry_proto::msg::{ActorId, ActorLocation, ActorSpec, FromNode, Placement, ProcKind, Shape, ToNode};
use ferry_proto::{NodeId, WorkerId};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// In a worker started by the daemon, plays the worker and returns true.
fn worker_mode() -> bool {
    use ferry_node::worker_env::*;
    if std::env::var(WORKER).as_deref() != Ok("1") {
        return false;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set for workers"));
    let me = WorkerId(var(WORKER_ID).parse().expect("a worker id"));
    let node = Addr::Unix(PathBuf::from(var(NODE_SOCKET)));
    let (conn, mut rx, _) = connect(&node, &var(TOKEN), me, 64 << 20).expect("the daemon accepts its worker");
    let listen = Addr::Unix(PathBuf::from(var(SESSION_DIR)).join(format!("fake-worker-{}.sock", me.0)));
    let register =
        ToNode::Register { kind: ProcKind::Worker, pid: std::process::id(), listen, tcp: None, exe: None, node: None };
    conn.send(&register).unwrap();
    // Until the daemon closes the link (or kills this process).
    while let Ok(m) = rx.read::<FromNode>() {
        if let FromNode::BecomeActor { actor, spec, .. } = m {
            let error = (spec.class == "Failing").then(|| "the constructor panicked".to_string());
            conn.send(&ToNode::ActorReady { actor, error }).unwrap();
        }
    }
    true
}

/// A node (in a directory named by `tag`) whose worker program runs the test `test` of this
/// binary in worker mode.
fn node(tag: &str, test: &str) -> NodeHandle {
    let mut o = common::options("actors", tag);
    let script = common::dir("actors", tag).join("worker.sh");
    let exe = std::env::current_exe().unwrap();
    let body = format!("#!/bin/sh\nexec '{}' '{test}' --exact --nocapture --test-threads=1\n", exe.display());
    std::fs::write(&script, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    o.worker_program = Some(script);
    o.pool.max_workers = 2;
    ferry_node::start(o).unwrap()
}

fn spec(class: &str, cpus: f64, max_restarts: u32) -> ActorSpec {
    ActorSpec {
        class: class.into(),
        args: Vec::new(),
        shape: Shape::cpus(cpus),
        name: None,
        detached: false,
        max_restarts,
        max_concurrency: 1,
        depth: 1,
        placement: Placement::Default,
        job: WorkerId(7),
        namespace: None,
        priority: Default::default(),
    }
}

fn new_actor() -> ActorId {
    ActorId::new(NodeId(1), ferry_proto::ids::random_u64())
}

/// `CreateActor`, answered once the actor runs (`None`) or cannot (`Some(why)`).
fn create(c: &mut Client, actor: ActorId, spec: ActorSpec) -> Option<String> {
    call(c, ToNode::CreateActor { req: 11, actor, spec }, |m| match m {
        FromNode::ActorCreated { req: 11, error, .. } => Some(error),
        _ => None,
    })
}

fn resolve(c: &mut Client, actor: ActorId) -> ActorLocation {
    call(c, ToNode::ResolveActor { req: 12, actor, stale: None }, |m| match m {
        FromNode::ActorState { req: 12, location, .. } => Some(location),
        _ => None,
    })
}

fn ack(c: &mut Client, msg: ToNode) -> Option<String> {
    call(c, msg, |m| match m {
        FromNode::Ack { error, .. } => Some(error),
        _ => None,
    })
}

fn named(c: &mut Client, name: &str) -> Option<(ActorId, String)> {
    call(c, ToNode::GetNamedActor { req: 13, name: name.into() }, |m| match m {
        FromNode::NamedActor { req: 13, found } => Some(found),
        _ => None,
    })
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !ok() {
        assert!(Instant::now() < end, "{what}: not within {T:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn dead_reason(l: ActorLocation) -> String {
    match l {
        ActorLocation::Dead { reason } => reason,
        alive => panic!("expected a dead actor, found {alive:?}"),
    }
}

#[test]
fn names_are_one_directory_and_die_with_their_actor() {
    if worker_mode() {
        return;
    }
    let node = node("names", "names_are_one_directory_and_die_with_their_actor");
    let (mut a, mut b) = (register(&node.addr(), ProcKind::Driver), register(&node.addr(), ProcKind::Driver));
    let (first, second) = (new_actor(), new_actor());
    let reserve = |actor| ToNode::ReserveName { req: 1, name: "counter".into(), actor, class: "Counter".into() };
    assert_eq!(ack(&mut a, reserve(first)), None);
    // Taken: the second is told by whom and what to do.
    let refused = ack(&mut b, reserve(second)).expect("a taken name is refused");
    assert!(refused.contains("\"counter\" already exists") && refused.contains("ferry::get_actor"), "{refused}");
    assert_eq!(named(&mut b, "counter"), Some((first, "Counter".into())));
    // Unknown actors are said to be so, never waited for.
    let unknown = new_actor();
    assert_eq!(ack(&mut b, ToNode::HoldActor { req: 2, actor: unknown }).as_deref(), Some("no such actor"));
    assert_eq!(dead_reason(resolve(&mut b, unknown)), "no such actor");

    // The process that reserved it exits: the actor (never created) is gone, and its name free.
    drop(a);
    eventually("the name is freed with its creator", || named(&mut b, "counter").is_none());
    assert!(dead_reason(resolve(&mut b, first)).contains("the process that created it exited"));
    assert_eq!(ack(&mut b, reserve(second)), None);

    // Killed between reserving the name and creating it: creating it says so, and the name
    // is free again.
    b.0.send(&ToNode::KillActor { actor: second }).unwrap();
    let why = create(&mut b, second, spec("Counter", 1.0, 0)).expect("a killed actor is not created");
    assert!(why.contains("killed with ferry::kill"), "{why}");
    assert_eq!(named(&mut b, "counter"), None);
    assert_eq!(node.stats().actors, 0);
    node.shutdown();
}

#[test]
fn an_actor_restarts_within_its_budget_and_stops_with_its_last_handle() {
    if worker_mode() {
        return;
    }
    let node = node("life", "an_actor_restarts_within_its_budget_and_stops_with_its_last_handle");
    let (mut owner, mut other) = (register(&node.addr(), ProcKind::Driver), register(&node.addr(), ProcKind::Driver));
    let actor = new_actor();
    assert_eq!(create(&mut owner, actor, spec("Counter", 1.0, 1)), None, "it runs on a worker the daemon started");
    let first = match resolve(&mut other, actor) {
        ActorLocation::Alive { worker, incarnation: 1, .. } => worker,
        l => panic!("expected the first incarnation alive, found {l:?}"),
    };
    assert_eq!(node.stats().actors, 1);
    assert_eq!(ack(&mut other, ToNode::HoldActor { req: 3, actor }), None);

    // Its worker dies: it is restarted (its budget is one), and its holders are told.
    let pids = node.worker_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    ferry_testkit::signal(pids[0], 9);
    let died = |c: &mut Client| {
        let end = Instant::now() + T;
        loop {
            assert!(Instant::now() < end, "no ActorDied");
            if let Ok(FromNode::ActorDied { actor: a, restarting, reason }) = c.1.read::<FromNode>() {
                assert_eq!(a, actor);
                return (restarting, reason);
            }
        }
    };
    let (restarting, reason) = died(&mut other);
    assert!(restarting, "{reason}");
    assert!(died(&mut owner).0);
    let mut second = None;
    eventually("the second incarnation runs", || match resolve(&mut other, actor) {
        ActorLocation::Alive { worker, incarnation: 2, .. } => {
            second = Some(worker);
            true
        }
        _ => false,
    });
    assert_ne!(second, Some(first), "on a new worker");

    // Its budget spent, the next death is final. (The first worker is reaped first: the
    // only one left runs the actor.)
    eventually("one worker left", || node.worker_pids().len() == 1);
    ferry_testkit::signal(node.worker_pids()[0], 9);
    let (restarting, reason) = died(&mut other);
    assert!(!restarting && reason.contains("its process died"), "{reason}");

    // Another actor: the owner's hold and another's; it stops with the last of them.
    let actor = new_actor();
    assert_eq!(create(&mut owner, actor, spec("Counter", 1.0, 0)), None);
    assert_eq!(ack(&mut other, ToNode::HoldActor { req: 4, actor }), None);
    owner.0.send(&ToNode::ReleaseActor { actor, count: 1 }).unwrap();
    assert!(matches!(resolve(&mut owner, actor), ActorLocation::Alive { .. }), "still held by the other");
    other.0.send(&ToNode::ReleaseActor { actor, count: 1 }).unwrap();
    // Asked on the same connection as the release, so after it.
    let reason = dead_reason(resolve(&mut other, actor));
    assert!(reason.contains("every handle to it was dropped"), "{reason}");
    eventually("its worker is stopped", || node.worker_pids().is_empty());
    assert_eq!(node.stats().actors, 0);

    // A third, whose creator exits: it shares its creator's fate.
    let actor = new_actor();
    assert_eq!(create(&mut owner, actor, spec("Counter", 1.0, 3)), None);
    drop(owner);
    eventually("it stops with its creator", || matches!(resolve(&mut other, actor), ActorLocation::Dead { .. }));
    eventually("and its worker too", || node.worker_pids().is_empty());
    node.shutdown();
}

#[test]
fn a_failing_constructor_is_final_and_an_actor_no_node_can_hold_is_told_why() {
    if worker_mode() {
        return;
    }
    let node = node("refused", "a_failing_constructor_is_final_and_an_actor_no_node_can_hold_is_told_why");
    let mut c = register(&node.addr(), ProcKind::Driver);
    // Restarts would not help a constructor that fails: it is not restarted.
    let why = create(&mut c, new_actor(), spec("Failing", 1.0, 5)).expect("its constructor failed");
    assert!(why.contains("its constructor failed: the constructor panicked"), "{why}");
    // 64 CPUs on a node of one, in no cluster: never, and it says what it needed.
    let why = create(&mut c, new_actor(), spec("Counter", 64.0, 0)).expect("it cannot be placed");
    assert!(why.contains("can never be scheduled") && why.contains("CPU"), "{why}");
    assert_eq!(node.stats().actors, 0);
    node.shutdown();
}
