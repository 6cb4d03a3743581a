// An actor is created by `Type::remote(..)`, which runs its `new`: it must have one.

#[ferry::actor]
struct Lonely;

#[ferry::actor]
impl Lonely {
    fn ping(&self) -> u8 {
        1
    }
}

fn main() {}
