// An actor method called with an argument of the wrong type: the error names the argument.

#[ferry::actor]
struct Counter(u64);

#[ferry::actor]
impl Counter {
    fn new() -> Self {
        Counter(0)
    }
    fn add(&mut self, amount: u64) -> u64 {
        self.0 += amount;
        self.0
    }
}

fn main() {
    let c = Counter::remote().unwrap();
    let _ = c.add(vec![1u8]);
}
