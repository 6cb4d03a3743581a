//! Two real daemons (a head and a member joined to it over TCP on loopback) and raw protocol
//! clients: an object sealed on the head is pulled by the member for four clients at once in
//! one transfer, arrives byte for byte, and its copy is freed with the original. Pulls that
//! cannot succeed end in errors, never in a wait.

use ferry_node::{NodeHandle, NodeOptions};
use ferry_proto::conn::Addr;
use ferry_proto::msg::{FromNode, ProcKind, StorePlace, ToNode};
use ferry_proto::{NodeId, ObjectId, TaskId, WorkerId};
use std::time::{Duration, Instant};

mod common;

use common::{call, register, Client, T};

fn options(tag: &str, head: Option<String>) -> NodeOptions {
    let mut o = common::options("transfer", tag);
    o.tcp = Some("127.0.0.1:0".into());
    o.head_timeout = head.is_none().then_some(Duration::from_secs(5));
    o.join = head.map(|h| (h, Duration::from_millis(50)));
    o
}

fn client(node: &NodeHandle) -> Client {
    register(&Addr::Tcp(node.tcp_addr().unwrap().to_string()), ProcKind::Tool)
}

fn pull(c: &mut Client, object: ObjectId, from: NodeId) -> Option<ferry_proto::msg::PullError> {
    call(c, ToNode::Pull { req: 7, object, from }, |m| match m {
        FromNode::Pulled { req: 7, error } => Some(error),
        _ => None,
    })
}

