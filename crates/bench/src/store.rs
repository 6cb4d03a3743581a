//! The object store's figures: puts and gets of 1 KiB to 100 MiB beside a plain `memcpy` of the
//! same run, passing by reference, and puts into a fragmented arena.

use super::*;

pub(crate) fn group_objects() {
    // The machine's own limit, in this run: one thread copying 100 MiB between buffers
    // already faulted in (what a put into reused pages must do at least).
    let src = make_array(100 * MIB);
    let mut dst = vec![1u8; 100 * MIB];
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let memcpy = (100 * MIB) as f64 / best / 1e9;
    emit("memcpy_100MiB_GB_per_s", memcpy, "GB/s");
    drop((src, dst));
    let mut put100 = 0.0;
    for (label, nbytes, iters) in [("1KiB", KIB, 2000), ("1MiB", MIB, 300), ("100MiB", 100 * MIB, 10)] {
        let arr = make_array(nbytes);
        for _ in 0..iters.min(20) {
            let r = ferry::put_from(&arr).unwrap();
            ferry::get_bytes(&r).unwrap();
        }
        let (mut put_ns, mut get_ns, mut getcopy_ns) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iters {
            // As ray.put(arr): the caller keeps its array, which is encoded into the store.
            let t = Instant::now();
            let r = ferry::put_from(&arr).unwrap();
            let t2 = Instant::now();
            let view = ferry::get_bytes(&r).unwrap();
            let t3 = Instant::now();
            put_ns.push((t2 - t).as_nanos() as u64);
            get_ns.push((t3 - t2).as_nanos() as u64);
            if nbytes >= MIB {
                let t4 = Instant::now();
                let c = view.to_vec();
                getcopy_ns.push(ns(t4) + (t3 - t2).as_nanos() as u64);
                assert_eq!(c.len(), nbytes);
            }
            assert_eq!(view.len(), nbytes);
        }
        let put_s = put_ns.iter().sum::<u64>() as f64 / 1e9;
        let get_s = get_ns.iter().sum::<u64>() as f64 / 1e9;
        emit(&format!("put_{label}_ops_per_s"), iters as f64 / put_s, "ops/s");
        emit(&format!("get_{label}_ops_per_s"), iters as f64 / get_s, "ops/s");
        emit(&format!("put_{label}_GB_per_s"), (iters * nbytes) as f64 / put_s / 1e9, "GB/s");
        if nbytes == 100 * MIB {
            put100 = (iters * nbytes) as f64 / put_s / 1e9;
        }
        emit(&format!("get_{label}_GB_per_s"), (iters * nbytes) as f64 / get_s / 1e9, "GB/s");
        let mut p: Vec<f64> = put_ns.iter().map(|n| *n as f64 / 1e3).collect();
        let mut g: Vec<f64> = get_ns.iter().map(|n| *n as f64 / 1e3).collect();
        emit(&format!("put_{label}_median_us"), median(&mut p), "us");
        emit(&format!("get_{label}_median_us"), median(&mut g), "us");
        if !getcopy_ns.is_empty() {
            let s = getcopy_ns.iter().sum::<u64>() as f64 / 1e9;
            emit(&format!("get_plus_copy_{label}_GB_per_s"), (iters * nbytes) as f64 / s / 1e9, "GB/s");
        }
    }
    info("get_* uses ferry::get_bytes, a zero-copy view of the shared-memory store (as Ray's numpy get); get_plus_copy_* adds a copy");
    emit("put_100MiB_share_of_memcpy", put100 / memcpy, "ratio");
    // `put` by value: the caller's array is freed inside the call (its pages unmapped).
    let arr = make_array(100 * MIB);
    let mut ts = Vec::new();
    for _ in 0..10 {
        let v = arr.clone();
        let t = Instant::now();
        drop(ferry::put(v).unwrap());
        ts.push(t.elapsed().as_secs_f64());
    }
    emit("put_100MiB_by_value_GB_per_s", (100 * MIB) as f64 / median(&mut ts) / 1e9, "GB/s");
    drop(arr);

    let nbytes = 100 * MIB;
    let src = produce::remote(nbytes);
    ferry::wait(std::slice::from_ref(&src), 1, None).unwrap();
    assert_eq!(ferry::get(&length::remote(&src)).unwrap(), nbytes);
    let mut ts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(ferry::get(&length::remote(&src)).unwrap(), nbytes);
        ts.push(t.elapsed().as_secs_f64());
    }
    emit("pass_by_ref_100MiB_consume_s", median(&mut ts), "s");
    drop(src);
    let mut ts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(ferry::get(&length::remote(produce::remote(nbytes))).unwrap(), nbytes);
        ts.push(t.elapsed().as_secs_f64());
    }
    emit("pass_by_ref_100MiB_produce_and_consume_s", median(&mut ts), "s");
    let mut ts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(ferry::get(&length::remote(produce_vec::remote(nbytes))).unwrap(), nbytes);
        ts.push(t.elapsed().as_secs_f64());
    }
    emit("pass_by_ref_100MiB_produce_vec_and_consume_s", median(&mut ts), "s");
    let dref = ferry::put(make_array(nbytes)).unwrap();
    ferry::get(&length::remote(&dref)).unwrap();
    let mut ts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        ferry::get(&length::remote(&dref)).unwrap();
        ts.push(t.elapsed().as_secs_f64());
    }
    emit("pass_by_ref_100MiB_driver_put_consume_s", median(&mut ts), "s");
}

/// Puts into a fragmented arena, in a child with a 256 MiB store: objects of 2 MiB and
/// 1 MiB alternate until the store is nearly full, the 2 MiB ones are freed, and 64 MiB
/// objects are put: no free extent holds one, though the free bytes do. They go to files of
/// their own (as every object did before the arena), the store spills what it must, and every
/// put succeeds.
pub(crate) fn group_fragmentation() {
    const BIG: usize = 64 * MIB;
    let put_big = |n: usize| {
        let arr = make_array(BIG);
        let mut ts = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let r = ferry::put_from(&arr).unwrap();
            ts.push(t.elapsed().as_secs_f64());
            drop(r);
        }
        BIG as f64 / median(&mut ts) / 1e9
    };
    let whole = put_big(10);
    emit("put_64MiB_unfragmented_GB_per_s", whole, "GB/s");
    let cap = ferry::node_stats().unwrap().store_capacity_bytes as usize;
    let mut small = Vec::new();
    let mut large = Vec::new();
    while (small.len() + 2 * large.len() + 3) * MIB < cap * 9 / 10 {
        large.push(ferry::put_from(&make_array(2 * MIB)).unwrap());
        small.push(ferry::put_from(&make_array(MIB)).unwrap());
    }
    drop(large);
    std::thread::sleep(Duration::from_millis(100));
    let s = ferry::node_stats().unwrap();
    emit("fragmented_free_extents", s.arena_free_extents as f64, "extents");
    emit("fragmented_largest_free_MiB", (s.arena_largest_free_bytes >> 20) as f64, "MiB");
    emit("fragmented_free_MiB", (s.arena_free_bytes >> 20) as f64, "MiB");
    let before = s.store_fallback_files;
    let frag = put_big(10);
    let s = ferry::node_stats().unwrap();
    emit("put_64MiB_fragmented_GB_per_s", frag, "GB/s");
    emit("put_64MiB_fragmented_share_of_unfragmented", frag / whole, "ratio");
    emit("fragmented_fallback_files", (s.store_fallback_files - before) as f64, "files");
    drop(small);
}
