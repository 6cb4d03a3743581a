//! First-class refs: refs inside values, passed unresolved, returned from tasks, kept in
//! actors; the object lives exactly as long as some process holds it.

mod common;

use common::*;
use ferry::prelude::*;

const MB: usize = 1 << 20;

#[ferry::actor]
struct Keeper {
    held: Vec<ObjectRef<Vec<u8>>>,
}

#[ferry::actor]
impl Keeper {
    fn new() -> Self {
        Keeper { held: Vec::new() }
    }
    fn keep(&mut self, r: ObjectRef<Vec<u8>>) -> usize {
        self.held.push(r);
        self.held.len()
    }
    fn sum(&self) -> u64 {
        self.held.iter().map(|r| ferry::get(r).expect("a kept ref").iter().map(|b| *b as u64).sum::<u64>()).sum()
    }
    fn pass_to(&self, other: ActorHandle<Keeper>) -> usize {
        for r in &self.held {
            ferry::get(&other.keep(r.clone())).expect("the other keeper");
        }
        self.held.len()
    }
    fn clear(&mut self) -> usize {
        self.held.clear();
        0
    }
}

fn store_objects() -> u64 {
    ferry::node_stats().expect("stats").store_objects
}

fn nothing_left() -> bool {
    let m = ferry::memory_summary().expect("summary");
    m.objects.is_empty() && m.pending_tasks == 0 && m.unreachable.is_empty()
}

#[test]
fn an_actor_keeps_a_ref_after_its_owner_dropped_its_own() {
    ferry_testkit::own_process!();
    cluster();
    let x = ferry::put(vec![3u8; 2 * MB]).unwrap();
    let k = Keeper::remote().unwrap();
    assert_eq!(ferry::get_timeout(&k.keep(x.clone()), T).unwrap(), 1);
    drop(x);
    // The actor's borrow alone keeps the object.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(store_objects(), 1);
    assert_eq!(ferry::get_timeout(&k.sum(), T).unwrap(), 3 * 2 * MB as u64);
    let m = ferry::memory_summary().unwrap();
    let o = m.objects.iter().find(|o| o.size >= 2 * MB as u64).expect("listed");
    assert_eq!((o.location, o.borrowers, o.local_refs), (ferry::Location::InStore, 1, 1), "{m}");
    ferry::get_timeout(&k.clear(), T).unwrap();
    eventually("the object is freed once the actor drops it", T, || store_objects() == 0);
    eventually("no metadata is left", T, nothing_left);
}

#[test]
fn a_chain_of_borrowers_keeps_the_object_until_the_last_lets_go() {
    ferry_testkit::own_process!();
    cluster();
    let x = ferry::put(vec![1u8; MB]).unwrap();
    let a = Keeper::remote().unwrap();
    let b = Keeper::remote().unwrap();
    ferry::get_timeout(&a.keep(&x), T).unwrap();
    // a passes its borrowed ref to b: b borrows from a borrower.
    assert_eq!(ferry::get_timeout(&a.pass_to(b.clone()), T).unwrap(), 1);
    drop(x);
    ferry::get_timeout(&a.clear(), T).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(store_objects(), 1, "{}", ferry::memory_summary().unwrap());
    assert_eq!(ferry::get_timeout(&b.sum(), T).unwrap(), MB as u64);
    ferry::get_timeout(&b.clear(), T).unwrap();
    eventually("freed after the last borrower drops it", T, || store_objects() == 0);
    eventually("no metadata is left", T, nothing_left);
}

#[ferry::remote]
fn relay(r: ObjectRef<Vec<u8>>, hops: u32) -> u64 {
    if hops == 0 {
        ferry::get(&r).unwrap().iter().map(|b| *b as u64).sum()
    } else {
        // Passed on unresolved: the next task borrows from a borrower.
        ferry::get(&relay::remote(r, hops - 1)).unwrap()
    }
}

#[test]
fn a_ref_passed_through_nested_tasks_stays_alive_after_the_owner_drops_it() {
    ferry_testkit::own_process!();
    cluster();
    let x = ferry::put(vec![2u8; MB]).unwrap();
    let out = relay::remote(x.clone(), 3);
    drop(x);
    assert_eq!(ferry::get_timeout(&out, T).unwrap(), 2 * MB as u64);
    drop(out);
    eventually("freed after the chain", T, || store_objects() == 0);
    eventually("no metadata is left", T, nothing_left);
}

#[ferry::remote]
fn make_refs(n: u64) -> Vec<ObjectRef<u64>> {
    (0..n).map(|i| ferry::put(i * 10).unwrap()).collect()
}

#[ferry::remote]
fn make_big(n: u64) -> Vec<ObjectRef<Vec<u8>>> {
    (0..n).map(|i| ferry::put(vec![i as u8; MB]).unwrap()).collect()
}

