// A streaming function must return an iterator: each value it yields becomes a ref.
#[ferry::remote(streaming)]
fn numbers(n: u32) -> Vec<u32> {
    (0..n).collect()
}

fn main() {}
