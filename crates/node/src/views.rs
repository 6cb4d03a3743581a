//! What the node tells tools of its actors, processes and objects (`ferry list actors|
//! workers|objects`, `ferry memory`, the dashboard): read from its tables under the lock,
//! except the processes' own tables (`Memory`), which it asks each process for on a thread
//! of the request's own, each answer bounded in time.

use crate::{ConnId, Node, State};
use ferry_proto::conn::connect;
use ferry_proto::msg::{FromNode, FromWorker, ProcKind, ProcView, RefInfo, StoredInfo, ToNode, ToWorker};
use ferry_proto::{Addr, NodeId, WorkerId};
use ferry_types::sync::MutexExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a process has to answer `Memory`'s question.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// A process's answer to `Memory`'s question: its table's entries and its pending tasks.
type Table = (Vec<RefInfo>, u64);

/// How many processes `Memory` asks at once.
const ASKERS: usize = 16;

/// `Memory` questions being answered or waiting their turn, in this process; past
/// `MAX_GATHERINGS` one is answered at once with every process said not to answer.
static GATHERINGS: AtomicUsize = AtomicUsize::new(0);
const MAX_GATHERINGS: usize = 8;
static GATHER_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Node {
    pub(crate) fn on_view(&self, st: &mut State, conn: ConnId, msg: ToNode) {
        match msg {
            ToNode::ListActors { req } => {
                // Those hosted here for another node are listed by their home (which says
                // they run here), so each actor once; but not when that home is the control
                // store, which is not asked.
                let controls: Vec<NodeId> = st.cluster.view.iter().filter(|v| v.head).map(|v| v.node).collect();
                let actors = st
                    .actors
                    .iter()
                    .filter(|(_, r)| r.hosted_for().is_none_or(|h| controls.contains(&h)))
                    .map(|(id, r)| r.view(*id, self.id))
                    .collect();
                self.send(st, conn, &FromNode::Actors { req, actors });
            }
            ToNode::ListProcs { req } => {
                let pids = self.pids.locked();
                let procs = st
                    .conns
                    .values()
                    .filter(|c| c.registered)
                    .filter_map(|c| {
                        let kind = c.kind?;
                        let worker = c.worker.unwrap_or(c.from);
                        let actor = st.book.worker_actor.get(&worker).copied();
                        let state = match kind {
                            ProcKind::Worker if st.pool.sched.is_suspended(worker) => "suspended",
                            ProcKind::Worker if actor.is_some() => "actor",
                            ProcKind::Worker if st.pool.sched.lease_holder(worker).is_some() => "leased",
                            ProcKind::Worker => "idle",
                            ProcKind::Driver => "driver",
                            ProcKind::Client => "client",
                            ProcKind::Node => "node",
                            ProcKind::Tool => "tool",
                        };
                        Some(ProcView {
                            worker,
                            kind,
                            node: c.node.unwrap_or(self.id),
                            pid: pids.get(&worker).copied().or(c.pid),
                            state: state.into(),
                            actor,
                        })
                    })
                    .collect();
                drop(pids);
                self.send(st, conn, &FromNode::Procs { req, procs });
            }
            ToNode::Memory { req } => {
                // Drivers and workers that registered here, where they listen.
                let procs: Vec<(WorkerId, Addr)> = st
                    .conns
                    .values()
                    .filter(|c| c.registered && matches!(c.kind, Some(ProcKind::Driver | ProcKind::Worker)))
                    .filter_map(|c| {
                        let w = c.worker.unwrap_or(c.from);
                        // A process on this host listens in this node's session directory
                        // (what it said at registration may predate its learning where).
                        match c.listen.clone()? {
                            Addr::Unix(_) => {
                                Some((w, Addr::Unix(ferry_proto::layout::socket_of(&self.opts.session_dir, w))))
                            }
                            tcp => Some((w, tcp)),
                        }
                    })
                    .collect();
                let stored: Vec<StoredInfo> = st
                    .store
                    .list()
                    .into_iter()
                    .map(|o| StoredInfo { object: o.id, size: o.size, spilled: o.spilled })
                    .collect();
                let Some(to) = st.conns.get(&conn).map(|c| c.conn.clone()) else { return };
                let ask = (self.opts.token.clone(), WorkerId(self.id.0), self.opts.max_frame);
                if GATHERINGS.fetch_add(1, Ordering::SeqCst) >= MAX_GATHERINGS {
                    // A flood of questions: this one is not asked around (each would open a
                    // connection to every process); every process is said not to answer.
                    GATHERINGS.fetch_sub(1, Ordering::SeqCst);
                    let unreachable = procs.into_iter().map(|(w, _)| w).collect();
                    let _ = to.send(&FromNode::Memory { req, refs: Vec::new(), pending_tasks: 0, stored, unreachable });
                    return;
                }
                std::thread::spawn(move || {
                    // One gathering at a time: ASKERS connections at most, whatever comes.
                    let turn = GATHER_TURN.locked();
                    // Asked ASKERS at a time: each answer is mostly waiting for the process to
                    // be scheduled, so a thousand actors answer in a fraction of the time.
                    let chunk = procs.len().div_ceil(ASKERS).max(1);
                    let answers: Vec<(WorkerId, Option<Table>)> = std::thread::scope(|s| {
                        let askers: Vec<_> = procs
                            .chunks(chunk)
                            .map(|part| {
                                let ask = &ask;
                                s.spawn(move || part.iter().map(|(w, a)| (*w, summary_of(a, ask))).collect::<Vec<_>>())
                            })
                            .collect();
                        askers.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
                    });
                    let (mut refs, mut pending_tasks, mut unreachable) = (Vec::new(), 0, Vec::new());
                    for (w, answer) in answers {
                        match answer {
                            Some((r, t)) => {
                                refs.extend(r);
                                pending_tasks += t;
                            }
                            None => unreachable.push(w),
                        }
                    }
                    drop(turn);
                    GATHERINGS.fetch_sub(1, Ordering::SeqCst);
                    let _ = to.send(&FromNode::Memory { req, refs, pending_tasks, stored, unreachable });
                });
            }
            _ => {}
        }
    }
}

