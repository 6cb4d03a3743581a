//! Starting an embedded local cluster: directories, token, the node daemon, and this
//! process's runtime as its driver.
//!
//! A session's files live in `$TMPDIR/ferry-<pid>-<rand>` (sockets) and
//! `/dev/shm/ferry-<pid>-<rand>` (the store). Both are removed at shutdown, at normal process
//! exit, and otherwise by the next `init` on the machine once `<pid>` is gone.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::{try_runtime, Identity, Runtime};
use ferry_node::NodeOptions;
use ferry_proto::ids::{random_bytes, random_u64};
use ferry_proto::msg::{ProcKind, Shape};
use ferry_proto::WorkerId;
use ferry_sched::PoolOptions;
use std::path::{Path, PathBuf};

fn shm_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes the directories of sessions whose process no longer exists.
fn cleanup_stale() {
    for root in [std::env::temp_dir(), shm_root()] {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ferry-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

pub(crate) fn start_embedded(cfg: Config) -> Result<()> {
    cleanup_stale();
    let sid = format!("{}-{:08x}", std::process::id(), random_u64() as u32);
    let session_dir = std::env::temp_dir().join(format!("ferry-{sid}"));
    let spill_dir = cfg.spill_dir.clone().unwrap_or_else(|| session_dir.join("spill"));
    let store_dir = shm_root().join(format!("ferry-{sid}-store"));
    let token: String = random_bytes(16).iter().map(|b| format!("{b:02x}")).collect();
    let cpus = cfg.cpus();
    let shape = Shape::with_resources(cpus as f64, &cfg.resources);
    let exe =
        std::env::current_exe().map_err(|e| Error::Connection { detail: format!("cannot find this program: {e}") })?;
    let node = ferry_node::start(NodeOptions {
        session_dir: session_dir.clone(),
        store_dir: store_dir.clone(),
        store_capacity: cfg.store_bytes(),
        spill_dir: Some(spill_dir.clone()),
        token: token.clone(),
        resources: shape,
        pool: PoolOptions {
            prestart: cfg.prestart_workers.unwrap_or(cpus),
            max_workers: cfg.max_workers,
            idle_timeout: cfg.idle_worker_timeout,
        },
        worker_program: exe,
        worker_env: cfg.to_worker_env(),
        max_frame: cfg.max_frame_bytes,
    })
    .map_err(|e| Error::Connection { detail: format!("cannot start the node daemon: {e}") })?;
    let me = WorkerId(random_u64());
    let id = Identity {
        me,
        kind: ProcKind::Driver,
        token,
        node_addr: node.addr(),
        store_dir,
        session_dir: session_dir.clone(),
        spill_dir: Some(spill_dir),
    };
    Runtime::start(id, cfg, Some(node), None)?;
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(exit_cleanup) };
    Ok(())
}

extern "C" fn exit_cleanup() {
    if let Some(rt) = try_runtime() {
        rt.emergency_cleanup();
    }
}
