//! The owner's table and the submitter: what a process knows about the objects it owns and
//! the tasks it submitted, and the leases it pushes them through.
//!
//! All of it lives in one [`OwnerState`] behind the runtime's mutex. Who changes what:
//! - the caller's thread: `submit`, `put`, reference drops, `cancel`;
//! - a leased worker's reader thread: replies (`on_done`, `on_failed`, `on_requeued`) and
//!   the loss of that worker;
//! - the node connection's reader thread: lease grants, refusals, recalls, worker deaths;
//! - the housekeeping thread: returning leases idle too long.
//!
//! Object life: `Pending` → `Inline` | `Stored` | `Failed`, never back. An entry is removed
//! when it is no longer pending and both its counts are zero: `local` (live `ObjectRef`
//! handles in this process) and `submitted` (tasks not yet finished that take it as an
//! argument). A pending entry whose counts reach zero stays until its task finishes and is
//! then removed at once; removing a stored object tells the node to delete it.
//!
//! Task life: `WaitingDeps(n)` → `Queued` → `Pushed` → removed on reply. A worker that blocks
//! sends back the tasks it has not started (`Queued` again); a worker that dies sends its
//! `Pushed` tasks back to `Queued` while retries last, and fails them after.

use crate::error::Error;
use ferry_proto::msg::{Arg, Return, Shape, TaskSpec, ToNode, ToWorker};
use ferry_proto::{Conn, NodeId, ObjectId, TaskId, WorkerId};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

/// A task argument as the owner keeps it until the task is pushed.
#[derive(Clone, Debug)]
pub(crate) enum ArgDraft {
    /// An encoded value, passed inline.
    Value(Vec<u8>),
    /// An object this process owns; resolved to its value or location before the push.
    Ref(ObjectId),
}

/// Where a ready object's value is.
#[derive(Clone, Debug)]
pub(crate) enum Ready {
    Inline(Arc<Vec<u8>>),
    /// In the store of `node`. `view` is this process's mapping of it, once made: the
    /// process that wrote an object keeps it mapped (as a plasma client does), and a later
    /// `get` is then a pointer copy, not an `open` + `mmap`. Dropped with the entry.
    Stored {
        size: u64,
        node: NodeId,
        view: Option<ferry_store::ObjectView>,
    },
}

#[derive(Debug)]
pub(crate) enum ObjState {
    Pending,
    Ready(Ready),
    Failed(Error),
}

#[derive(Debug)]
pub(crate) struct ObjEntry {
    pub state: ObjState,
    pub local: u32,
    pub submitted: u32,
    pub waiters: Vec<Waker>,
    /// Tasks waiting for this object before they can be pushed.
    pub dependents: Vec<TaskId>,
}

impl ObjEntry {
    fn new(state: ObjState, local: u32) -> ObjEntry {
        ObjEntry {
            state,
            local,
            submitted: 0,
            waiters: Vec::new(),
            dependents: Vec::new(),
        }
    }
    fn wake(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TaskState {
    WaitingDeps(u32),
    Queued,
    Pushed { lease: u64, worker: WorkerId },
}

#[derive(Debug)]
struct TaskEntry {
    function: &'static str,
    name: Arc<str>,
    args: Vec<ArgDraft>,
    class: usize,
    depth: u32,
    retries_left: u32,
    state: TaskState,
    ret: ObjectId,
}

#[derive(Debug)]
struct Lease {
    worker: WorkerId,
    conn: Arc<Conn>,
    class: usize,
    in_flight: usize,
    /// The worker told us its running task waits in `get`: push nothing more until it
    /// finishes that task.
    blocked: bool,
    idle_since: Option<Instant>,
    /// A `Steal` is outstanding on this lease.
    stealing: bool,
}

#[derive(Debug, Default)]
struct Class {
    shape: Shape,
    queue: VecDeque<TaskId>,
    leases: Vec<u64>,
    pending_requests: usize,
}

/// Effects the state machine asks the runtime to carry out after the lock is released.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub to_node: Vec<ToNode>,
    pub pushes: Vec<(Arc<Conn>, ToWorker)>,
}

/// Tunables the table needs.
#[derive(Debug, Clone)]
pub(crate) struct OwnerLimits {
    pub max_in_flight: usize,
    pub max_pending_requests: usize,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct OwnerState {
    pub me: WorkerId,
    /// Nesting depth of the tasks this process submits.
    pub depth: u32,
    pub objects: HashMap<ObjectId, ObjEntry>,
    tasks: HashMap<TaskId, TaskEntry>,
    classes: Vec<Class>,
    class_ids: HashMap<Shape, usize>,
    leases: HashMap<u64, Lease>,
    lease_requests: HashMap<u64, usize>,
    next_seq: u64,
    next_req: u64,
    limits: OwnerLimits,
    /// Set at shutdown: everything pending fails with this.
    pub stopped: Option<Error>,
    /// The node is short of resources: give leases back as soon as they are idle.
    pub node_short: bool,
}

impl OwnerState {
    pub fn new(me: WorkerId, limits: OwnerLimits) -> OwnerState {
        OwnerState {
            me,
            depth: 1,
            objects: HashMap::default(),
            tasks: HashMap::default(),
            classes: Vec::new(),
            class_ids: HashMap::default(),
            leases: HashMap::default(),
            lease_requests: HashMap::default(),
            next_seq: 1,
            next_req: 1,
            limits,
            stopped: None,
            node_short: false,
        }
    }

