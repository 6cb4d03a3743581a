// An option the macro does not know is refused with the list of those it knows.

#[ferry::remote(num_gpus = 1)]
fn work() -> u8 {
    1
}

fn main() {}
