// `#[ferry::method]` has a meaning only inside an `#[ferry::actor]` impl block.

struct Plain;

impl Plain {
    #[ferry::method(num_returns = 2)]
    fn pair(&self) -> (u8, u8) {
        (1, 2)
    }
}

fn main() {}
