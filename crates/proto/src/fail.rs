//! Failpoints: named places in the protocol where a test makes a process fail, to prove the
//! recovery paths with real processes. Set `FERRY_FAILPOINTS=name=action[,name=action...]` in
//! the environment of the processes (workers and node daemons inherit it). Actions:
//!
//! - `crash`: the process kills itself with SIGKILL there, as a crash would;
//! - `crash-once:PATH`: the first process to get there anywhere in the cluster creates PATH and
//!   crashes; later ones (a retry, say) go on;
//! - `break-once:PATH`: the same once-only rule, but the caller breaks what it is doing rather
//!   than the process (a transfer closes its connection midway).
//!
//! With the variable unset a failpoint costs one atomic load. (The `fail` crate counts per
//! process; these tests need "once across processes", so this is the small equivalent.)

use std::sync::OnceLock;

fn config() -> &'static Vec<(String, String)> {
    static CONFIG: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        std::env::var("FERRY_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, a)| (n.trim().to_string(), a.trim().to_string()))
            .collect()
    })
}

/// The action set for `name`, if any; an `-once` action only the first time in the cluster.
fn action(name: &str) -> Option<&'static str> {
    let (_, a) = config().iter().find(|(n, _)| n == name)?;
    match a.split_once(':') {
        Some((kind, path)) if kind.ends_with("-once") => {
            // Whoever creates the marker first fires; everyone else goes on.
            let first = std::fs::OpenOptions::new().write(true).create_new(true).open(path).is_ok();
            first.then_some(kind.trim_end_matches("-once"))
        }
        _ => Some(a.as_str()),
    }
}

/// Crashes this process here if the failpoint `name` says `crash`.
pub fn crash_point(name: &str) {
    if config().is_empty() {
        return;
    }
    if action(name) == Some("crash") {
        tracing::error!("failpoint {name}: crashing this process ({})", std::process::id());
        // SAFETY: plain syscalls; SIGKILL to ourselves, as a crash would end us.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Whether the failpoint `name` says `break` here (the caller then breaks what it is doing).
pub fn break_point(name: &str) -> bool {
    !config().is_empty() && action(name) == Some("break")
}
