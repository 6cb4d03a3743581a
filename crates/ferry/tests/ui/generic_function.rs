// Each remote function needs one registered id: it cannot be generic.

#[ferry::remote]
fn identity<T>(x: T) -> T {
    x
}

fn main() {}
