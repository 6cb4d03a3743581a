// A priority the scheduler does not know is refused at compile time, naming the ones it does.

#[ferry::remote(priority = "urgent")]
fn f() {}

fn main() {}
