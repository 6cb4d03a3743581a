//! Model test of the borrowing protocol across processes: several `OwnerState`s exchange the
//! protocol's messages over simulated connections (FIFO per connection, any interleaving
//! between connections, as on real sockets), driven by random sequences of put / clone /
//! drop / pass-to-a-task / task-finish (keeping or dropping what it received, returning refs
//! inside a value or not) / read-refs-out-of-a-value / deliver-a-message / crash-a-process
//! events.
//!
//! Checked after every step: an object is never freed at its live owner while any process
//! still holds it (safety), and every live process's local count equals the handles the model
//! says it holds. At the end, once every handle is dropped, every task finished and every
//! message delivered, every live process's table is empty (nothing leaks, even of what dead
//! processes borrowed or owned).
//!
//! The runtime's synchronous registrations (`AddBorrower`, answered before the caller goes
//! on) are applied to the owner at once; everything else travels as a message.

use crate::owner::{Effects, ObjState, OwnerLimits, OwnerState, Ready};
use ferry_proto::{ObjectId, WorkerId};
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

const PROCS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Put(usize),
    Clone(usize),
    Drop(usize),
    /// Pass a handle to a task on another process (as a ref argument).
    Pass {
        handle: usize,
        to: usize,
    },
    /// A started task ends: it keeps what it received (as an actor would) or drops it, and
    /// returns those refs inside its value or not.
    Finish {
        task: usize,
        keep: bool,
        ret: bool,
    },
    /// Decode the refs inside a value the process holds (as `get` does).
    Read(usize),
    Deliver(usize),
    /// A process dies: its connections close, and every other process learns it.
    Crash(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..PROCS).prop_map(Op::Put),
        1 => any::<usize>().prop_map(Op::Clone),
        3 => any::<usize>().prop_map(Op::Drop),
        3 => (any::<usize>(), 0..PROCS).prop_map(|(handle, to)| Op::Pass { handle, to }),
        3 => (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(|(task, keep, ret)| Op::Finish { task, keep, ret }),
        1 => any::<usize>().prop_map(Op::Read),
        6 => any::<usize>().prop_map(Op::Deliver),
        1 => (0..PROCS).prop_map(Op::Crash),
    ]
}

#[derive(Debug)]
enum Msg {
    Task {
        task: u64,
        refs: Vec<ObjectId>,
    },
    Retained(Vec<ObjectId>),
    /// `sponsored`: refs of third owners the worker registered the caller for (model only).
    Done {
        task: u64,
        contained: Vec<ObjectId>,
        sponsored: Vec<ObjectId>,
    },
    Release(Vec<(ObjectId, u32)>),
}

/// The connection a message travels on: pushes and replies share the owner's connection to
/// the worker; releases go on the sender's own connection to the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Chan {
    Lease { caller: usize, worker: usize, to_worker: bool },
    Peer { from: usize, to: usize },
}

#[derive(Debug)]
struct SimTask {
    id: u64,
    caller: usize,
    worker: usize,
    refs: Vec<ObjectId>,
    started: bool,
    /// Handles the running task holds at the worker.
    held: Vec<ObjectId>,
}

struct Sim {
    procs: Vec<OwnerState>,
    /// Handles the model holds: (process, object).
    handles: Vec<(usize, ObjectId)>,
    tasks: Vec<SimTask>,
    chans: BTreeMap<Chan, VecDeque<Msg>>,
    next_task: u64,
    /// Finished tasks whose `Done` is still on its way: the refs their callers pinned.
    done_refs: BTreeMap<u64, (usize, Vec<ObjectId>)>,
    dead: [bool; PROCS],
    /// Registrations left behind by the known leak: (object, borrower).
    leaked: Vec<(ObjectId, usize)>,
    /// Objects a running task received from a caller that then died: the caller's pin was
    /// their only cover, so they may be freed under the task (which then gets `ObjectLost`);
    /// the known limitation, exempt from the safety check (not from the leak check).
    orphaned: std::collections::BTreeSet<ObjectId>,
}

fn wid(p: usize) -> WorkerId {
    WorkerId(p as u64 + 1)
}

fn proc_of(w: WorkerId) -> usize {
    w.0 as usize - 1
}