    fn next_id(&mut self) -> TaskId {
        let seq = self.next_seq;
        self.next_seq += 1;
        TaskId {
            owner: self.me,
            seq,
        }
    }

    fn class_of(&mut self, shape: &Shape) -> usize {
        if let Some(c) = self.class_ids.get(shape) {
            return *c;
        }
        let id = self.classes.len();
        self.classes.push(Class {
            shape: shape.clone(),
            ..Default::default()
        });
        self.class_ids.insert(shape.clone(), id);
        id
    }

    /// Records a new owned object with one local handle, already in `state`.
    pub fn new_object(&mut self, state: ObjState) -> ObjectId {
        let id = ObjectId {
            task: self.next_id(),
            index: 0,
        };
        self.objects.insert(id, ObjEntry::new(state, 1));
        id
    }

    /// Keeps this process's mapping of a stored object for later gets.
    pub fn cache_view(&mut self, id: ObjectId, v: ferry_store::ObjectView) {
        if let Some(ObjEntry {
            state: ObjState::Ready(Ready::Stored { view, .. }),
            ..
        }) = self.objects.get_mut(&id)
        {
            view.get_or_insert(v);
        }
    }

    pub fn add_local_ref(&mut self, id: ObjectId) {
        if let Some(e) = self.objects.get_mut(&id) {
            e.local += 1;
        }
    }

    pub fn remove_local_ref(&mut self, id: ObjectId, fx: &mut Effects) {
        if let Some(e) = self.objects.get_mut(&id) {
            e.local = e.local.saturating_sub(1);
            self.maybe_free(id, fx);
        }
    }

    fn maybe_free(&mut self, id: ObjectId, fx: &mut Effects) {
        let Some(e) = self.objects.get(&id) else {
            return;
        };
        if e.local > 0 || e.submitted > 0 || matches!(e.state, ObjState::Pending) {
            return;
        }
        let e = self.objects.remove(&id).expect("checked");
        if let ObjState::Ready(Ready::Stored { .. }) = e.state {
            fx.to_node.push(ToNode::Free { objects: vec![id] });
        }
    }

