//! Cancellation: several tasks search for the same thing in different places; the first
//! answer wins and the others are cancelled. Searches check `ferry::is_cancelled()` and stop
//! early; one that never checks is ended with `force` (its worker is replaced).
//!
//! Run: `cargo run --release -p ferry --example cancellation`

use std::time::{Duration, Instant};

/// Looks for a number whose square ends in `suffix`, starting at `from`; checks now and then
/// whether it was cancelled and stops if so (`None`).
#[ferry::remote]
fn search(from: u64, suffix: u64) -> Option<u64> {
    let modulus = 10u64.pow(suffix.to_string().len() as u32);
    for (i, n) in (from..).enumerate() {
        if i % 10_000 == 0 && ferry::is_cancelled() {
            return None;
        }
        if n.wrapping_mul(n) % modulus == suffix {
            // Some searches take long to check theirs (10 ms per million of `from`): the
            // fast one wins, and the others, told they are cancelled, stop checking.
            for _ in 0..from / 1_000_000 * 100 {
                if ferry::is_cancelled() {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            return Some(n);
        }
    }
    None
}

/// A task that never looks at `is_cancelled`.
#[ferry::remote]
fn stubborn() -> u64 {
    std::thread::sleep(Duration::from_secs(3600));
    0
}

pub fn main() -> Result<(), ferry::Error> {
    ferry::init(ferry::Config::default())?;
    let t = Instant::now();
    let searches: Vec<_> = [0u64, 1_000_000, 2_000_000, 3_000_000].iter().map(|f| search::remote(*f, 2025)).collect();
    let (first, others) = ferry::wait(&searches, 1, None)?;
    let found = ferry::get(&first[0])?;
    for r in &others {
        ferry::cancel(r)?;
    }
    for r in &others {
        assert!(matches!(ferry::get(r), Err(ferry::Error::Cancelled { .. })));
    }
    println!("found {found:?} in {:.0?}; the {} other searches were cancelled", t.elapsed(), others.len());

    let s = stubborn::remote();
    std::thread::sleep(Duration::from_millis(100));
    ferry::cancel_with(&s, ferry::CancelOptions::default().force(true))?;
    assert!(matches!(ferry::get(&s), Err(ferry::Error::Cancelled { .. })));
    println!("a task that ignores cancellation was ended with force; the cluster goes on");
    Ok(())
}
