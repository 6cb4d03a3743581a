// `num_returns = n` splits a tuple of n values: anything else is refused, saying so.

#[ferry::remote(num_returns = 2)]
fn one_value() -> u64 {
    1
}

#[ferry::remote(num_returns = 3)]
fn two_values() -> (u64, u64) {
    (1, 2)
}

fn main() {}
