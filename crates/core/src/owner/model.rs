//! Model test of the owner table's reference counting (sled-style): random sequences of
//! put / submit / clone / drop / task-finish events run against `OwnerState` and against a
//! plain model; after every step, every object must be alive in the table exactly when the
//! model says it is, with the same counts, and a stored object must be freed once, when it
//! goes. The state machine runs alone: its effects are collected and acted on here (a lease
//! granted to the first request), never sent; time is whatever the test passes in.

use crate::owner::Daemon;
use crate::owner::{ArgDraft, Effects, ObjState, OwnerLimits, OwnerState, Ready};
use ferry_proto::msg::{Return, Shape, TaskError, ToNode};
use ferry_proto::{NodeId, ObjectId, TaskId, WorkerId};
use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
enum Op {
    Put { stored: bool },
    Submit { args: Vec<usize>, stored_return: bool },
    Clone(usize),
    Drop(usize),
    Finish { pick: usize, ok: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(|stored| Op::Put { stored }),
        3 => (proptest::collection::vec(any::<usize>(), 0..3), any::<bool>())
            .prop_map(|(args, stored_return)| Op::Submit { args, stored_return }),
        2 => any::<usize>().prop_map(Op::Clone),
        3 => any::<usize>().prop_map(Op::Drop),
        3 => (any::<usize>(), proptest::bool::weighted(0.8)).prop_map(|(pick, ok)| Op::Finish { pick, ok }),
    ]
}

#[derive(Clone, Debug)]
struct ModelTask {
    task: TaskId,
    ret: ObjectId,
    args: Vec<ObjectId>,
    stored_return: bool,
}

/// The plain model: who holds what.
#[derive(Default)]
struct Model {
    handles: Vec<ObjectId>,
    unfinished: Vec<ModelTask>,
    failed: HashSet<ObjectId>,
    stored: HashSet<ObjectId>,
    /// Finished tasks with a stored return: while the return's entry lives, its lineage holds
    /// the task's arguments (so that it could be made again): by name those that have a
    /// lineage themselves (their values may go), by value the others.
    kept: Vec<(ModelTask, Vec<bool>)>,
}

impl Model {
    fn pending(&self, o: ObjectId) -> bool {
        self.unfinished.iter().any(|t| t.ret == o)
    }
    /// Everything held: handles, unfinished tasks and their arguments, and (to a fixpoint)
    /// the arguments of kept lineages whose return is held.
    fn live(&self) -> HashSet<ObjectId> {
        let mut live: HashSet<ObjectId> = self.handles.iter().copied().collect();
        for t in &self.unfinished {
            live.insert(t.ret);
            live.extend(t.args.iter().copied());
        }
        loop {
            let before = live.len();
            for (k, _) in &self.kept {
                if live.contains(&k.ret) {
                    live.extend(k.args.iter().copied());
                }
            }
            if live.len() == before {
                return live;
            }
        }
    }
    /// Held by a handle, a task, or a lineage by value: its value must stay.
    fn held(&self, o: ObjectId) -> bool {
        let live = self.live();
        self.handles.contains(&o)
            || self.unfinished.iter().any(|t| t.ret == o || t.args.contains(&o))
            || self
                .kept
                .iter()
                .any(|(k, by_name)| live.contains(&k.ret) && k.args.iter().zip(by_name).any(|(a, n)| *a == o && !n))
    }
    /// In the table only for lineages naming it: its value was released.
    fn released(&self, o: ObjectId) -> bool {
        self.alive(o) && !self.held(o)
    }
    fn alive(&self, o: ObjectId) -> bool {
        self.live().contains(&o)
    }
    fn local(&self, o: ObjectId) -> u32 {
        self.handles.iter().filter(|h| **h == o).count() as u32
    }
    fn submitted(&self, o: ObjectId) -> u32 {
        let live = self.live();
        let by_tasks: u32 = self.unfinished.iter().map(|t| t.args.iter().filter(|a| **a == o).count() as u32).sum();
        let by_value: u32 = self
            .kept
            .iter()
            .filter(|(k, _)| live.contains(&k.ret))
            .map(|(k, by_name)| k.args.iter().zip(by_name).filter(|(a, n)| **a == o && !**n).count() as u32)
            .sum();
        by_tasks + by_value
    }

