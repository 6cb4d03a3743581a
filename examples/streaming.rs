//! Streaming returns: a producer reads a large input in chunks and yields each as it is
//! read; the driver hands every chunk to a task as soon as it arrives, so reading and
//! processing overlap, and at most four chunks wait in the store at any time
//! (back-pressure). Ray's equivalent is a generator task (`num_returns="streaming"`).
//!
//! Run: `cargo run --release -p ferry --example streaming`

use std::time::Instant;

const CHUNK: usize = 1 << 20;

/// Reads `n` chunks of the input (here made up, as if read from a file or a socket), each
/// yielded as soon as it is read: each becomes an object in the store, and a ref to it
/// reaches the caller at once.
#[ferry::remote(streaming)]
fn read_chunks(n: u32) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(chunk)
}

/// The input's chunk `i` (a simple deterministic pattern).
fn chunk(i: u32) -> Vec<u8> {
    (0..CHUNK).map(|j| ((j as u64 * 31 + i as u64 * 7) % 251) as u8).collect()
}

/// Processes one chunk (its byte sum and how many bytes are zero).
#[ferry::remote]
fn summarize(data: ferry::Bytes) -> (u64, u64) {
    (data.iter().map(|b| *b as u64).sum(), data.iter().filter(|b| **b == 0).count() as u64)
}

pub fn main() -> Result<(), ferry::Error> {
    ferry::init(ferry::Config::default())?;
    let n = 32;
    let t = Instant::now();
    // Four chunks ahead of what was taken, at most.
    let stream = read_chunks::options().backpressure(4).remote(n);
    let mut summaries = Vec::new();
    let mut first = None;
    for chunk in stream {
        // Each chunk is processed while the next ones are read.
        first.get_or_insert_with(|| t.elapsed());
        summaries.push(summarize::remote(chunk));
    }
    let (sum, zeros) = ferry::get_all(&summaries)?.into_iter().fold((0, 0), |(s, z), (a, b)| (s + a, z + b));
    let (want_sum, want_zeros) = (0..n).map(chunk).fold((0u64, 0u64), |(s, z), c| {
        (s + c.iter().map(|b| *b as u64).sum::<u64>(), z + c.iter().filter(|b| **b == 0).count() as u64)
    });
    assert_eq!((sum, zeros), (want_sum, want_zeros), "every chunk arrived once, in order");
    println!(
        "{n} chunks of 1 MiB: first in hand after {:.1?}, all processed in {:.1?}; byte sum {sum}, {zeros} zeros",
        first.unwrap_or_default(),
        t.elapsed()
    );
    Ok(())
}
