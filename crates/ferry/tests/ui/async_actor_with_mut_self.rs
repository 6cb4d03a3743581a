// An async actor's calls interleave on one thread: its methods take &self.

#[ferry::actor]
struct Cache(Vec<u8>);

#[ferry::actor]
impl Cache {
    fn new() -> Self {
        Cache(Vec::new())
    }
    async fn fill(&mut self, n: u8) {
        self.0.push(n);
    }
}

fn main() {}