    /// Records a task and returns its return object's id (with one local handle).
    pub fn submit(
        &mut self,
        function: &'static str,
        name: Arc<str>,
        args: Vec<ArgDraft>,
        shape: &Shape,
        max_retries: u32,
        fx: &mut Effects,
    ) -> ObjectId {
        let task = self.next_id();
        let ret = ObjectId { task, index: 0 };
        self.objects
            .insert(ret, ObjEntry::new(ObjState::Pending, 1));
        let class = self.class_of(shape);
        let mut waiting = 0;
        let mut failed = None;
        for a in &args {
            if let ArgDraft::Ref(id) = a {
                match self.objects.get_mut(id) {
                    Some(e) => {
                        e.submitted += 1;
                        match &e.state {
                            ObjState::Pending => {
                                waiting += 1;
                                e.dependents.push(task);
                            }
                            ObjState::Failed(err) => failed = Some(err.clone()),
                            ObjState::Ready(_) => {}
                        }
                    }
                    None => {
                        failed = Some(Error::ObjectLost {
                            object: *id,
                            reason: "this process does not own the object (passing borrowed refs is not supported yet)"
                                .into(),
                        })
                    }
                }
            }
        }
        let state = if waiting > 0 {
            TaskState::WaitingDeps(waiting)
        } else {
            TaskState::Queued
        };
        let depth = self.depth;
        self.tasks.insert(
            task,
            TaskEntry {
                function,
                name,
                args,
                class,
                depth,
                retries_left: max_retries,
                state,
                ret,
            },
        );
        if let Some(err) = failed.or_else(|| self.stopped.clone()) {
            self.fail_task(task, err, fx);
        } else if waiting == 0 {
            self.classes[class].queue.push_back(task);
            self.pump(class, fx);
        }
        ret
    }

    /// Pushes queued tasks of `class` to its leases, and asks for more leases if the queue
    /// is still not empty.
    fn pump(&mut self, class: usize, fx: &mut Effects) {
        let max = self.limits.max_in_flight;
        loop {
            if self.classes[class].queue.is_empty() {
                break;
            }
            // The least loaded usable lease of the class.
            let best = self.classes[class]
                .leases
                .iter()
                .filter_map(|l| self.leases.get(l).map(|s| (*l, s)))
                .filter(|(_, s)| !s.blocked && s.in_flight < max)
                .min_by_key(|(_, s)| s.in_flight)
                .map(|(l, _)| l);
            let Some(lease_id) = best else { break };
            let mut batch = Vec::new();
            loop {
                let lease = &self.leases[&lease_id];
                if lease.in_flight >= max {
                    break;
                }
                let Some(task) = self.classes[class].queue.pop_front() else {
                    break;
                };
                match self.build_spec(task) {
                    Ok(spec) => {
                        let lease = self.leases.get_mut(&lease_id).expect("lease");
                        lease.in_flight += 1;
                        lease.idle_since = None;
                        let worker = lease.worker;
                        if let Some(t) = self.tasks.get_mut(&task) {
                            t.state = TaskState::Pushed {
                                lease: lease_id,
                                worker,
                            };
                        }
                        batch.push(spec);
                    }
                    Err(e) => self.fail_task(task, e, fx),
                }
            }
            if !batch.is_empty() {
                fx.pushes
                    .push((self.leases[&lease_id].conn.clone(), ToWorker::Push(batch)));
            }
        }
        if self.node_short && self.classes[class].queue.is_empty() {
            self.return_idle_leases(None, fx);
        }
        let c = &mut self.classes[class];
        let want = c.queue.len().min(self.limits.max_pending_requests);
        while c.pending_requests < want {
            let req = self.next_req;
            self.next_req += 1;
            c.pending_requests += 1;
            self.lease_requests.insert(req, class);
            fx.to_node.push(ToNode::RequestLease {
                req,
                shape: c.shape.clone(),
                depth: self.depth,
            });
        }
    }

    fn build_spec(&self, task: TaskId) -> Result<TaskSpec, Error> {
        let t = &self.tasks[&task];
        let mut args = Vec::with_capacity(t.args.len());
        for a in &t.args {
            args.push(match a {
                ArgDraft::Value(v) => Arg::Inline(v.clone()),
                ArgDraft::Ref(id) => match self.objects.get(id).map(|e| &e.state) {
                    Some(ObjState::Ready(Ready::Inline(b))) => Arg::Inline(b.to_vec()),
                    Some(ObjState::Ready(Ready::Stored { size, node, .. })) => Arg::Stored {
                        object: *id,
                        size: *size,
                        node: *node,
                    },
                    Some(ObjState::Failed(e)) => return Err(e.clone()),
                    Some(ObjState::Pending) | None => {
                        return Err(Error::ObjectLost {
                            object: *id,
                            reason: "argument vanished before its task ran".into(),
                        })
                    }
                },
            });
        }
        Ok(TaskSpec {
            task,
            function: t.function.to_string(),
            args,
            depth: t.depth,
        })
    }