    /// A task finished with its value: a stored one keeps its lineage while it lives.
    fn finished(&mut self, t: &ModelTask) {
        let by_name = t.args.iter().map(|a| self.kept.iter().any(|(k, _)| k.ret == *a)).collect();
        self.unfinished.retain(|x| x.task != t.task);
        if t.stored_return && self.live().contains(&t.ret) {
            self.kept.push((t.clone(), by_name));
        }
    }
    /// A task can finish when it was pushed: all its arguments are ready.
    fn pushed(&self) -> Vec<usize> {
        (0..self.unfinished.len()).filter(|i| self.unfinished[*i].args.iter().all(|a| !self.pending(*a))).collect()
    }
    /// Fails `ret`'s task and, transitively, every unfinished task waiting for it.
    fn fail(&mut self, ret: ObjectId) {
        self.failed.insert(ret);
        self.unfinished.retain(|t| t.ret != ret);
        let waiting: Vec<ObjectId> = self.unfinished.iter().filter(|t| t.args.contains(&ret)).map(|t| t.ret).collect();
        for w in waiting {
            self.fail(w);
        }
    }
}

struct Harness {
    st: OwnerState,
    next_lease: u64,
    freed: HashSet<ObjectId>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            st: OwnerState::new(
                WorkerId(1),
                NodeId(1),
                OwnerLimits {
                    max_in_flight: 100_000,
                    max_pending_requests: 1,
                    max_lineage_bytes: 1 << 20,
                    job_weight: None,
                },
            ),
            next_lease: 1,
            freed: HashSet::new(),
        }
    }

    /// Grants the first lease asked for and records every object freed.
    fn settle(&mut self, fx: Effects) {
        let mut fx = fx;
        loop {
            for (_, o) in fx.frees.drain(..) {
                assert!(self.freed.insert(o), "object {o:?} freed twice");
            }
            if fx.to_daemons.is_empty() {
                break;
            }
            let mut more = Effects::default();
            for (to, m) in std::mem::take(&mut fx.to_daemons) {
                // A node with one worker: the first request is granted, the others wait
                // (as a short daemon's would).
                if let (Daemon::Node(node), ToNode::RequestLease { req, .. }) = (to, m) {
                    if self.next_lease == 1 {
                        let lease = self.next_lease;
                        self.next_lease += 1;
                        self.st.on_lease_granted(req, (node, lease), WorkerId(100 + lease), Instant::now(), &mut more);
                    }
                }
            }
            fx = more;
        }
    }
}

fn check(h: &Harness, m: &Model, all: &[ObjectId]) {
    for o in all {
        let entry = h.st.objects.get(o);
        assert_eq!(entry.is_some(), m.alive(*o), "object {o:?}: table and model disagree on its life");
        if let Some(e) = entry {
            assert_eq!(e.local, m.local(*o), "local count of {o:?}");
            assert_eq!(e.submitted, m.submitted(*o), "submitted count of {o:?}");
            match &e.state {
                ObjState::Pending => assert!(m.pending(*o)),
                ObjState::Failed(_) => assert!(m.failed.contains(o)),
                ObjState::Ready(_) => assert!(!m.pending(*o) && !m.failed.contains(o) && !m.released(*o)),
                ObjState::Released => assert!(m.released(*o), "{o:?} released while held"),
            }
        } else if m.stored.contains(o) {
            assert!(h.freed.contains(o), "stored object {o:?} gone from the table but not freed");
        }
    }
}

