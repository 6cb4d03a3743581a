//! Resource shapes: what a task or actor needs, and what a node has.

use serde::{Deserialize, Serialize};

/// Resource amounts in thousandths (so that `0.5` CPU is exact), sorted by name.
/// A task's shape is also its scheduling class: tasks of one shape share leases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct Shape(
    // A few resources, as real shapes have: the fuzzers generate shapes inside every task
    // spec, and a hundred random names each would make them slow without finding more.
    #[cfg_attr(
        feature = "arbitrary",
        proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<(String, u64)>(), 0..4)")
    )]
    pub Vec<(String, u64)>,
);

/// Name of the CPU resource.
pub const CPU: &str = "CPU";
/// Name of the memory resource, counted in bytes: a node has as much as its memory less its
/// object store; a task reserves some with `.memory(bytes)`.
pub const MEMORY: &str = "memory";

impl Shape {
    /// A shape of `cpus` CPUs and nothing else.
    pub fn cpus(cpus: f64) -> Shape {
        let mut s = Shape::default();
        s.set(CPU, cpus);
        s
    }

    /// A shape of `cpus` CPUs plus custom `resources` (later amounts of a name win).
    pub fn with_resources(cpus: f64, resources: &[(String, f64)]) -> Shape {
        let mut s = Shape::cpus(cpus);
        for (n, a) in resources {
            s.set(n, *a);
        }
        s
    }

    /// Sets `name` to `amount` (in whole units; stored in thousandths). Zero removes it.
    pub fn set(&mut self, name: &str, amount: f64) {
        let milli = (amount.max(0.0) * 1000.0).round() as u64;
        match self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) if milli == 0 => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = milli,
            Err(_) if milli == 0 => {}
            Err(i) => self.0.insert(i, (name.to_string(), milli)),
        }
    }

    /// Amount of `name` in thousandths.
    pub fn get_milli(&self, name: &str) -> u64 {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or(0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}: {}", *v as f64 / 1000.0)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_set_keeps_sorted_and_drops_zero() {
        let mut s = Shape::cpus(1.0);
        s.set("GPU", 0.5);
        s.set("A", 2.0);
        assert_eq!(s.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["A", "CPU", "GPU"]);
        assert_eq!(s.get_milli("GPU"), 500);
        s.set("A", 0.0);
        assert_eq!(s.0.len(), 2);
        assert_eq!(s.to_string(), "{CPU: 1, GPU: 0.5}");
    }
}
