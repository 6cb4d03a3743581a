//! Memory pressure: each node watches its memory and, past a threshold, preempts leases to
//! free it before the kernel's OOM killer picks a process (which may be the node itself, or
//! a driver; ray#20495, #29664).
//!
//! Three scopes are measured, and the fullest one counts:
//! - the host (`/proc/meminfo`: total less available);
//! - the node's cgroup, when it has a memory limit (`memory.current` of `memory.max`, cgroup
//!   v2), as in a container;
//! - a limit given to the node (`FERRY_MEMORY_LIMIT_BYTES`), against the private memory
//!   (`RssAnon`) of its workers: several nodes sharing one host each keep to their part.
//!
//! The victim is chosen by the scheduler ([`ferry_sched::Scheduler::preempt_for_memory`]):
//! the most recently granted best-effort lease first. One victim at a time: the next is
//! chosen only once the last one is gone and memory is measured again.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the node watches, and when it acts.
#[derive(Clone, Debug)]
pub struct Watch {
    /// A limit on the node's workers' private memory, in bytes (`FERRY_MEMORY_LIMIT_BYTES`).
    pub limit: Option<u64>,
    /// The share of a scope's memory in use past which a lease is preempted
    /// (`FERRY_MEMORY_USAGE_THRESHOLD`, default 0.95 as Ray's).
    pub threshold: f64,
    /// How often memory is measured (`FERRY_MEMORY_MONITOR_MS`, default 250; 0 turns it off).
    pub every: Duration,
}

impl Watch {
    /// The defaults, with the environment's overrides.
    pub fn from_env() -> Watch {
        use ferry_types::defaults::env;
        Watch {
            limit: env::<u64>("FERRY_MEMORY_LIMIT_BYTES").filter(|b| *b > 0),
            threshold: env::<f64>("FERRY_MEMORY_USAGE_THRESHOLD").filter(|t| *t > 0.0 && *t <= 1.0).unwrap_or(0.95),
            every: Duration::from_millis(env("FERRY_MEMORY_MONITOR_MS").unwrap_or(250)),
        }
    }

    /// Never acts (for tests of other things).
    pub fn off() -> Watch {
        Watch { limit: None, threshold: 1.0, every: Duration::ZERO }
    }
}

/// Memory in use in one scope.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub used: u64,
    pub total: u64,
    pub scope: &'static str,
}

impl Usage {
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.used as f64 / self.total as f64
        }
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} memory {:.0}% used ({} MiB of {} MiB)",
            self.scope,
            self.fraction() * 100.0,
            self.used >> 20,
            self.total >> 20
        )
    }
}

/// The host's memory: total less what is available (page cache that can be dropped is
/// available).
pub fn host() -> Option<Usage> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        Some(line[name.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok()? << 10)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some(Usage { used: total.saturating_sub(available), total, scope: "the host's" })
}

/// This process's cgroup (v2) directory, if it has a memory limit.
pub fn cgroup_dir() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    (max.trim() != "max").then_some(dir)
}

/// The cgroup's memory against its limit (`memory.current` counts page cache too, as the
/// kernel does when it enforces `memory.max`).
pub fn cgroup(dir: &Path) -> Option<Usage> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok()?.trim().parse::<u64>().ok();
    Some(Usage { used: read("memory.current")?, total: read("memory.max")?, scope: "the cgroup's" })
}

/// A process's private resident memory (`RssAnon`): its heap, not the store's shared pages.
pub fn private_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("RssAnon:"))?;
    Some(line["RssAnon:".len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok()? << 10)
}

/// How much memory a node offers as its `memory` resource: its limit, else its cgroup's or
/// the host's, less the object store's capacity.
pub fn offered(watch: &Watch, store_capacity: u64) -> u64 {
    let total = watch
        .limit
        .or_else(|| cgroup_dir().and_then(|d| cgroup(&d)).map(|u| u.total))
        .or_else(|| host().map(|u| u.total))
        .unwrap_or(0);
    if watch.limit.is_some() {
        total
    } else {
        total.saturating_sub(store_capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's figures are read and sane, and this process's private memory is found.
    #[test]
    fn host_and_process_memory_are_read() {
        let h = host().expect("/proc/meminfo");
        assert!(h.total > 0 && h.used <= h.total, "{h:?}");
        let mine = private_rss(std::process::id()).expect("own status");
        assert!(mine > 0 && mine < h.total, "{mine}");
        let u = Usage { used: 3 << 20, total: 4 << 20, scope: "the node's" };
        assert_eq!(u.to_string(), "the node's memory 75% used (3 MiB of 4 MiB)");
    }
}
