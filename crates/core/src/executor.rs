//! The worker side: accept owners' connections, queue the tasks they push, run them one at
//! a time on the worker's main thread, and reply on the connection each came from.
//!
//! Threads: `ferry-accept` accepts owners; one `ferry-owner-rx` per owner reads its pushes
//! into the queue; the main thread runs tasks.
//!
//! Blocking: when the running task waits in `get` ([`Executor::enter_blocked`]), the worker
//! sends every task it has not started back to its owner (`Requeued`) and tells the daemon
//! its CPU is free; while blocked, new pushes go straight back too. Without this a task
//! queued behind a blocked one could be the very task it waits for.

use crate::bytes::ArgData;
use crate::codec;
use crate::error::Error;
use crate::registry;
use crate::runtime::{try_runtime, Runtime};
use ferry_proto::conn::{accept, Conn};
use ferry_proto::msg::{Arg, FromWorker, Return, TaskError, TaskSpec, ToNode, ToWorker};
use ferry_proto::{FrameError, FrameReader, ObjectId, Stream, TaskId};
use serde::Serialize;
use std::cell::Cell;
use std::collections::VecDeque;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

thread_local! {
    /// The task running on this thread, if any.
    static CURRENT: Cell<Option<TaskId>> = const { Cell::new(None) };
}

struct Queue {
    tasks: VecDeque<(Arc<Conn>, TaskSpec)>,
    /// Nesting of `enter_blocked` on the task thread.
    blocked: u32,
}

/// See the module docs.
pub(crate) struct Executor {
    q: Mutex<Queue>,
    cv: Condvar,
}

