//! A parameter server: one actor holds a model's weights; worker tasks pull the weights,
//! compute a gradient on their own data, and push updates, all at once. The model is a
//! linear fit `y = w · x`; every worker sees noisy samples of the same true weights.
//!
//! Run: `cargo run --release -p ferry --example parameter_server`

use ferry::prelude::*;

const DIM: usize = 8;
const TRUE_W: [f64; DIM] = [1.0, -2.0, 0.5, 3.0, 0.0, -1.5, 2.5, 0.25];

#[ferry::actor]
pub struct ParamServer {
    weights: Vec<f64>,
    version: u64,
    lr: f64,
}

#[ferry::actor]
impl ParamServer {
    pub fn new(dim: usize, lr: f64) -> Self {
        ParamServer { weights: vec![0.0; dim], version: 0, lr }
    }
    /// Applies one worker's gradient; returns the new version.
    pub fn push(&mut self, grad: Vec<f64>) -> u64 {
        for (w, g) in self.weights.iter_mut().zip(&grad) {
            *w -= self.lr * g;
        }
        self.version += 1;
        self.version
    }
    pub fn pull(&self) -> (u64, Vec<f64>) {
        (self.version, self.weights.clone())
    }
}

/// Deterministic pseudo-random samples, so every run computes the same thing.
fn samples(seed: u64, n: usize) -> Vec<([f64; DIM], f64)> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 2000) as f64 / 1000.0 - 1.0
    };
    (0..n)
        .map(|_| {
            let mut v = [0.0; DIM];
            v.iter_mut().for_each(|e| *e = next());
            let y: f64 = v.iter().zip(TRUE_W).map(|(a, b)| a * b).sum::<f64>() + 0.01 * next();
            (v, y)
        })
        .collect()
}

/// A worker: `steps` rounds of pull, gradient on its own data, push.
#[ferry::remote]
fn train(ps: ActorHandle<ParamServer>, worker: u64, steps: u32) -> u32 {
    let data = samples(worker, 64);
    for _ in 0..steps {
        let (_, w) = ferry::get(&ps.pull()).unwrap();
        let mut grad = vec![0.0; DIM];
        for (x, y) in &data {
            let err = x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() - y;
            for (g, xi) in grad.iter_mut().zip(x) {
                *g += 2.0 * err * xi / data.len() as f64;
            }
        }
        ferry::get(&ps.push(grad)).unwrap();
    }
    steps
}

/// Mean squared distance of the weights from the true ones.
pub fn distance(w: &[f64]) -> f64 {
    w.iter().zip(TRUE_W).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / DIM as f64
}

#[ferry::main]
fn main() -> ferry::Result<()> {
    ferry::init(ferry::Config::default())?;
    let ps = ParamServer::remote(DIM, 0.1)?;
    let workers: Vec<_> = (0..4).map(|i| train::remote(ps.clone(), i, 100)).collect();
    let rounds: u32 = ferry::get_all(&workers)?.iter().sum();
    let (version, w) = ferry::get(&ps.pull())?;
    println!("{rounds} updates from 4 workers; version {version}; distance to the true weights {:.2e}", distance(&w));
    assert_eq!(version, rounds as u64);
    assert!(distance(&w) < 1e-3, "the model did not converge");
    Ok(())
}
