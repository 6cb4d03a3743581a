use ferry::prelude::*;
#[ferry::remote]
fn tree(depth: u32) -> u64 {
    if depth == 0 { return 1; }
    let (l, r) = (tree::remote(depth - 1), tree::remote(depth - 1));
    ferry::get(&l).unwrap() + ferry::get(&r).unwrap()
}
#[ferry::remote]
fn noop() {}
#[ferry::remote]
fn one() -> u64 { 1 }
#[ferry::remote]
fn fanout(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(|_| one::remote()).collect();
    ferry::get_all(&refs).unwrap().iter().sum()
}
#[ferry::main]
fn main() -> ferry::Result<()> {
    ferry::init(ferry::Config::default())?;
    std::thread::sleep(Duration::from_millis(300));
    for d in [6u32, 8, 10, 10] {
        let t = std::time::Instant::now();
        let n = ferry::get(&tree::remote(d))?;
        println!("tree({d}) = {n} in {:?}; {:?}", t.elapsed(), ferry::node_stats()?.workers);
    }
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let n = ferry::get(&fanout::remote(1000))?;
        println!("fanout {n} in {:?}", t.elapsed());
    }
    let t = std::time::Instant::now();
    let refs: Vec<_> = (0..20000).map(|_| noop::remote()).collect();
    ferry::get_all(&refs)?;
    println!("throughput {:.0}/s", 20000.0 / t.elapsed().as_secs_f64());
    drop(refs);
    let t = std::time::Instant::now();
    for _ in 0..1000 { ferry::get(&noop::remote())?; }
    println!("roundtrip {:?}", t.elapsed() / 1000);
    Ok(())
}
