// A remote function called with an argument of the wrong type: the error names the argument.

#[ferry::remote]
fn scale(factor: i64, label: String) -> String {
    format!("{label}{factor}")
}

fn main() {
    let _ = scale::remote("three", "x".to_string());
}
