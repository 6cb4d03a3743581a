//! `ferry::free`, as Ray's `free` is tested (test_basic's `test_free_objects*`): a value goes
//! from the store at once while its refs stay; a later `get` fails with `ObjectFreed`, saying
//! who freed it; a pending result's value is dropped when it comes; a borrower's `free` is
//! carried out by the owner.

mod common;

use common::*;
use ferry::prelude::*;

const MB: usize = 1 << 20;

#[ferry::remote]
fn slow_big(ms: u64) -> Vec<u8> {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    vec![1; 4 * MB]
}

/// Frees a ref it was lent (a borrower's free goes to the owner); says who it is.
#[ferry::remote]
fn free_it(r: Vec<ObjectRef<Vec<u8>>>) -> ferry::WorkerId {
    ferry::free(&r).unwrap();
    ferry::runtime_context().unwrap().worker_id
}

fn store_objects() -> u64 {
    ferry::node_stats().unwrap().store_objects
}

#[test]
fn a_freed_value_leaves_the_store_at_once_and_its_get_says_who_freed_it() {
    ferry_testkit::own_process!();
    cluster();
    let me = ferry::runtime_context().unwrap().worker_id;
    let keep = ferry::put(vec![3u8; 2 * MB]).unwrap();
    let gone = ferry::put(vec![7u8; 2 * MB]).unwrap();
    let small = ferry::put(5u64).unwrap();
    assert_eq!(store_objects(), 2);
    ferry::free(std::slice::from_ref(&gone)).unwrap();
    ferry::free(std::slice::from_ref(&small)).unwrap();
    eventually("the freed value leaves the store", T, || store_objects() == 1);
    for e in [ferry::get_timeout(&gone, T).map(|_| ()), ferry::get_timeout(&small, T).map(|_| ())] {
        match e {
            Err(ferry::Error::ObjectFreed { by, .. }) => assert_eq!(by, me),
            other => panic!("expected ObjectFreed, got {other:?}"),
        }
    }
    let msg = ferry::get_timeout(&gone, T).unwrap_err().to_string();
    assert!(msg.contains("freed with ferry::free") && msg.contains("gone for good"), "{msg}");
    // Others are untouched.
    assert_eq!(ferry::get_bytes(&keep).unwrap().len(), 2 * MB);
    drop((gone, small, keep));
    eventually("the store empties", T, || store_objects() == 0);
}

#[test]
fn a_pending_result_freed_is_dropped_when_it_comes() {
    ferry_testkit::own_process!();
    cluster();
    let r = slow_big::remote(300);
    ferry::free(std::slice::from_ref(&r)).unwrap();
    assert!(matches!(ferry::get_timeout(&r, T), Err(ferry::Error::ObjectFreed { .. })));
    // The task finishes and stores its value; that value is deleted, not kept.
    std::thread::sleep(std::time::Duration::from_millis(500));
    eventually("nothing stays in the store", T, || store_objects() == 0);
}

#[test]
fn a_borrower_frees_through_the_owner() {
    ferry_testkit::own_process!();
    cluster();
    let r = ferry::put(vec![9u8; 2 * MB]).unwrap();
    let by = ferry::get_timeout(&free_it::remote(vec![r.clone()]), T).unwrap();
    eventually("the owner freed it", T, || store_objects() == 0);
    match ferry::get_timeout(&r, T) {
        Err(ferry::Error::ObjectFreed { by: who, .. }) => assert_eq!(who, by, "the borrower freed it"),
        other => panic!("expected ObjectFreed, got {other:?}"),
    }
}