    /// A task is over: release its arguments.
    fn release_args(&mut self, args: &[ArgDraft], fx: &mut Effects) {
        for a in args {
            if let ArgDraft::Ref(id) = a {
                if let Some(e) = self.objects.get_mut(id) {
                    e.submitted = e.submitted.saturating_sub(1);
                    self.maybe_free(*id, fx);
                }
            }
        }
    }

    /// Gives `id` its final state, wakes its waiters and moves its dependents on.
    fn resolve(&mut self, id: ObjectId, state: ObjState, fx: &mut Effects) {
        let Some(e) = self.objects.get_mut(&id) else {
            // Nobody holds the object any more: drop the value.
            if let ObjState::Ready(Ready::Stored { .. }) = state {
                fx.to_node.push(ToNode::Free { objects: vec![id] });
            }
            return;
        };
        if !matches!(e.state, ObjState::Pending) {
            // Already final (cancelled, or failed at shutdown): the late value is dropped.
            if let ObjState::Ready(Ready::Stored { .. }) = state {
                fx.to_node.push(ToNode::Free { objects: vec![id] });
            }
            return;
        }
        let failed = if let ObjState::Failed(err) = &state {
            Some(err.clone())
        } else {
            None
        };
        e.state = state;
        e.wake();
        let deps = std::mem::take(&mut e.dependents);
        for d in deps {
            match &failed {
                // An error upstream is the error of everything downstream.
                Some(err) => self.fail_task(d, err.clone(), fx),
                None => {
                    let Some(t) = self.tasks.get_mut(&d) else {
                        continue;
                    };
                    if let TaskState::WaitingDeps(n) = &mut t.state {
                        *n -= 1;
                        if *n == 0 {
                            t.state = TaskState::Queued;
                            let class = t.class;
                            self.classes[class].queue.push_back(d);
                            self.pump(class, fx);
                        }
                    }
                }
            }
        }
        self.maybe_free(id, fx);
    }

    /// Fails a task that is not pushed, or whose push is over.
    fn fail_task(&mut self, task: TaskId, err: Error, fx: &mut Effects) {
        let Some(t) = self.tasks.remove(&task) else {
            return;
        };
        if t.state == TaskState::Queued {
            self.classes[t.class].queue.retain(|x| *x != task);
        }
        self.release_args(&t.args, fx);
        self.resolve(t.ret, ObjState::Failed(err), fx);
    }

    fn finish_push(&mut self, task: TaskId) -> Option<TaskEntry> {
        let t = self.tasks.remove(&task)?;
        if let TaskState::Pushed { lease, .. } = t.state {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.in_flight = l.in_flight.saturating_sub(1);
                l.blocked = false;
                if l.in_flight == 0 {
                    l.idle_since = Some(Instant::now());
                }
            }
        }
        Some(t)
    }

    pub fn on_done(&mut self, task: TaskId, mut returns: Vec<Return>, fx: &mut Effects) {
        let Some(t) = self.finish_push(task) else {
            // A task we gave up on (cancelled, failed over): drop what it stored.
            if let Some(Return::Stored { .. }) = returns.first() {
                fx.to_node.push(ToNode::Free {
                    objects: vec![ObjectId { task, index: 0 }],
                });
            }
            return;
        };
        self.release_args(&t.args, fx);
        let state = match returns.pop() {
            Some(Return::Inline(v)) => ObjState::Ready(Ready::Inline(Arc::new(v))),
            Some(Return::Stored { size, node }) => ObjState::Ready(Ready::Stored {
                size,
                node,
                view: None,
            }),
            None => ObjState::Failed(Error::Serialization {
                detail: format!("task {} returned nothing", t.name),
            }),
        };
        self.resolve(t.ret, state, fx);
        self.pump(t.class, fx);
        self.steal(t.class, fx);
    }

