//! Shared by the integration tests: each test binary's tests run one per process under
//! nextest, each with its own embedded cluster (real worker processes, sockets, /dev/shm).

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The longest any single wait in a test may take before it fails with a message.
pub const T: Duration = Duration::from_secs(30);

/// Starts a 2-CPU embedded cluster (or reuses this process's).
pub fn cluster() {
    cluster_with(ferry::Config::default().num_cpus(2));
}

/// Starts an embedded cluster of `cfg` (or reuses this process's).
pub fn cluster_with(cfg: ferry::Config) {
    match ferry::init(cfg) {
        Ok(()) | Err(ferry::Error::AlreadyInitialized) => {}
        Err(e) => panic!("cannot start ferry: {e}"),
    }
}

/// Polls `f` until it returns true or `within` passes; panics with `what` then.
pub fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; count it as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.split_whitespace().nth(2).is_none_or(|st| st != "Z"),
        Err(_) => false,
    }
}

/// Kills a process of this test's cluster with SIGKILL.
pub fn sigkill(pid: u32) {
    // A tiny FFI declaration keeps libc out of the tests' dependencies.
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: a plain syscall; the pid is a worker of this test's own cluster.
    unsafe { kill(pid as i32, 9) };
}

/// Busy for `ms` of its own CPU time (a stopped process uses none), then its pid.
pub fn spin_cpu(ms: u64) -> u32 {
    let cpu = || {
        let mut t = Timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a plain syscall writing into `t`.
        unsafe { clock_gettime(2, &mut t) }; // CLOCK_PROCESS_CPUTIME_ID
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let start = cpu();
    while cpu() - start < Duration::from_millis(ms) {
        std::hint::spin_loop();
    }
    std::process::id()
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, t: *mut Timespec) -> i32;
}
