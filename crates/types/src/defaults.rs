//! Every policy default of ferry, in one place, with the environment variable that overrides
//! it (read where the setting is made: `ferry::Config::default` for a program's settings,
//! `ferry_node::launch::LaunchConfig::from_env` for a node started by `ferry start`).

use std::time::Duration;

/// Reads `name` from the environment, parsed; `None` if unset or unparsable.
pub fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A string from the environment, `None` if unset or empty.
pub fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Milliseconds from the environment (`name`), else `default`.
pub fn env_ms(name: &str, default: Duration) -> Duration {
    env(name).map(Duration::from_millis).unwrap_or(default)
}

/// CPUs a node offers: `FERRY_NUM_CPUS`, else the machine's.
pub fn cpus() -> usize {
    env("FERRY_NUM_CPUS").unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1)
}

/// Values whose encoding is at most this travel inline, larger ones through the store
/// (`FERRY_INLINE_MAX_BYTES`).
pub const INLINE_MAX_BYTES: usize = 100 << 10;
/// Tasks pushed to one leased worker before its replies come back (`FERRY_MAX_TASKS_IN_FLIGHT`).
pub const MAX_TASKS_IN_FLIGHT: usize = 16;
/// Lease requests one owner keeps outstanding per scheduling class.
pub const MAX_PENDING_LEASE_REQUESTS: usize = 2;
/// Bytes of task arguments an owner keeps to make lost objects again.
pub const MAX_LINEAGE_BYTES: usize = 256 << 20;
/// A lease unused this long goes back to its node (`FERRY_LEASE_IDLE_MS`).
pub const LEASE_IDLE: Duration = Duration::from_millis(1000);
/// Most worker processes on a node, actors included (`FERRY_MAX_WORKERS`).
pub const MAX_WORKERS: usize = 4096;
/// Idle workers beyond the warm pool are asked to retire after this.
pub const IDLE_WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// A best-effort lease suspended for real-time work this long is reset instead: its task
/// runs again, maybe elsewhere (`FERRY_PREEMPT_RESET_AFTER_MS`).
pub const PREEMPT_RESET_AFTER: Duration = Duration::from_secs(10);
/// Retries of a task whose worker dies.
pub const MAX_RETRIES: u32 = 3;
/// The share of the machine's memory the object store takes by default (capped by what its
/// filesystem has free; `FERRY_OBJECT_STORE_BYTES` sets it).
pub const STORE_SHARE_OF_RAM_PERCENT: u64 = 30;
/// A node that cannot reach its head's control store this long stops (`FERRY_HEAD_GRACE_MS`).
pub const HEAD_GRACE: Duration = Duration::from_secs(60);

/// The control store declares a node dead once it has been silent this long
/// (`FERRY_NODE_TIMEOUT_MS`).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a member sends the control store a heartbeat (`FERRY_HEARTBEAT_MS`); the head
/// sends five per timeout, at most this often.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Set by the head for a job's driver: `PID:ID`, the head's pid and the worker id the driver
/// takes, so that the job's tasks are found by its job. Only a direct child of that pid takes
/// it: a program the driver starts in turn inherits the variable, and must not take the id.
pub const JOB_DRIVER_ENV: &str = "FERRY_JOB_DRIVER";

/// The worker id the head chose for this process, if it is a job's driver (see
/// [`JOB_DRIVER_ENV`]).
pub fn job_driver_id() -> Option<u64> {
    let v = env_str(JOB_DRIVER_ENV)?;
    let (pid, id) = v.split_once(':')?;
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    (pid.parse::<i64>().ok()? == parent as i64).then(|| u64::from_str_radix(id, 16).ok()).flatten()
}
