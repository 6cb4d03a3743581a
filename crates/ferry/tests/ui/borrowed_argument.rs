// Arguments cross process boundaries: a remote function cannot borrow them.

#[ferry::remote]
fn length(s: &str) -> usize {
    s.len()
}

fn main() {}