impl Sim {
    fn new() -> Sim {
        let limits =
            OwnerLimits { max_in_flight: 16, max_pending_requests: 1, max_lineage_bytes: 1 << 20, job_weight: None };
        Sim {
            procs: (0..PROCS).map(|p| OwnerState::new(wid(p), ferry_proto::NodeId(1), limits.clone())).collect(),
            handles: Vec::new(),
            tasks: Vec::new(),
            chans: BTreeMap::new(),
            next_task: 1,
            done_refs: BTreeMap::new(),
            dead: [false; PROCS],
            leaked: Vec::new(),
            orphaned: Default::default(),
        }
    }

    fn send(&mut self, chan: Chan, m: Msg) {
        let (a, b) = match chan {
            Chan::Lease { caller, worker, .. } => (caller, worker),
            Chan::Peer { from, to } => (from, to),
        };
        // A dead process's connections are closed.
        if !self.dead[a] && !self.dead[b] {
            self.chans.entry(chan).or_default().push_back(m);
        }
    }

    /// Turns a state change's effects into messages (the only ones this model produces).
    fn effects(&mut self, p: usize, fx: Effects) {
        let mut by_owner: BTreeMap<usize, Vec<(ObjectId, u32)>> = BTreeMap::new();
        for (id, n) in fx.releases {
            by_owner.entry(proc_of(id.owner())).or_default().push((id, n));
        }
        for (o, objs) in by_owner {
            self.send(Chan::Peer { from: p, to: o }, Msg::Release(objs));
        }
    }

