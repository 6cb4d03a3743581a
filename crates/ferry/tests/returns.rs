//! Multiple returns, as Ray's `num_returns` (test_basic's `test_multiple_return_values`,
//! test_reference_counting's per-object freeing): a task's tuple becomes one object per
//! element and a vector one per item when the caller asks; each ref is stored, got and freed
//! on its own; a count other than the one asked for fails every ref with what to do.

mod common;

use common::*;
use ferry::prelude::*;

const MB: usize = 1 << 20;

#[ferry::remote(num_returns = 3)]
fn three(x: i64) -> (i64, String, Vec<u8>) {
    (x + 1, format!("x is {x}"), vec![x as u8; 3])
}

/// Two large values, each stored in the shared store as an object of its own.
#[ferry::remote(num_returns = 2)]
fn two_big(a: u8, b: u8) -> (Vec<u8>, Vec<u8>) {
    (vec![a; 2 * MB], vec![b; 3 * MB])
}

#[ferry::remote]
fn squares(n: u32) -> Vec<u64> {
    (0..n as u64).map(|i| i * i).collect()
}

#[ferry::remote]
fn sum(v: u64, w: u64) -> u64 {
    v + w
}

#[ferry::remote]
fn plus(a: i64, b: i64) -> i64 {
    a + b
}

#[ferry::actor]
struct Pairs {
    n: i64,
}

#[ferry::actor]
impl Pairs {
    fn new() -> Self {
        Pairs { n: 0 }
    }
    fn upto(&self, n: u32) -> Vec<u32> {
        (0..n).collect()
    }
    #[ferry::method(num_returns = 2)]
    fn next_pair(&mut self) -> (i64, String) {
        self.n += 1;
        (self.n, format!("pair {}", self.n))
    }
}

#[test]
fn a_tuple_becomes_one_typed_ref_per_element() {
    ferry_testkit::own_process!();
    cluster();
    let (a, b, c): (ObjectRef<i64>, ObjectRef<String>, ObjectRef<Vec<u8>>) = three::remote(41);
    assert_eq!(ferry::get_timeout(&a, T).unwrap(), 42);
    assert_eq!(ferry::get_timeout(&b, T).unwrap(), "x is 41");
    assert_eq!(ferry::get_timeout(&c, T).unwrap(), vec![41u8; 3]);
    // Distinct objects of one task, usable as arguments like any ref.
    assert_ne!(a.id(), c.id());
    assert_eq!(a.id().task, c.id().task);
    let (d, ..) = three::options().num_cpus(1.0).remote(1);
    assert_eq!(ferry::get_timeout(&plus::remote(&a, &d), T).unwrap(), 44);
}

#[test]
fn each_return_is_stored_and_freed_on_its_own() {
    ferry_testkit::own_process!();
    cluster();
    let (a, b) = two_big::remote(1, 2);
    ferry::wait(std::slice::from_ref(&a), 1, Some(T)).unwrap();
    ferry::wait(std::slice::from_ref(&b), 1, Some(T)).unwrap();
    let sizes = || {
        let m = ferry::memory_summary().unwrap();
        let of = |id| m.objects.iter().find(|o| o.object == id).map(|o| (o.size, o.location));
        (of(a_id(&m, 2 * MB)), of(a_id(&m, 3 * MB)))
    };
    fn a_id(m: &ferry::MemorySummary, size: usize) -> ferry::ObjectId {
        m.objects
            .iter()
            .find(|o| o.size as usize >= size && (o.size as usize) < size + 4096)
            .map(|o| o.object)
            .unwrap_or_default()
    }
    let (first, second) = sizes();
    assert!(matches!(first, Some((_, ferry::Location::InStore))), "{first:?}");
    assert!(matches!(second, Some((_, ferry::Location::InStore))), "{second:?}");
    let bid = b.id();
    drop(a);
    // The first goes; the second stays, readable.
    eventually("the dropped return is freed", T, || {
        let m = ferry::memory_summary().unwrap();
        m.objects.iter().all(|o| o.object.index != 0 || o.object.task != bid.task)
    });
    assert_eq!(ferry::get_bytes(&b).unwrap()[..], vec![2u8; 3 * MB][..]);
    assert!(ferry::memory_summary().unwrap().objects.iter().any(|o| o.object == bid));
    drop(b);
    eventually("both are freed", T, || ferry::memory_summary().unwrap().objects.is_empty());
}

#[test]
fn a_vector_is_split_into_as_many_refs_as_the_caller_asks() {
    ferry_testkit::own_process!();
    cluster();
    // By default the vector is one object.
    let whole: ObjectRef<Vec<u64>> = squares::remote(4);
    assert_eq!(ferry::get_timeout(&whole, T).unwrap(), vec![0, 1, 4, 9]);
    // Split: one ref per item.
    let refs: Vec<ObjectRef<u64>> = squares::options().num_returns(5).remote(5);
    assert_eq!(refs.len(), 5);
    assert_eq!(ferry::get_all(&refs).unwrap(), vec![0, 1, 4, 9, 16]);
    assert_eq!(ferry::get_timeout(&sum::remote(&refs[2], &refs[4]), T).unwrap(), 20);
    // A count other than the one asked for: every ref says so, and what to do.
    let wrong = squares::options().num_returns(3).remote(2);
    for r in &wrong {
        let e = ferry::get_timeout(r, T).expect_err("two items for three refs").to_string();
        assert!(e.contains("num_returns = 3") && e.contains("returned 2 values"), "{e}");
    }
    // Zero items for zero refs is no task result to wait for, but the task still runs.
    assert!(squares::options().num_returns(0).remote(0).is_empty());
}

#[test]
fn an_actor_method_returns_several_refs_in_call_order() {
    ferry_testkit::own_process!();
    cluster();
    let p = Pairs::remote().unwrap();
    let (n1, s1) = p.next_pair();
    let (n2, s2) = p.next_pair();
    assert_eq!(ferry::get_timeout(&n2, T).unwrap(), 2);
    assert_eq!(ferry::get_timeout(&s1, T).unwrap(), "pair 1");
    assert_eq!(ferry::get_timeout(&n1, T).unwrap(), 1);
    assert_eq!(ferry::get_timeout(&s2, T).unwrap(), "pair 2");
}

/// Ray's `actor.method.options(num_returns=n)`: a method returning a `Vec`, split per call.
#[test]
fn an_actor_methods_vector_is_split_when_the_call_asks() {
    ferry_testkit::own_process!();
    cluster();
    let p = Pairs::remote().unwrap();
    let whole: ObjectRef<Vec<u32>> = p.upto(3);
    assert_eq!(ferry::get_timeout(&whole, T).unwrap(), vec![0, 1, 2]);
    let parts: Vec<ObjectRef<u32>> = p.method_options().num_returns(3).upto(3);
    assert_eq!(ferry::get_all(&parts).unwrap(), vec![0, 1, 2]);
    for r in p.method_options().num_returns(2).upto(3) {
        let e = ferry::get_timeout(&r, T).expect_err("three items for two refs").to_string();
        assert!(e.contains("num_returns = 2") && e.contains("returned 3 values"), "{e}");
    }
}
