//! `ferry-bench groups`: Ray's `placement group create/removal` microbenchmark
//! (`ray/_private/ray_perf.py`), same shape: 100 groups of one bundle of `custom: 0.001` on a
//! node with `custom: 100`, each created, waited for, then all removed; the figure is groups
//! per second (`placement_group_create_removal_per_s`), the median of
//! `FERRY_BENCH_GROUP_ROUNDS` (default 20) rounds.

use crate::{emit, info, median};
use ferry::{GroupStrategy, Shape};
use std::time::{Duration, Instant};

const NUM_PGS: usize = 100;

pub fn group() {
    ferry::init(ferry::Config::default().num_cpus(2).resource("custom", 100.0)).unwrap();
    let rounds = std::env::var("FERRY_BENCH_GROUP_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let bundle = || vec![Shape::with_resources(0.0, &[("custom".to_string(), 0.001)])];
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let pgs: Vec<_> =
            (0..NUM_PGS).map(|_| ferry::placement_group(bundle(), GroupStrategy::Pack).unwrap()).collect();
        for pg in &pgs {
            pg.wait(Duration::from_secs(30)).unwrap();
        }
        for pg in &pgs {
            pg.remove().unwrap();
        }
        rates.push(NUM_PGS as f64 / t.elapsed().as_secs_f64());
    }
    emit("placement_group_create_removal_per_s", median(&mut rates), "groups/s");
    info(&format!("{rounds} rounds of {NUM_PGS} groups; min {:.0}/s", rates.iter().cloned().fold(f64::MAX, f64::min)));
    ferry::shutdown();
}
