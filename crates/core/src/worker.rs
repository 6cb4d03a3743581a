//! Worker mode: the process a node daemon starts from the job's binary. It connects to the
//! daemon, listens for owners, and runs tasks on its main thread until the daemon goes.

use crate::config::Config;
use crate::executor::Executor;
use crate::runtime::{Identity, Runtime};
use ferry_proto::conn::Addr;
use ferry_proto::layout::worker_env::*;
use ferry_proto::msg::ProcKind;
use ferry_proto::WorkerId;
use std::path::PathBuf;

fn var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) => v,
        Err(_) => {
            tracing::error!("{name} is not set; worker processes are started by a node daemon");
            std::process::exit(2);
        }
    }
}

/// Runs the worker; never returns.
pub(crate) fn main() -> ! {
    // Before `main`, std has not yet set SIGPIPE to ignored: a write to a closed socket
    // must be an error, not the end of the process.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // What a task logs reaches the drivers' terminals through the captured standard error.
    ferry_os::logging::init(ferry_os::logging::Style::Terminal);
    // Die with the daemon's spawner thread (our parent); if it is already gone, go now.
    let parent: Option<i32> = std::env::var(PARENT_PID).ok().and_then(|p| p.parse().ok());
    ferry_os::die_with_parent(parent);
    let me = WorkerId(var(WORKER_ID).parse().unwrap_or_else(|_| {
        tracing::error!("bad {WORKER_ID}");
        std::process::exit(2)
    }));
    let id = Identity {
        me,
        kind: ProcKind::Worker,
        token: var(TOKEN),
        node_addr: Addr::Unix(PathBuf::from(var(NODE_SOCKET))),
        store_dir: PathBuf::from(var(STORE_DIR)),
        session_dir: PathBuf::from(var(SESSION_DIR)),
        spill_dir: std::env::var_os(SPILL_DIR).filter(|d| !d.is_empty()).map(PathBuf::from),
        tcp_host: std::env::var(TCP_HOST).ok().filter(|h| !h.is_empty()),
    };
    // Programs the task starts are not workers.
    // SAFETY: still single-threaded here (before main, no thread started yet).
    std::env::remove_var(WORKER);
    std::env::remove_var(TOKEN);
    let exec = Executor::new();
    let node_socket = match &id.node_addr {
        Addr::Unix(p) => p.clone(),
        Addr::Tcp(_) => PathBuf::new(),
    };
    let rt = match Runtime::start(id, Config::default(), None, Some(exec.clone())) {
        Ok(rt) => rt,
        Err(e) => {
            // Started for a cluster that stopped meanwhile (a program that calls `init` and
            // exits at once): there is nobody to work for, and nothing to report.
            // SAFETY: getppid has no preconditions.
            let orphaned = parent.is_some_and(|p| p != unsafe { libc::getppid() });
            if orphaned || std::os::unix::net::UnixStream::connect(&node_socket).is_err() {
                std::process::exit(0);
            }
            tracing::error!("{e}");
            std::process::exit(1);
        }
    };
    crate::logs::capture(rt);
    exec.run(rt)
}
