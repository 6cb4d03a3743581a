//! The quickstart: typed remote tasks, nested tasks, refs as arguments, a large object in
//! the shared-memory store, refs inside values, and `wait` — on an embedded local cluster.
//!
//! Run: `cargo run --release -p ferry --example quickstart`

use ferry::prelude::*;

#[ferry::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Tasks submit tasks: each level owns the refs it creates.
#[ferry::remote(num_cpus = 1)]
fn tree(depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let (l, r) = (tree::remote(depth - 1), tree::remote(depth - 1));
    ferry::get(&l).unwrap() + ferry::get(&r).unwrap()
}

#[ferry::remote]
fn checksum(data: Vec<u8>) -> u64 {
    data.iter().map(|b| *b as u64).sum()
}

/// Refs are values: this task receives refs unresolved, inside a `Vec`, and reads them.
#[ferry::remote]
fn total(parts: Vec<ObjectRef<i64>>) -> i64 {
    ferry::get_all(&parts).unwrap().into_iter().sum()
}

#[ferry::main]
fn main() -> ferry::Result<()> {
    let t = std::time::Instant::now();
    ferry::init(ferry::Config::default())?; // embedded local cluster, one worker per core
    println!("cluster up in {:?}", t.elapsed());

    let a = add::remote(1, 2); // ObjectRef<i64>, returns at once
    let b = add::remote(&a, 10); // a ref as argument: resolved before the task runs
    assert_eq!(ferry::get(&b)?, 13);
    println!("add(add(1, 2), 10) = {}", ferry::get(&b)?);

    let t = std::time::Instant::now();
    let leaves = ferry::get(&tree::remote(6))?;
    println!("tree(6) counted {leaves} leaves with {} nested tasks in {:?}", 2 * leaves - 1, t.elapsed());

    let big = ferry::put(vec![7u8; 100 << 20])?; // large: into the shared-memory store
    let view = ferry::get_bytes(&big)?; // zero-copy view of the stored bytes
    assert_eq!(view.len(), 100 << 20);
    let sum = ferry::get(&checksum::remote(&big))?; // the task maps the same pages
    println!("100 MiB object: view of {} bytes, checksum {sum} computed by a worker", view.len());

    let parts: Vec<ObjectRef<i64>> = (1..=4).map(|i| add::remote(i, i)).collect();
    let sum = ferry::get(&total::remote(parts))?; // the task borrows the four refs
    println!("total of refs passed inside a Vec: {sum}");
    drop(view);
    drop(big);
    let m = ferry::memory_summary()?; // every object in the cluster, and why it is alive
    println!("memory_summary: {} objects alive, {} bytes in the store", m.objects.len(), m.store_used_bytes);

    let (ready, pending) = ferry::wait(&[a, b], 1, Some(Duration::from_millis(10)))?;
    println!("wait: {} ready, {} pending", ready.len(), pending.len());
    Ok(())
}