#[test]
fn refs_returned_inside_a_value_outlive_the_task_and_the_value() {
    ferry_testkit::own_process!();
    cluster();
    // Owned by the worker that ran the task; the outer value is dropped at once.
    let refs = ferry::get_timeout(&make_refs::remote(5), T).unwrap();
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(ferry::get_timeout(r, T).unwrap(), i as u64 * 10);
    }
    let big = ferry::get_timeout(&make_big::remote(3), T).unwrap();
    assert_eq!(store_objects(), 3);
    for (i, r) in big.iter().enumerate() {
        let v = ferry::get_bytes(r).unwrap();
        assert_eq!((v.len(), v[0]), (MB, i as u8));
    }
    drop(refs);
    drop(big);
    eventually("the worker's objects are freed when the driver drops them", T, || store_objects() == 0);
    eventually("no metadata is left", T, nothing_left);
}

#[test]
fn refs_inside_a_put_value_live_as_long_as_the_value() {
    ferry_testkit::own_process!();
    cluster();
    let inner = ferry::put(vec![5u8; MB]).unwrap();
    let outer = ferry::put(vec![inner.clone(), inner.clone()]).unwrap();
    drop(inner);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(store_objects(), 1);
    let got: Vec<ObjectRef<Vec<u8>>> = ferry::get(&outer).unwrap();
    assert_eq!(ferry::get_bytes(&got[1]).unwrap()[7], 5);
    drop(outer);
    // The decoded handles still hold it.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(store_objects(), 1);
    drop(got);
    eventually("freed with the last handle", T, || store_objects() == 0);
    eventually("no metadata is left", T, nothing_left);
}

#[test]
fn a_borrower_that_dies_releases_its_borrow() {
    ferry_testkit::own_process!();
    cluster();
    let x = ferry::put(vec![9u8; MB]).unwrap();
    let k = Keeper::remote().unwrap();
    ferry::get_timeout(&k.keep(&x), T).unwrap();
    drop(x);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(store_objects(), 1);
    ferry::kill(&k).unwrap();
    eventually("the dead borrower's borrow ends", T, || store_objects() == 0);
    eventually("no metadata is left", T, nothing_left);
}

#[ferry::remote]
fn swap(refs: Vec<ObjectRef<u64>>) -> Vec<ObjectRef<u64>> {
    refs.into_iter().rev().collect()
}

#[test]
fn a_hundred_thousand_tasks_passing_refs_leave_nothing_behind() {
    ferry_testkit::own_process!();
    cluster();
    let base: Vec<ObjectRef<u64>> = (0..10u64).map(|i| ferry::put(i).unwrap()).collect();
    let mut checked = 0;
    for round in 0..10 {
        let outs: Vec<_> = (0..10_000usize)
            .map(|i| swap::remote(vec![base[i % 10].clone(), base[(i + round) % 10].clone()]))
            .collect();
        let got = ferry::get_all(&outs).unwrap();
        for (i, pair) in got.iter().enumerate().step_by(997) {
            assert_eq!(ferry::get(&pair[0]).unwrap(), ((i + round) % 10) as u64);
            assert_eq!(ferry::get(&pair[1]).unwrap(), (i % 10) as u64);
            checked += 1;
        }
    }
    assert!(checked > 50);
    drop(base);
    eventually("no object and no task metadata is left in any process", T, nothing_left);
}

#[ferry::remote]
fn refs_and_pid() -> (u32, Vec<ObjectRef<u64>>, ObjectRef<Vec<u8>>) {
    let big = ferry::put(vec![7u8; 4 << 20]).unwrap();
    (std::process::id(), (0..3u64).map(|i| ferry::put(i).unwrap()).collect(), big)
}

#[test]
fn a_get_of_a_ref_whose_owner_died_fails_with_owner_died() {
    ferry_testkit::own_process!();
    cluster();
    let (pid, refs, big) = ferry::get_timeout(&refs_and_pid::remote(), T).unwrap();
    assert_eq!(ferry::node_stats().unwrap().store_objects, 1);
    // The owner (the worker that put them) dies before anyone asked for the values.
    sigkill(pid);
    eventually("the worker is gone", T, || !pid_alive(pid));
    // What it stored goes with it: nobody can ask its owner for it any more.
    eventually("its stored object is freed", T, || ferry::node_stats().unwrap().store_objects == 0);
    assert!(matches!(ferry::get_timeout(&big, T), Err(ferry::Error::OwnerDied { .. })));
    for r in &refs {
        match ferry::get_timeout(r, T) {
            Err(ferry::Error::OwnerDied { object, .. }) => assert_eq!(object, r.id()),
            other => panic!("expected OwnerDied, got {other:?}"),
        }
    }
    drop(refs);
    drop(big);
    eventually("no metadata is left", T, nothing_left);
}