    /// Runs `f` on process `p`'s table and sends what it produced.
    fn on<R>(&mut self, p: usize, f: impl FnOnce(&mut OwnerState, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let r = f(&mut self.procs[p], &mut fx);
        self.effects(p, fx);
        r
    }

    /// A synchronous registration: the owner counts `borrower` before anyone goes on.
    fn register(&mut self, ids: Vec<ObjectId>, borrower: usize) {
        for id in ids {
            let owner = proc_of(id.owner());
            // A dead owner does not answer; a dead borrower registers nothing.
            if !self.dead[owner] && !self.dead[borrower] {
                self.on(owner, |st, fx| st.add_borrowers(wid(borrower), &[id], fx));
            }
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Crash(p) => {
                if self.dead[p] || self.dead.iter().filter(|d| !**d).count() == 1 {
                    return;
                }
                self.dead[p] = true;
                self.handles.retain(|(q, _)| *q != p);
                // The known leak: a worker that dies after registering its caller with a third
                // owner (for refs in its return value) but before the caller reads the reply
                // leaves that registration until the caller exits (ARCHITECTURE.md).
                for (c, q) in &self.chans {
                    if let Chan::Lease { caller, worker, to_worker: false } = *c {
                        if worker == p && !self.dead[caller] {
                            for m in q {
                                if let Msg::Done { sponsored, .. } = m {
                                    self.leaked.extend(sponsored.iter().map(|id| (*id, caller)));
                                }
                            }
                        }
                    }
                }
                self.chans.retain(|c, _| match *c {
                    Chan::Lease { caller, worker, .. } => caller != p && worker != p,
                    Chan::Peer { from, to } => from != p && to != p,
                });
                // Tasks it ran fail at their callers (their arguments are released); tasks it
                // called go on if they started (their replies go nowhere), else never arrive.
                self.tasks.retain(|t| t.caller != p || t.started);
                for t in self.tasks.iter().filter(|t| t.caller == p) {
                    self.orphaned.extend(t.held.iter().copied());
                }
                let lost: Vec<SimTask> = {
                    let (lost, kept) = std::mem::take(&mut self.tasks).into_iter().partition(|t| t.worker == p);
                    self.tasks = kept;
                    lost
                };
                for t in lost {
                    self.on(t.caller, |st, fx| st.release_submitted(&t.refs, fx));
                }
                for q in 0..PROCS {
                    if !self.dead[q] {
                        self.on(q, |st, fx| st.peer_lost(wid(p), "killed", fx));
                    }
                }
                // Replies on their way to or from it are gone with its connections.
                // A caller whose reply was lost sees the connection close and gives up on
                // the task, releasing its arguments.
                let stale: Vec<u64> = self.done_refs.keys().copied().collect();
                for task in stale {
                    let lost =
                        !self.chans.values().flatten().any(|m| matches!(m, Msg::Done { task: t, .. } if *t == task));
                    if lost {
                        let (c, refs) = self.done_refs.remove(&task).expect("listed");
                        if !self.dead[c] {
                            self.on(c, |st, fx| st.release_submitted(&refs, fx));
                        }
                    }
                }
            }
            Op::Put(p) if !self.dead[p] => {
                let id = self.procs[p].new_object(ObjState::Ready(Ready::Inline(Arc::new(vec![1]))));
                self.handles.push((p, id));
            }
            Op::Clone(h) if !self.handles.is_empty() => {
                let (p, id) = self.handles[h % self.handles.len()];
                self.procs[p].add_local_ref(id);
                self.handles.push((p, id));
            }
            Op::Drop(h) if !self.handles.is_empty() => {
                let (p, id) = self.handles.swap_remove(h % self.handles.len());
                self.on(p, |st, fx| st.remove_local_ref(id, fx));
            }
            Op::Pass { handle, to } if !self.handles.is_empty() => {
                let (p, id) = self.handles[handle % self.handles.len()];
                // (A push to a dead worker is retried elsewhere: not modelled.)
                if p == to || self.dead[to] {
                    return;
                }
                // Encoding the argument pins it for the task (`refs::encoding_ref`).
                assert!(self.procs[p].pin_for_task(id), "a held ref is in the table");
                let task = self.next_task;
                self.next_task += 1;
                self.tasks.push(SimTask {
                    id: task,
                    caller: p,
                    worker: to,
                    refs: vec![id],
                    started: false,
                    held: vec![],
                });
                self.send(Chan::Lease { caller: p, worker: to, to_worker: true }, Msg::Task { task, refs: vec![id] });
            }
            Op::Finish { task, keep, ret } => {
                let started: Vec<usize> = (0..self.tasks.len()).filter(|i| self.tasks[*i].started).collect();
                if started.is_empty() {
                    return;
                }
                let i = started[task % started.len()];
                let t = self.tasks.remove(i);
                self.finish(t, keep, ret);
            }
            Op::Read(h) if !self.handles.is_empty() => {
                let (p, v) = self.handles[h % self.handles.len()];
                let inner = self.procs[p].objects.get(&v).map(|e| e.contains().to_vec()).unwrap_or_default();
                let mut new = Vec::new();
                for x in inner {
                    if self.procs[p].decode_ref(x) {
                        new.push(x);
                    }
                    self.handles.push((p, x));
                }
                // `get` registers what it decoded before returning.
                let ids = self.procs[p].take_unregistered(Some(&new));
                self.register(ids, p);
            }
            Op::Deliver(c) => {
                let live: Vec<Chan> = self.chans.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
                if live.is_empty() {
                    return;
                }
                let chan = live[c % live.len()];
                let m = self.chans.get_mut(&chan).and_then(|q| q.pop_front()).expect("non-empty");
                self.deliver(chan, m);
            }
            _ => {}
        }
    }

    fn deliver(&mut self, chan: Chan, m: Msg) {
        match (chan, m) {
            (Chan::Lease { worker, .. }, Msg::Task { task, refs }) => {
                for id in &refs {
                    self.procs[worker].decode_ref(*id);
                }
                if let Some(t) = self.tasks.iter_mut().find(|t| t.id == task) {
                    t.started = true;
                    t.held = refs;
                }
            }
            (Chan::Lease { caller, worker, .. }, Msg::Retained(objs)) => {
                self.on(caller, |st, fx| st.add_borrowers(wid(worker), &objs, fx));
            }
            (Chan::Lease { caller, .. }, Msg::Done { task, contained, .. }) => {
                let refs = self.done_refs.remove(&task).map(|(_, r)| r).unwrap_or_default();
                if !contained.is_empty() {
                    // The reply's value: a new object at the caller holding the refs.
                    let v = self.procs[caller].new_object(ObjState::Ready(Ready::Inline(Arc::new(vec![2]))));
                    let kept = self.procs[caller].pin_contained(contained);
                    self.on(caller, |st, fx| st.set_contains(v, kept, fx));
                    self.handles.push((caller, v));
                }
                self.on(caller, |st, fx| st.release_submitted(&refs, fx));
            }
            (Chan::Peer { from, to }, Msg::Release(objs)) => {
                self.on(to, |st, fx| st.release_borrows(wid(from), &objs, fx));
            }
            (c, m) => panic!("{m:?} cannot travel on {c:?}"),
        }
    }

    /// A task ends at its worker, as `store_return` and `send_reply` do it.
    fn finish(&mut self, t: SimTask, keep: bool, ret: bool) {
        let (w, caller) = (t.worker, t.caller);
        let mut retained = Vec::new();
        let mut contained = Vec::new();
        let mut sponsored = Vec::new();
        if ret {
            let mut refs = t.held.clone();
            refs.sort_unstable();
            refs.dedup();
            let (callers, others) = self.procs[w].returning(wid(caller), &refs);
            sponsored.clone_from(&others);
            self.register(others, caller);
            retained.extend(callers);
            contained = refs;
        }
        if keep {
            self.handles.extend(t.held.iter().map(|id| (w, *id)));
        } else {
            for id in t.held {
                self.on(w, |st, fx| st.remove_local_ref(id, fx));
            }
        }
        let ids = self.procs[w].take_unregistered(None);
        let (callers, others): (Vec<_>, Vec<_>) = ids.into_iter().partition(|id| proc_of(id.owner()) == caller);
        self.register(others, w);
        retained.extend(callers);
        let chan = Chan::Lease { caller, worker: w, to_worker: false };
        if !retained.is_empty() {
            self.send(chan, Msg::Retained(retained));
        }
        self.done_refs.insert(t.id, (caller, t.refs));
        self.send(chan, Msg::Done { task: t.id, contained, sponsored });
    }

    /// Safety, and agreement of local counts with the model's handles.
    fn check(&self) {
        let mut held: BTreeMap<(usize, ObjectId), u32> = BTreeMap::new();
        for (p, id) in &self.handles {
            *held.entry((*p, *id)).or_default() += 1;
        }
        for t in &self.tasks {
            for id in &t.held {
                *held.entry((t.worker, *id)).or_default() += 1;
            }
        }
        for ((p, id), n) in &held {
            let owner = proc_of(id.owner());
            assert!(
                self.dead[owner] || self.orphaned.contains(id) || self.procs[owner].objects.contains_key(id),
                "{id:?} was freed by its owner P{owner} while P{p} holds it"
            );
            let local = self.procs[*p].objects.get(id).map(|e| e.local);
            // An orphaned object freed at its owner comes back there as a handle to nothing.
            if !(self.orphaned.contains(id) && local.is_none() && *p == owner) {
                assert_eq!(local.unwrap_or(0), *n, "P{p}'s local count of {id:?}");
            }
        }
        // Refs pinned by unfinished tasks are alive at their owners too.
        let pinned = self.done_refs.iter().map(|(t, (c, r))| (*t, *c, r));
        for (task, caller, refs) in pinned.chain(self.tasks.iter().map(|t| (t.id, t.caller, &t.refs))) {
            for id in refs {
                let owner = proc_of(id.owner());
                if !self.dead[owner] && !self.dead[caller] && !self.orphaned.contains(id) {
                    assert!(self.procs[owner].objects.contains_key(id), "{id:?} of task {task} freed");
                }
            }
        }
    }

    /// Drops everything, finishes every task, delivers every message.
    fn drain(&mut self) {
        loop {
            while let Some((p, id)) = self.handles.pop() {
                self.on(p, |st, fx| st.remove_local_ref(id, fx));
            }
            while let Some(t) = self.tasks.iter().position(|t| t.started) {
                let t = self.tasks.remove(t);
                self.finish(t, false, false);
            }
            let Some(chan) = self.chans.iter().find(|(_, q)| !q.is_empty()).map(|(k, _)| *k) else {
                assert!(self.handles.is_empty() && self.tasks.is_empty(), "stuck: {:?}", self.tasks);
                return;
            };
            let m = self.chans.get_mut(&chan).and_then(|q| q.pop_front()).expect("non-empty");
            self.deliver(chan, m);
            self.check();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn borrowed_objects_live_exactly_as_long_as_some_process_holds_them(
        ops in proptest::collection::vec(op(), 1..200)
    ) {
        let mut sim = Sim::new();
        for op in ops {
            sim.step(op);
            sim.check();
        }
        sim.drain();
        // Exactly the known leak is left: ending it empties every table.
        for (id, borrower) in std::mem::take(&mut sim.leaked) {
            let owner = proc_of(id.owner());
            if !sim.dead[owner] && !sim.dead[borrower] {
                sim.on(owner, |st, fx| st.release_borrows(wid(borrower), &[(id, 1)], fx));
            }
        }
        sim.drain();
        for (p, st) in sim.procs.iter().enumerate().filter(|(p, _)| !sim.dead[*p]) {
            prop_assert!(st.objects.is_empty(), "P{} still has {:?}", p, st.objects);
            prop_assert!(st.unregistered.is_empty());
        }
    }
}
