// Only a function returning a `Vec<T>` can have its value split by the caller
// (`options().num_returns(n)`): on any other, the method does not exist.

#[ferry::remote]
fn one_value() -> u64 {
    1
}

fn main() {
    let _refs = one_value::options().num_returns(2).remote();
}