    /// When a lease of `class` has nothing to do and nothing is queued, asks the busiest
    /// other lease of the class to hand back half of its unstarted tasks: without this, a
    /// task pipelined behind a long one waits while a worker idles.
    fn steal(&mut self, class: usize, fx: &mut Effects) {
        let c = &self.classes[class];
        if !c.queue.is_empty() {
            return;
        }
        let leases = || {
            c.leases
                .iter()
                .filter_map(|l| self.leases.get(l).map(|s| (*l, s)))
        };
        if !leases().any(|(_, l)| l.in_flight == 0 && !l.blocked) {
            return;
        }
        let victim = leases()
            .filter(|(_, l)| l.in_flight >= 2 && !l.stealing)
            .max_by_key(|(_, l)| l.in_flight);
        if let Some((id, l)) = victim {
            let max = (l.in_flight / 2) as u32;
            fx.pushes.push((l.conn.clone(), ToWorker::Steal { max }));
            self.leases.get_mut(&id).expect("listed").stealing = true;
        }
    }

    /// The answer to a `Steal`: the tasks come back to the queue and go to idle leases.
    pub fn on_stolen(&mut self, worker: WorkerId, tasks: Vec<TaskId>, fx: &mut Effects) {
        for l in self.leases.values_mut().filter(|l| l.worker == worker) {
            l.stealing = false;
        }
        let mut classes = Vec::new();
        for task in tasks.into_iter().rev() {
            let Some(t) = self.tasks.get_mut(&task) else {
                continue;
            };
            if let TaskState::Pushed { lease, .. } = t.state {
                if let Some(l) = self.leases.get_mut(&lease) {
                    l.in_flight = l.in_flight.saturating_sub(1);
                }
                t.state = TaskState::Queued;
                self.classes[t.class].queue.push_front(task);
                classes.push(t.class);
            }
        }
        classes.dedup();
        for c in classes {
            self.pump(c, fx);
        }
    }

    pub fn on_failed(&mut self, task: TaskId, err: ferry_proto::msg::TaskError, fx: &mut Effects) {
        let Some(t) = self.finish_push(task) else {
            return;
        };
        self.release_args(&t.args, fx);
        self.resolve(t.ret, ObjState::Failed(Error::from_task(&t.name, err)), fx);
        self.pump(t.class, fx);
        self.steal(t.class, fx);
    }

    /// The worker of `lease` blocked and handed back tasks it had not started.
    pub fn on_requeued(&mut self, tasks: Vec<TaskId>, fx: &mut Effects) {
        let mut classes = Vec::new();
        for task in tasks.into_iter().rev() {
            let Some(t) = self.tasks.get_mut(&task) else {
                continue;
            };
            if let TaskState::Pushed { lease, .. } = t.state {
                if let Some(l) = self.leases.get_mut(&lease) {
                    l.in_flight = l.in_flight.saturating_sub(1);
                    l.blocked = true;
                }
                t.state = TaskState::Queued;
                self.classes[t.class].queue.push_front(task);
                classes.push(t.class);
            }
        }
        classes.dedup();
        for c in classes {
            self.pump(c, fx);
        }
    }

    /// A lease request was granted.
    pub fn on_lease_granted(
        &mut self,
        req: u64,
        lease: u64,
        worker: WorkerId,
        conn: Arc<Conn>,
        fx: &mut Effects,
    ) {
        let Some(class) = self.lease_requests.remove(&req) else {
            fx.to_node.push(ToNode::ReturnLease { lease, kill: false });
            return;
        };
        let c = &mut self.classes[class];
        c.pending_requests -= 1;
        c.leases.push(lease);
        self.leases.insert(
            lease,
            Lease {
                worker,
                conn,
                class,
                in_flight: 0,
                blocked: false,
                idle_since: Some(Instant::now()),
                stealing: false,
            },
        );
        self.pump(class, fx);
    }

    /// The worker behind a granted lease could not be reached.
    pub fn on_lease_unreachable(
        &mut self,
        req: u64,
        lease: u64,
        worker: WorkerId,
        fx: &mut Effects,
    ) {
        fx.to_node.push(ToNode::ReturnLease { lease, kill: true });
        if let Some(class) = self.lease_requests.remove(&req) {
            self.classes[class].pending_requests -= 1;
            self.pump(class, fx);
        }
        let _ = worker;
    }

