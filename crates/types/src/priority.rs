//! How urgent a task or actor is (issue 16; Ray has none, ray#52865). Every queue serves
//! higher priorities first, and a node takes CPUs from best-effort work at once for
//! real-time work (ARCHITECTURE "Priorities and preemption").

use serde::{Deserialize, Serialize};

/// A task's or actor's priority. Ordered: `BestEffort < Normal < RealTime`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum Priority {
    /// Runs on what other work leaves: a node suspends it (its CPUs lent) whenever real-time
    /// work needs them, and it goes on where it stopped once they are free again.
    BestEffort,
    /// Every task and actor unless told otherwise: never suspended, served after real-time.
    #[default]
    Normal,
    /// Served first at every queue; takes CPUs from best-effort work at once.
    RealTime,
}

impl Priority {
    /// Its name, as options and the CLI write it.
    pub fn name(self) -> &'static str {
        match self {
            Priority::BestEffort => "best_effort",
            Priority::Normal => "normal",
            Priority::RealTime => "real_time",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Priority, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "best_effort" | "be" | "low" => Ok(Priority::BestEffort),
            "normal" | "default" => Ok(Priority::Normal),
            "real_time" | "realtime" | "rt" | "high" => Ok(Priority::RealTime),
            _ => Err(format!("{s:?} is not a priority: real_time, normal or best_effort")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_order_and_parse() {
        assert!(Priority::BestEffort < Priority::Normal && Priority::Normal < Priority::RealTime);
        for p in [Priority::BestEffort, Priority::Normal, Priority::RealTime] {
            assert_eq!(p.name().parse::<Priority>(), Ok(p));
        }
        assert!("urgent".parse::<Priority>().unwrap_err().contains("real_time, normal or best_effort"));
    }
}