impl Node {
    /// `ListWorkerLogs`, `ReadWorkerLog`, on the connection's own thread (they read files).
    pub(crate) fn on_worker_logs(&self, conn: &ferry_proto::Conn, msg: ToNode) {
        let dir = crate::worker_logs::dir(&self.opts.session_dir);
        let alive = |w: WorkerId| self.lock().conns.values().any(|c| c.worker == Some(w));
        let reply = match msg {
            ToNode::ListWorkerLogs { req } => {
                let logs = crate::worker_logs::list(&dir).into_iter().map(|(w, n)| (w, n, alive(w))).collect();
                FromNode::WorkerLogs { req, logs }
            }
            ToNode::ReadWorkerLog { req, worker, offset } => {
                match crate::worker_logs::read(&dir, worker, offset, 1 << 20) {
                    Ok((data, _)) => {
                        let next = offset + data.len() as u64;
                        let ended = data.is_empty() && !alive(worker);
                        FromNode::WorkerLog { req, data, next, ended, error: None }
                    }
                    Err(e) => FromNode::WorkerLog {
                        req,
                        data: Vec::new(),
                        next: offset,
                        ended: true,
                        error: Some(format!(
                            "no log of worker {worker} on this node ({e}): `ferry logs --node` lists them"
                        )),
                    },
                }
            }
            _ => return,
        };
        let _ = conn.send(&reply);
    }
}

/// One process's table, as it answers `ToWorker::Summary` (`None`: it did not, in time).
fn summary_of(addr: &Addr, (token, me, max_frame): &(String, WorkerId, u32)) -> Option<Table> {
    let (conn, mut rx, _) = connect(addr, token, *me, *max_frame)
        .map_err(|e| tracing::warn!("cannot ask the process at {addr} for its objects: {e}"))
        .ok()?;
    rx.get_ref().set_read_timeout(Some(ANSWER_WITHIN)).ok()?;
    conn.send(&ToWorker::Summary { req: 1 }).ok()?;
    let end = std::time::Instant::now() + ANSWER_WITHIN;
    while std::time::Instant::now() < end {
        let m =
            rx.read::<FromWorker>().map_err(|e| tracing::warn!("the process at {addr} did not answer: {e}")).ok()?;
        if let FromWorker::Summary { refs, tasks, .. } = m {
            return Some((refs, tasks));
        }
    }
    None
}