/// Waits (bounded) until the member on `m` sees both nodes alive.
fn until_both_alive(m: &mut Client) {
    let end = Instant::now() + T;
    while call(m, ToNode::ClusterStatus { req: 1 }, |r| match r {
        FromNode::Cluster { nodes, .. } => Some(nodes.iter().filter(|n| n.alive).count()),
        _ => None,
    }) != 2
    {
        assert!(Instant::now() < end, "the member never saw the head");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bytes of `id` in the store at `store`, of the node `c` is connected to: pinned, read
/// through the arena or from its own file, and let go; and whether it was in the arena.
fn read_stored(c: &mut Client, store: &std::path::Path, id: ObjectId) -> (Vec<u8>, bool) {
    let place = call(c, ToNode::Pin { req: 3, object: id }, |r| match r {
        FromNode::Pinned { req: 3, place } => Some(place),
        _ => None,
    });
    match place {
        Some(StorePlace::Arena { at, size }) => {
            let a = ferry_store::Arena::open(store).unwrap();
            let v = a.hold(at, size, None).unwrap().bytes().to_vec();
            c.0.send(&ToNode::Unpin { at: vec![at] }).unwrap();
            (v, true)
        }
        Some(StorePlace::File) => (std::fs::read(store.join(id.to_string())).unwrap(), false),
        None => panic!("{id:?} is not in the store"),
    }
}

/// Writes `bytes` into the head's store as `id` and seals it.
fn put_on_head(h: &mut Client, id: ObjectId, bytes: &[u8]) {
    let store = common::dir("transfer", "head").join("store");
    std::fs::write(store.join(id.to_string()), bytes).unwrap();
    let sealed = call(h, ToNode::Seal { req: 2, object: id, size: bytes.len() as u64, at: None }, |r| match r {
        FromNode::Sealed { error, .. } => Some(error),
        _ => None,
    });
    assert_eq!(sealed, None);
}

#[test]
fn a_member_pulls_an_object_once_for_concurrent_readers_and_frees_the_copy() {
    ferry_testkit::own_process!();
    // The first transfer in this process breaks off midway (a failpoint), once.
    let marker = std::env::temp_dir().join(format!("ferry-transfer-test-{}-broke", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    std::env::set_var("FERRY_FAILPOINTS", format!("transfer-midway=break-once:{}", marker.display()));
    let head = ferry_node::start(options("head", None)).unwrap();
    let member = ferry_node::start(options("member", Some(head.tcp_addr().unwrap().to_string()))).unwrap();
    let end = Instant::now() + T;
    let mut m = client(&member);
    loop {
        let n = call(&mut m, ToNode::ClusterStatus { req: 1 }, |r| match r {
            FromNode::Cluster { nodes, .. } => Some(nodes.iter().filter(|n| n.alive).count()),
            _ => None,
        });
        if n == 2 {
            break;
        }
        assert!(Instant::now() < end, "the member never saw the head");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A transfer that breaks off midway is an error for the pull, not a wait, and nothing
    // half-copied is left in the member's store.
    let mut h = client(&head);
    let broken = ObjectId { task: TaskId { owner: WorkerId(42), seq: 9 }, index: 0 };
    put_on_head(&mut h, broken, &vec![5u8; 4 << 20]);
    let err = pull(&mut m, broken, head.id()).expect("a transfer broken midway is an error").to_string();
    assert!(err.contains("broke off"), "{err}");
    assert!(marker.exists());
    assert_eq!(member.stats().store_objects, 0);
    let out_before = head.stats().transfers_out;

    // An object on the head: 16 MiB written into its store, then sealed.
    let id = ObjectId { task: TaskId { owner: WorkerId(42), seq: 1 }, index: 0 };
    let bytes: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    put_on_head(&mut h, id, &bytes);

    // Four readers on the member at once.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let mut c = client(&member);
            let b = barrier.clone();
            let from = head.id();
            std::thread::spawn(move || {
                b.wait();
                pull(&mut c, id, from)
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), None, "every concurrent pull succeeds");
    }
    let mstore = std::env::temp_dir().join(format!("ferry-transfer-test-{}-member/store", std::process::id()));
    let (copy, in_arena) = read_stored(&mut m, &mstore, id);
    assert!(copy == bytes, "the copy is byte for byte");
    assert!(in_arena, "the copy went into the member's arena");
    assert_eq!(head.stats().transfers_out - out_before, 1, "four concurrent pulls, one transfer");
    assert_eq!((member.stats().transfers_in, member.stats().transfer_bytes_in), (1, bytes.len() as u64));
    // A pull of what is already here costs nothing.
    assert_eq!(pull(&mut m, id, head.id()), None);
    assert_eq!(head.stats().transfers_out - out_before, 1);

    // Freeing the original frees the copy.
    h.0.send(&ToNode::Free { objects: vec![id] }).unwrap();
    while member.stats().store_objects != 0 {
        assert!(Instant::now() < end + T, "the member's copy outlived the original");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Pulls that cannot succeed say why.
    let missing = pull(&mut m, ObjectId { index: 9, ..id }, head.id()).expect("an error").to_string();
    assert!(missing.contains("does not hold"), "{missing}");
    let nowhere = pull(&mut m, id, NodeId(1)).expect("an error").to_string();
    assert!(nowhere.contains("not in the cluster"), "{nowhere}");
    drop(member);
    drop(head);
    let _ = std::fs::remove_file(&marker);
    for tag in ["head", "member"] {
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("ferry-transfer-test-{}-{tag}", std::process::id())),
        );
    }
}

/// Under memory pressure a member drops its copy of another node's object (a reader pulls it
/// again) rather than spilling its own objects to disk.
#[test]
fn a_copy_is_dropped_before_a_primary_is_spilled() {
    ferry_testkit::own_process!();
    let head = ferry_node::start(options("head", None)).unwrap();
    let mut mo = options("member", Some(head.tcp_addr().unwrap().to_string()));
    mo.store_capacity = 24 << 20;
    mo.spill_dir = Some(std::env::temp_dir().join(format!("ferry-transfer-test-{}-spill", std::process::id())));
    let member = ferry_node::start(mo).unwrap();
    let mut m = client(&member);
    until_both_alive(&mut m);
    let mut h = client(&head);
    let remote = ObjectId { task: TaskId { owner: WorkerId(42), seq: 1 }, index: 0 };
    put_on_head(&mut h, remote, &vec![1u8; 16 << 20]);
    assert_eq!(pull(&mut m, remote, head.id()), None);
    assert_eq!(member.stats().store_objects, 1);

    // 16 MiB of the member's own: with the copy, 32 MiB in a 24 MiB store.
    let own = ObjectId { task: TaskId { owner: WorkerId(43), seq: 1 }, index: 0 };
    let mstore = std::env::temp_dir().join(format!("ferry-transfer-test-{}-member/store", std::process::id()));
    std::fs::write(mstore.join(own.to_string()), vec![2u8; 16 << 20]).unwrap();
    let sealed = call(&mut m, ToNode::Seal { req: 2, object: own, size: 16 << 20, at: None }, |r| match r {
        FromNode::Sealed { error, .. } => Some(error),
        _ => None,
    });
    assert_eq!(sealed, None);
    let s = member.stats();
    assert_eq!((s.store_objects, s.spilled_objects, s.store_used_bytes), (1, 0, 16 << 20), "the copy made room");
    assert!(!mstore.join(remote.to_string()).exists());
    // Read again: pulled again (and this time its own object is spilled to make room).
    assert_eq!(pull(&mut m, remote, head.id()), None);
    assert_eq!(member.stats().transfers_in, 2);
    drop(member);
    drop(head);
    for tag in ["head", "member", "spill"] {
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("ferry-transfer-test-{}-{tag}", std::process::id())),
        );
    }
}

/// With `FERRY_TEST_SMALL_STORE=<dir>` (a 48 MiB tmpfs mounted there), this test binary runs
/// the check below before `main` and exits: 0 if it held.
#[used]
#[link_section = ".init_array"]
static SMALL_STORE: extern "C" fn() = small_store_check;

extern "C" fn small_store_check() {
    let Some(dir) = std::env::var_os("FERRY_TEST_SMALL_STORE") else { return };
    let dir = std::path::PathBuf::from(dir);
    // Before `main`, std has not yet set SIGPIPE to be ignored: a write to a closed socket
    // must be an error here, as it is in any program, not the end of the process.
    extern "C" {
        fn signal(sig: i32, handler: usize) -> usize;
    }
    // SAFETY: setting SIGPIPE (13) to SIG_IGN (1).
    unsafe { signal(13, 1) };
    let head = ferry_node::start(options("head", None)).unwrap();
    let mut mo = options("member", Some(head.tcp_addr().unwrap().to_string()));
    // Its store on the small filesystem, with a capacity the filesystem cannot hold: the
    // filesystem filling is the pressure.
    mo.store_dir = dir.join("store");
    mo.store_capacity = 1 << 30;
    mo.spill_dir = Some(std::env::temp_dir().join(format!("ferry-transfer-test-{}-spill", std::process::id())));
    let member = ferry_node::start(mo).unwrap();
    let mut m = client(&member);
    until_both_alive(&mut m);
    // 30 MiB of the member's own, then a 30 MiB copy: 60 MiB for a 48 MiB filesystem.
    let own = ObjectId { task: TaskId { owner: WorkerId(43), seq: 1 }, index: 0 };
    std::fs::write(dir.join("store").join(own.to_string()), vec![2u8; 30 << 20]).unwrap();
    let sealed = call(&mut m, ToNode::Seal { req: 2, object: own, size: 30 << 20, at: None }, |r| match r {
        FromNode::Sealed { error, .. } => Some(error),
        _ => None,
    });
    assert_eq!(sealed, None);
    let mut h = client(&head);
    let remote = ObjectId { task: TaskId { owner: WorkerId(42), seq: 1 }, index: 0 };
    let bytes: Vec<u8> = (0..30 << 20).map(|i: u32| (i % 253) as u8).collect();
    put_on_head(&mut h, remote, &bytes);
    assert_eq!(pull(&mut m, remote, head.id()), None, "room is made for the copy");
    assert!(read_stored(&mut m, &dir.join("store"), remote).0 == bytes);
    assert_eq!(member.stats().spilled_objects, 1, "its own object was spilled to make room");
    // One larger than the whole filesystem: the store is full, the object is not lost.
    let huge = ObjectId { task: TaskId { owner: WorkerId(42), seq: 2 }, index: 0 };
    put_on_head(&mut h, huge, &vec![3u8; 60 << 20]);
    let e = pull(&mut m, huge, head.id()).expect("an error");
    assert!(matches!(e, ferry_proto::msg::PullError::StoreFull(_)), "{e}");
    println!("small store ok: {e}");
    drop(member);
    drop(head);
    for tag in ["head", "member", "spill"] {
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("ferry-transfer-test-{}-{tag}", std::process::id())),
        );
    }
    std::process::exit(0);
}

/// The same class as the writers' `ENOSPC` (issue 12, item 8), for copies between nodes: a
/// member whose store's filesystem is full spills to make room for a copy, and one that cannot
/// fit at all is "object store full", not a lost object (whose owner would make it again).
#[test]
fn a_copy_into_a_full_store_filesystem_makes_room_or_says_the_store_is_full() {
    ferry_testkit::own_process!();
    let mnt = std::env::temp_dir().join(format!("ferry-transfer-small-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = format!("mount -t tmpfs -o size=48m,mode=700 tmpfs '{}' && exec '{}'", mnt.display(), exe.display());
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("FERRY_TEST_SMALL_STORE", &mnt)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&mnt);
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && so.contains("small store ok"), "{so}{se}");
}
