//! What the daemon's integration tests share: a node's options in a private directory of
//! this test process, and raw protocol clients that register and ask.

#![allow(dead_code)] // Each test file uses part of it.

use ferry_node::NodeOptions;
use ferry_proto::conn::{connect, Addr};
use ferry_proto::msg::{FromNode, ProcKind, Shape, ToNode};
use ferry_proto::{Conn, FrameReader, Stream, WorkerId};
use ferry_sched::PoolOptions;
use std::path::PathBuf;
use std::time::Duration;

pub const TOKEN: &str = "node-test-token-0123456789abcdef0123";
/// Every wait in these tests is bounded by this.
pub const T: Duration = Duration::from_secs(20);

/// A raw client: its connection and what it reads.
pub type Client = (Conn, FrameReader<Stream>);

/// This test process's private directory for `tag` (made 0700).
pub fn dir(test: &str, tag: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("ferry-{test}-test-{}-{tag}", std::process::id()));
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&base).unwrap();
    base
}

/// A standalone node of one CPU in `dir(test, tag)`: Unix socket only, no worker program
/// (callers set what their test needs).
pub fn options(test: &str, tag: &str) -> NodeOptions {
    let base = dir(test, tag);
    NodeOptions {
        session_dir: base.join("session"),
        store_dir: base.join("store"),
        store_capacity: 1 << 30,
        spill_dir: None,
        token: TOKEN.into(),
        resources: Shape::cpus(1.0),
        pool: PoolOptions {
            prestart: 0,
            max_workers: 1,
            idle_timeout: Duration::from_secs(1),
            reset_after: Duration::from_secs(30),
        },
        worker_program: None,
        tcp: None,
        head_timeout: None,
        control_only: false,
        head_grace: Duration::from_secs(60),
        join: None,
        state_dir: None,
        worker_env: Vec::new(),
        max_frame: 64 << 20,
        memory_watch: ferry_node::pressure::Watch::off(),
    }
}

/// Connects to `addr` as a process of `kind` and registers.
pub fn register(addr: &Addr, kind: ProcKind) -> Client {
    let (conn, mut rx, _) = connect(addr, TOKEN, WorkerId(ferry_proto::ids::random_u64()), 64 << 20).unwrap();
    rx.get_ref().set_read_timeout(Some(T)).unwrap();
    conn.send(&ToNode::register_tool(kind)).unwrap();
    assert!(matches!(rx.read::<FromNode>().unwrap(), FromNode::Registered { .. }));
    (conn, rx)
}

/// Sends `msg` and returns the first answer `pick` accepts (others are skipped).
pub fn call<R>(c: &mut Client, msg: ToNode, mut pick: impl FnMut(FromNode) -> Option<R>) -> R {
    c.0.send(&msg).unwrap();
    loop {
        if let Some(r) = pick(c.1.read::<FromNode>().expect("an answer within the timeout")) {
            return r;
        }
    }
}