impl Executor {
    pub fn new() -> Arc<Executor> {
        Arc::new(Executor {
            q: Mutex::new(Queue {
                tasks: VecDeque::new(),
                blocked: 0,
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts owners' connections on `listener` (on a background thread).
    pub fn serve(self: &Arc<Self>, listener: UnixListener, rt: &'static Runtime) {
        let me = self.clone();
        let spawned = thread::Builder::new()
            .name("ferry-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let me = me.clone();
                    let _ = thread::Builder::new()
                        .name("ferry-owner-rx".into())
                        .spawn(move || {
                            match accept(
                                Stream::Unix(stream),
                                &rt.token,
                                rt.node_id,
                                rt.cfg.max_frame_bytes,
                            ) {
                                Ok((conn, reader, _)) => me.owner_reader(Arc::new(conn), reader),
                                Err(e) => eprintln!("ferry-worker: refused a connection: {e}"),
                            }
                        });
                }
            });
        if let Err(e) = spawned {
            eprintln!("ferry-worker: cannot start the accept thread: {e}");
            std::process::exit(1);
        }
    }

    fn owner_reader(&self, conn: Arc<Conn>, mut reader: FrameReader<Stream>) {
        loop {
            match reader.read::<ToWorker>() {
                Ok(ToWorker::Push(specs)) => {
                    let mut q = self.lock();
                    if q.blocked > 0 {
                        drop(q);
                        let tasks = specs.iter().map(|s| s.task).collect();
                        let _ = conn.send(&FromWorker::Requeued { tasks });
                    } else {
                        q.tasks.extend(specs.into_iter().map(|s| (conn.clone(), s)));
                        drop(q);
                        self.cv.notify_one();
                    }
                }
                Ok(ToWorker::Cancel { task }) => {
                    let mut q = self.lock();
                    // Only a task that has not started can be cancelled here; a running or
                    // finished one is already final at its owner.
                    if let Some(pos) = q.tasks.iter().position(|(_, s)| s.task == task) {
                        q.tasks.remove(pos);
                        drop(q);
                        let _ = conn.send(&FromWorker::Failed {
                            task,
                            error: TaskError::Cancelled,
                        });
                    }
                }
                Ok(ToWorker::Steal { max }) => {
                    // The newest of this owner's unstarted tasks (the oldest run soonest here).
                    let mut q = self.lock();
                    let mut tasks = Vec::new();
                    let mut i = q.tasks.len();
                    while i > 0 && tasks.len() < max as usize {
                        i -= 1;
                        if Arc::ptr_eq(&q.tasks[i].0, &conn) {
                            tasks.push(q.tasks.remove(i).expect("index in range").1.task);
                        }
                    }
                    drop(q);
                    tasks.reverse();
                    let _ = conn.send(&FromWorker::Stolen { tasks });
                }
                Err(FrameError::Closed) => break,
                Err(e) => {
                    // Malformed or oversized: drop this owner's connection, keep running.
                    eprintln!("ferry-worker: closing an owner's connection: {e}");
                    break;
                }
            }
        }
        conn.shutdown();
        // The owner is gone: nobody wants the results of its queued tasks.
        self.lock().tasks.retain(|(c, _)| !Arc::ptr_eq(c, &conn));
    }

    /// Runs tasks forever on the calling thread.
    pub fn run(&self, rt: &'static Runtime) -> ! {
        loop {
            let (conn, spec) = {
                let mut q = self.lock();
                loop {
                    if let Some(t) = q.tasks.pop_front() {
                        break t;
                    }
                    q = self.cv.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            rt.lock().depth = spec.depth + 1;
            CURRENT.with(|c| c.set(Some(spec.task)));
            let reply = execute(rt, &spec);
            CURRENT.with(|c| c.set(None));
            let _ = conn.send(&reply);
        }
    }

    /// Called when the task on this thread is about to wait. Returns a guard that takes
    /// the CPU back when dropped; `None` if this thread runs no task.
    pub fn enter_blocked(&self, rt: &Runtime) -> Option<BlockedGuard> {
        CURRENT.with(|c| c.get())?;
        let mut q = self.lock();
        q.blocked += 1;
        if q.blocked == 1 {
            let queued: Vec<(Arc<Conn>, TaskSpec)> = q.tasks.drain(..).collect();
            drop(q);
            // Hand unstarted tasks back, one message per owner.
            let mut by_owner: Vec<(Arc<Conn>, Vec<TaskId>)> = Vec::new();
            for (c, s) in queued {
                match by_owner.iter_mut().find(|(o, _)| Arc::ptr_eq(o, &c)) {
                    Some((_, v)) => v.push(s.task),
                    None => by_owner.push((c, vec![s.task])),
                }
            }
            for (c, tasks) in by_owner {
                let _ = c.send(&FromWorker::Requeued { tasks });
            }
            rt.send_node(&ToNode::Blocked);
        }
        Some(BlockedGuard { exec: self, rt })
    }
}

/// Takes the worker's CPU back when the wait ends.
pub(crate) struct BlockedGuard {
    exec: *const Executor,
    rt: *const Runtime,
}

impl Drop for BlockedGuard {
    fn drop(&mut self) {
        // SAFETY: the executor and runtime live for the whole process (in a static).
        let (exec, rt) = unsafe { (&*self.exec, &*self.rt) };
        let mut q = exec.lock();
        q.blocked -= 1;
        if q.blocked == 0 {
            drop(q);
            rt.send_node(&ToNode::Unblocked);
        }
    }
}

enum ArgBytes {
    Inline(usize),
    Mapped(ferry_store::ObjectView),
}

fn execute(rt: &Runtime, spec: &TaskSpec) -> FromWorker {
    let task = spec.task;
    let Some(f) = registry::lookup(&spec.function) else {
        return FromWorker::Failed {
            task,
            error: TaskError::UnknownFunction {
                function: spec.function.clone(),
            },
        };
    };
    let mut held = Vec::with_capacity(spec.args.len());
    for (i, a) in spec.args.iter().enumerate() {
        match a {
            Arg::Inline(_) => held.push(ArgBytes::Inline(i)),
            Arg::Stored { object, .. } => match rt.map_object(*object) {
                Ok(v) => held.push(ArgBytes::Mapped(v)),
                Err(e) => {
                    return FromWorker::Failed {
                        task,
                        error: TaskError::ArgumentUnavailable {
                            function: spec.function.clone(),
                            detail: e.to_string(),
                        },
                    }
                }
            },
        }
    }
    let slices: Vec<ArgData<'_>> = held
        .iter()
        .map(|h| match h {
            ArgBytes::Inline(i) => match &spec.args[*i] {
                Arg::Inline(v) => ArgData {
                    bytes: v.as_slice(),
                    view: None,
                },
                Arg::Stored { .. } => unreachable!("inline index"),
            },
            ArgBytes::Mapped(v) => ArgData {
                bytes: &v[..],
                view: Some(v),
            },
        })
        .collect();
    match (f.invoke)(&slices) {
        Ok(ret) => FromWorker::Done {
            task,
            returns: vec![ret],
        },
        Err(error) => FromWorker::Failed { task, error },
    }
}

/// Encodes a task's return value: inline if small, else into the node's store under the
/// task's return id (used by generated code).
pub fn store_return<R: Serialize + 'static>(r: &R, function: &str) -> Result<Return, TaskError> {
    let bad = |detail: String| TaskError::BadReturn {
        function: function.to_string(),
        detail,
    };
    let enc = codec::encode(r).map_err(|e| bad(e.to_string()))?;
    let rt = try_runtime().ok_or_else(|| bad("no runtime in this process".into()))?;
    if enc.len() <= rt.cfg.inline_max_bytes {
        return Ok(Return::Inline(enc.into_vec()));
    }
    let task = CURRENT
        .with(|c| c.get())
        .ok_or_else(|| bad("not running a task".into()))?;
    let id = ObjectId { task, index: 0 };
    match rt.write_and_seal(id, &enc.parts()) {
        Ok(size) => Ok(Return::Stored {
            size,
            node: rt.node_id,
        }),
        Err(Error::ObjectStoreFull { detail }) if detail.contains("exists") => {
            // A retry of a task whose earlier run stored its value before dying: tasks are
            // idempotent, so the stored value stands.
            let size = std::fs::metadata(rt.store.path_of(id))
                .map(|m| m.len())
                .map_err(|e| bad(e.to_string()))?;
            match rt.node_call(|req| ToNode::Seal {
                req,
                object: id,
                size,
            }) {
                Ok(_) => Ok(Return::Stored {
                    size,
                    node: rt.node_id,
                }),
                Err(e) => Err(bad(e.to_string())),
            }
        }
        Err(e) => Err(bad(e.to_string())),
    }
}