    pub fn on_lease_infeasible(&mut self, req: u64, reason: String, fx: &mut Effects) {
        let Some(class) = self.lease_requests.remove(&req) else {
            return;
        };
        self.classes[class].pending_requests -= 1;
        let queued: Vec<TaskId> = self.classes[class].queue.drain(..).collect();
        for t in queued {
            let name = self
                .tasks
                .get(&t)
                .map(|t| t.name.to_string())
                .unwrap_or_default();
            self.fail_task(
                t,
                Error::Infeasible {
                    task: name,
                    detail: reason.clone(),
                },
                fx,
            );
        }
    }

    /// A worker is gone: its leases end, and what it was running is retried or failed.
    pub fn on_worker_lost(&mut self, worker: WorkerId, detail: &str, fx: &mut Effects) {
        let dead: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.worker == worker)
            .map(|(id, _)| *id)
            .collect();
        let mut classes = Vec::new();
        for id in dead {
            if let Some(l) = self.leases.remove(&id) {
                self.classes[l.class].leases.retain(|x| *x != id);
                classes.push(l.class);
            }
        }
        let lost: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, TaskState::Pushed { worker: w, .. } if w == worker))
            .map(|(id, _)| *id)
            .collect();
        for task in lost {
            let t = self.tasks.get_mut(&task).expect("listed");
            if t.retries_left > 0 {
                t.retries_left -= 1;
                t.state = TaskState::Queued;
                self.classes[t.class].queue.push_front(task);
                classes.push(t.class);
            } else {
                let name = t.name.to_string();
                t.state = TaskState::Queued;
                let class = t.class;
                self.classes[class].queue.push_front(task);
                self.fail_task(
                    task,
                    Error::WorkerDied {
                        task: name,
                        detail: detail.to_string(),
                    },
                    fx,
                );
            }
        }
        classes.sort_unstable();
        classes.dedup();
        for c in classes {
            self.pump(c, fx);
        }
    }

    /// Returns leases with nothing to do: all of them if `older_than` is `None` (the daemon
    /// asked), else those idle since before it.
    pub fn return_idle_leases(&mut self, older_than: Option<Instant>, fx: &mut Effects) {
        let idle: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| {
                l.in_flight == 0
                    && self.classes[l.class].queue.is_empty()
                    && match (older_than, l.idle_since) {
                        (None, _) => true,
                        (Some(t), Some(since)) => since <= t,
                        (Some(_), None) => false,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            let l = self.leases.remove(&id).expect("listed");
            self.classes[l.class].leases.retain(|x| *x != id);
            fx.to_node.push(ToNode::ReturnLease {
                lease: id,
                kill: false,
            });
        }
    }

    /// Cancels the task that creates `id` if it has not finished.
    pub fn cancel(&mut self, id: ObjectId, fx: &mut Effects) {
        let task = id.task;
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        let name = t.name.to_string();
        match t.state {
            TaskState::Pushed { lease, .. } => {
                // The worker drops it if not started; the result is final now either way and
                // a late reply is ignored (and its stored value freed).
                if let Some(l) = self.leases.get(&lease) {
                    fx.pushes.push((l.conn.clone(), ToWorker::Cancel { task }));
                }
                let ret = t.ret;
                self.resolve(ret, ObjState::Failed(Error::Cancelled { task: name }), fx);
            }
            TaskState::Queued | TaskState::WaitingDeps(_) => {
                // Dependents' lists may still name it; they skip tasks they cannot find.
                self.fail_task(task, Error::Cancelled { task: name }, fx);
            }
        }
    }

    /// Fails every pending object (shutdown).
    pub fn fail_all(&mut self, err: Error, fx: &mut Effects) {
        self.stopped = Some(err.clone());
        let tasks: Vec<TaskId> = self.tasks.keys().copied().collect();
        for t in tasks {
            self.fail_task(t, err.clone(), fx);
        }
    }
}