fn run(ops: Vec<Op>) {
    let mut h = Harness::new();
    let mut m = Model::default();
    let mut all: Vec<ObjectId> = Vec::new();
    let stored = |size| ObjState::Ready(Ready::Stored { size, node: NodeId(1), view: None });
    for op in ops {
        let mut fx = Effects::default();
        match op {
            Op::Put { stored: s } => {
                let id =
                    h.st.new_object(if s { stored(10) } else { ObjState::Ready(Ready::Inline(Arc::new(vec![0]))) });
                if s {
                    m.stored.insert(id);
                }
                m.handles.push(id);
                all.push(id);
            }
            Op::Submit { args, stored_return } => {
                if m.handles.is_empty() && !args.is_empty() {
                    continue;
                }
                let args: Vec<ObjectId> = args.iter().map(|i| m.handles[i % m.handles.len()]).collect();
                let drafts = args.iter().map(|a| ArgDraft::Ref(*a)).collect();
                let ret = h.st.submit(
                    "f",
                    Arc::from("f"),
                    drafts,
                    (&Shape::cpus(1.0), &Default::default(), Default::default()),
                    (0, false, 0),
                    (crate::owner::Rets::One, crate::owner::Job { id: WorkerId(1), namespace: None }),
                    Default::default(),
                    &mut fx,
                );
                all.push(ret);
                m.handles.push(ret);
                let t = ModelTask { task: ret.task, ret, args: args.clone(), stored_return };
                if args.iter().any(|a| m.failed.contains(a)) {
                    m.failed.insert(ret);
                } else {
                    m.unfinished.push(t);
                }
            }
            Op::Clone(i) => {
                if m.handles.is_empty() {
                    continue;
                }
                let o = m.handles[i % m.handles.len()];
                h.st.add_local_ref(o);
                m.handles.push(o);
            }
            Op::Drop(i) => {
                if m.handles.is_empty() {
                    continue;
                }
                let o = m.handles.remove(i % m.handles.len());
                h.st.remove_local_ref(o, &mut fx);
            }
            Op::Finish { pick, ok } => {
                let pushed = m.pushed();
                if pushed.is_empty() {
                    continue;
                }
                let t = m.unfinished[pushed[pick % pushed.len()]].clone();
                if ok {
                    let ret = if t.stored_return {
                        m.stored.insert(t.ret);
                        Return::Stored { size: 10, node: NodeId(1) }
                    } else {
                        Return::Inline(vec![0])
                    };
                    h.st.on_done(t.task, vec![ret], Default::default(), Instant::now(), &mut fx);
                    m.finished(&t);
                } else {
                    h.st.on_failed(t.task, TaskError::Cancelled, Instant::now(), &mut fx);
                    m.fail(t.ret);
                }
            }
        }
        h.settle(fx);
        check(&h, &m, &all);
    }
    // Drop everything and let every task finish: nothing may be left behind.
    while let Some(o) = m.handles.pop() {
        let mut fx = Effects::default();
        h.st.remove_local_ref(o, &mut fx);
        h.settle(fx);
    }
    while let Some(&i) = m.pushed().first() {
        let t = m.unfinished[i].clone();
        let mut fx = Effects::default();
        if t.stored_return {
            m.stored.insert(t.ret);
        }
        let ret = if t.stored_return { Return::Stored { size: 10, node: NodeId(1) } } else { Return::Inline(vec![0]) };
        h.st.on_done(t.task, vec![ret], Default::default(), Instant::now(), &mut fx);
        m.finished(&t);
        h.settle(fx);
        check(&h, &m, &all);
    }
    assert!(m.unfinished.is_empty());
    assert!(h.st.objects.is_empty(), "objects left behind: {:?}", h.st.objects.keys().collect::<Vec<_>>());
    for o in &m.stored {
        assert!(h.freed.contains(o), "stored object {o:?} never freed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn reference_counts_match_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops);
    }
}

#[test]
fn a_pending_object_nobody_holds_is_freed_when_its_task_finishes() {
    run(vec![Op::Submit { args: vec![], stored_return: true }, Op::Drop(0), Op::Finish { pick: 0, ok: true }]);
}
