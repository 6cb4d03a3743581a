//! Scheduling policy of one node: resources, lease requests and the worker pool.
//!
//! [`Scheduler`] is a state machine: the daemon feeds it events (a lease request, a worker
//! that registered or died, a lease returned, a worker blocked in `get`, a clock tick) and
//! carries out the [`Action`]s it returns (grant, refuse, start or kill a worker, ask
//! owners to return idle leases).
//!
//! **Architecture Invariant:** no IO, no clock, no threads here: time comes in as an
//! argument, effects go out as values. That is what lets the tests below drive every
//! interleaving directly.
//!
//! Resource accounting: a granted lease takes its shape from `available`; a worker blocked
//! in `get` gives its CPUs back (so nested tasks can run) and takes them again when it
//! resumes, which may briefly drive `available` negative (then nothing new is granted until
//! it recovers). Invariant: `available + Σ(held by unblocked leases) + Σ(non-CPU of blocked
//! leases) == total`.

mod fair;
pub mod groups;
pub mod place;
mod preempt;

use ferry_types::{Priority, Shape, WorkerId, CPU};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A connection to the daemon (an owner process).
pub type ConnId = u64;
/// A granted lease.
pub type LeaseId = u64;

/// Worker processes started and not yet registered, at most.
pub const MAX_STARTING: usize = 16;

/// What the daemon must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Grant {
        conn: ConnId,
        req: u64,
        lease: LeaseId,
        worker: WorkerId,
    },
    Infeasible {
        conn: ConnId,
        req: u64,
        reason: String,
    },
    /// Start one more worker process; report it with [`Scheduler::worker_registered`].
    StartWorker,
    KillWorker {
        worker: WorkerId,
    },
    /// Ask an idle worker beyond the warm pool to exit. It does unless it owns objects or
    /// tasks still in use (as in Ray, such a worker is not idle): then it says so and is kept
    /// ([`Scheduler::keep`]); otherwise its death is reported as any other.
    Retire {
        worker: WorkerId,
    },
    /// The node is short: this owner should return leases it is not using, now and as soon
    /// as any goes idle, until `EndRecall`.
    Recall {
        conn: ConnId,
    },
    /// The node is no longer short: the owner may keep idle leases again.
    EndRecall {
        conn: ConnId,
    },
    /// Stop this best-effort worker where it is (its CPUs went to real-time work); it loses
    /// nothing and goes on after [`Action::Resume`].
    Suspend {
        worker: WorkerId,
    },
    /// Let a suspended worker go on.
    Resume {
        worker: WorkerId,
    },
    /// Drop this worker to the lowest CPU priority (nice 19) for good: it runs best-effort
    /// work from now on, so every other thread on the host, the node's and real-time
    /// workers' included, preempts it at once. A process cannot raise its priority again
    /// unprivileged, so such a worker is leased for best-effort work only.
    Lower {
        worker: WorkerId,
    },
    /// Reset (REEF): this lease is taken back for good, its resources given to other work
    /// already. The worker is stopped at once; its holder is told (it sends the lease back
    /// to be killed, and runs the task again without charging a retry) and the worker is
    /// killed within [`PREEMPT_GRACE`] either way. `memory`: to free memory, not for
    /// real-time work. An actor's lease ([`Scheduler::protect`] keeps those that cannot
    /// restart) is ended by killing the worker: its restart is the reset.
    Preempt {
        conn: ConnId,
        worker: WorkerId,
        memory: bool,
    },
    /// Fair sharing: the job holding this lease has more than its share of the node while
    /// another job waits; its holder should give it back once the task running on it ends
    /// (pushing it no more, taking back what waits there).
    Reclaim {
        conn: ConnId,
        lease: LeaseId,
    },
}

/// The job a lease request is for, and its weight: the CPUs of a node whose jobs all want
/// more than it has are shared in proportion to their weights (see [`Scheduler::tick`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Share {
    /// 0: no job (an actor's worker, a tool): never reclaimed.
    pub job: u64,
    /// `None`: the job's weight as last given, else 1.
    pub weight: Option<u32>,
}

/// The window of fair sharing: CPU-seconds used count half after this long.
pub const FAIR_HALF_LIFE: Duration = Duration::from_secs(10);

/// A preempted worker whose holder does not give its lease back within this is killed.
pub const PREEMPT_GRACE: Duration = Duration::from_secs(2);

/// Tunables of the pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Workers started ahead of need and kept even when idle.
    pub prestart: usize,
    /// Upper bound on worker processes (blocked workers count).
    pub max_workers: usize,
    /// Idle workers beyond `prestart` are stopped after this long.
    pub idle_timeout: Duration,
    /// A best-effort lease suspended this long is reset instead ([`Action::Preempt`]): its
    /// task runs again from the start, maybe on another node, rather than hold its memory
    /// and wait for real-time work that keeps the CPUs this long.
    pub reset_after: Duration,
}

#[derive(Clone, Debug)]
enum WorkerState {
    Idle {
        since: Instant,
    },
    Leased {
        lease: LeaseId,
        owner: ConnId,
        shape: Shape,
        blocked: bool,
        priority: Priority,
        /// Stopped, its CPUs lent to real-time work ([`Action::Suspend`]).
        suspended: bool,
        /// The job it runs for (see [`Share`]).
        job: u64,
    },
    /// Asked to exit ([`Action::Retire`]) and not yet gone or kept: not leased meanwhile.
    /// `stale`: it runs a binary the node no longer runs (see [`Scheduler::retire_idle`]), so
    /// it is never kept.
    Retiring {
        since: Instant,
        stale: bool,
    },
    /// Runs a binary the node no longer runs but owns objects or tasks still in use: never
    /// leased, not part of the pool, asked again to retire after each idle timeout.
    Draining {
        since: Instant,
    },
    /// Preempted by reset ([`Action::Preempt`]): stopped, its resources given back already,
    /// killed when its holder returns the lease or when [`PREEMPT_GRACE`] has passed.
    /// `since` is `None` until the first tick sees it.
    Preempting {
        lease: LeaseId,
        owner: ConnId,
        since: Option<Instant>,
    },
}

impl WorkerState {
    /// A best-effort lease running (not blocked, not suspended) on CPUs it could lend by
    /// being suspended: its lease and those CPUs.
    fn suspendable(&self) -> Option<(LeaseId, i64)> {
        match self {
            WorkerState::Leased {
                lease,
                shape,
                blocked: false,
                priority: Priority::BestEffort,
                suspended: false,
                ..
            } if shape.get_milli(CPU) > 0 => Some((*lease, shape.get_milli(CPU) as i64)),
            _ => None,
        }
    }
}

/// A worker asked to retire that neither exits nor answers within this is killed.
pub const RETIRE_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
struct Request {
    conn: ConnId,
    req: u64,
    shape: Shape,
    depth: u32,
    priority: Priority,
    job: u64,
}

/// A queued request taken out to go elsewhere: its connection, id, shape and depth.
pub type Moved = (ConnId, u64, Shape, u32);

/// The largest amount of one resource a request may ask for (in thousandths, as shapes count
/// them): far beyond any node's, and small enough that sums of them stay in range.
pub const MAX_AMOUNT: u64 = 1 << 50;

/// The node's scheduler. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    total: BTreeMap<String, i64>,
    available: BTreeMap<String, i64>,
    workers: HashMap<WorkerId, WorkerState>,
    /// Idle workers, most recently used last (reused first: warm caches).
    idle: Vec<WorkerId>,
    queue: VecDeque<Request>,
    leases: HashMap<LeaseId, WorkerId>,
    starting: usize,
    next_lease: LeaseId,
    /// Owners told the node is short (and not yet told it no longer is).
    recalled: BTreeSet<ConnId>,
    /// Suspended best-effort workers, in the order they were suspended (resumed oldest
    /// first), and how many suspensions there were in all.
    suspended: Vec<WorkerId>,
    suspensions: u64,
    /// Workers lowered to the lowest CPU priority ([`Action::Lower`]): best-effort only.
    lowered: BTreeSet<WorkerId>,
    /// When each suspended worker was first seen suspended by a tick (see
    /// [`PoolOptions::reset_after`]).
    suspended_seen: HashMap<WorkerId, Instant>,
    /// Leases that must never be reset (actors with no restarts left), and resets so far.
    protected: BTreeSet<WorkerId>,
    resets: u64,
    /// Fair sharing: each job's weight, its CPU-seconds (decayed, see [`FAIR_HALF_LIFE`]),
    /// when they were last counted, and the leases asked back.
    weights: HashMap<u64, u32>,
    usage: HashMap<u64, f64>,
    counted: Option<Instant>,
    reclaiming: BTreeSet<LeaseId>,
    opts: PoolOptions,
}

impl Scheduler {
    /// A scheduler for a node with `total` resources. Returns the actions that prestart
    /// the pool.
    pub fn new(total: &Shape, opts: PoolOptions) -> (Scheduler, Vec<Action>) {
        let total: BTreeMap<String, i64> = total.0.iter().map(|(n, v)| (n.clone(), *v as i64)).collect();
        let mut s = Scheduler {
            available: total.clone(),
            total,
            workers: HashMap::new(),
            idle: Vec::new(),
            queue: VecDeque::new(),
            leases: HashMap::new(),
            starting: 0,
            next_lease: 1,
            recalled: BTreeSet::new(),
            suspended: Vec::new(),
            suspensions: 0,
            lowered: BTreeSet::new(),
            suspended_seen: HashMap::new(),
            protected: BTreeSet::new(),
            resets: 0,
            weights: HashMap::new(),
            usage: HashMap::new(),
            counted: None,
            reclaiming: BTreeSet::new(),
            opts,
        };
        let n = s.opts.prestart.min(s.opts.max_workers);
        s.starting = n;
        (s, vec![Action::StartWorker; n])
    }

    /// An owner asks for a worker for tasks of `shape` at nesting `depth` and `priority`.
    ///
    /// Higher priorities go first; within one, deeper requests go first (stable among
    /// equals). Nested tasks then run depth-first,
    /// which bounds the number of workers blocked in `get` by about depth × CPUs; served in
    /// arrival order, a tree of tasks would start breadth-first and block a worker for
    /// nearly every inner node.
    pub fn request(&mut self, conn: ConnId, req: u64, shape: Shape, depth: u32, priority: Priority) -> Vec<Action> {
        self.request_for(conn, req, shape, depth, priority, Share::default())
    }

    /// [`Self::request`] for a job: between jobs, the one that used least of its share goes
    /// first (after priority, before depth).
    pub fn request_for(
        &mut self,
        conn: ConnId,
        req: u64,
        shape: Shape,
        depth: u32,
        priority: Priority,
        share: Share,
    ) -> Vec<Action> {
        if let Some(w) = share.weight {
            self.weights.insert(share.job, w.clamp(1, 1_000_000));
        }
        // Amounts past any node's are refused here, so the accounts below (signed, summed)
        // never overflow on what a peer asked for.
        if shape.0.iter().any(|(_, v)| *v > MAX_AMOUNT) {
            let reason = format!("the task needs {shape}: more than any node can have");
            return vec![Action::Infeasible { conn, req, reason }];
        }
        let pos = self.queue.iter().position(|r| (r.priority, r.depth) < (priority, depth)).unwrap_or(self.queue.len());
        self.queue.insert(pos, Request { conn, req, shape, depth, priority, job: share.job });
        self.schedule()
    }

    /// Takes out of the queue the requests that wait for resources this node does not have
    /// free (not those merely waiting for a worker to start) and that `elsewhere` finds room
    /// for on another node; returns them, with what the queue's change sets off here.
    pub fn take_short(&mut self, mut elsewhere: impl FnMut(ConnId, u64, &Shape) -> bool) -> (Vec<Moved>, Vec<Action>) {
        let mut provisional = self.available.clone();
        let mut moved = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            let Request { conn, req, ref shape, .. } = self.queue[i];
            if Self::fits(&provisional, shape) {
                for (n, v) in &shape.0 {
                    *provisional.entry(n.clone()).or_insert(0) -= *v as i64;
                }
                i += 1;
            } else if elsewhere(conn, req, shape) {
                let r = self.queue.remove(i).expect("index checked");
                moved.push((r.conn, r.req, r.shape, r.depth));
            } else {
                i += 1;
            }
        }
        let actions = if moved.is_empty() { Vec::new() } else { self.schedule() };
        (moved, actions)
    }

    /// The job's binary changed: every idle worker (which runs the old one) is asked to
    /// retire, for good (one that owns objects in use drains: it stays out of the pool until
    /// it owns none), and fresh ones start to keep the pool's size.
    pub fn retire_idle(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for s in self.workers.values_mut() {
            if let WorkerState::Retiring { stale, .. } = s {
                *stale = true;
            }
        }
        for w in std::mem::take(&mut self.idle) {
            self.workers.insert(w, WorkerState::Retiring { since: now, stale: true });
            actions.push(Action::Retire { worker: w });
        }
        while self.pool_len() + self.starting < self.opts.prestart {
            self.starting += 1;
            actions.push(Action::StartWorker);
        }
        actions.extend(self.schedule());
        actions
    }

    /// Workers of the pool: all but those on their way out (retiring) or of an old binary.
    fn pool_len(&self) -> usize {
        self.workers
            .values()
            .filter(|s| !matches!(s, WorkerState::Retiring { .. } | WorkerState::Draining { .. }))
            .count()
    }

    /// The worker a lease is on.
    pub fn lease_worker(&self, lease: LeaseId) -> Option<WorkerId> {
        self.leases.get(&lease).copied()
    }

    /// A started worker process has connected and is ready for work.
    pub fn worker_registered(&mut self, worker: WorkerId, now: Instant) -> Vec<Action> {
        self.starting = self.starting.saturating_sub(1);
        self.workers.insert(worker, WorkerState::Idle { since: now });
        self.idle.push(worker);
        self.schedule()
    }

    /// Starting a worker failed (the daemon could not spawn it).
    pub fn worker_start_failed(&mut self) -> Vec<Action> {
        self.starting = self.starting.saturating_sub(1);
        Vec::new()
    }

    /// The owner on `conn` gives lease `lease` back. Returns no actions for an unknown
    /// lease or one held by another connection (a confused or hostile peer).
    pub fn return_lease(&mut self, conn: ConnId, lease: LeaseId, kill: bool, now: Instant) -> Vec<Action> {
        let Some(&worker) = self.leases.get(&lease) else {
            return Vec::new();
        };
        match self.workers.get(&worker) {
            Some(WorkerState::Leased { owner, .. }) if *owner == conn => {}
            Some(WorkerState::Preempting { owner, .. }) if *owner == conn => {
                // The holder gave the preempted lease back: its worker goes now.
                self.leases.remove(&lease);
                self.workers.remove(&worker);
                self.forget(worker);
                let mut actions = vec![Action::KillWorker { worker }];
                actions.extend(self.schedule());
                return actions;
            }
            _ => return Vec::new(),
        }
        self.leases.remove(&lease);
        self.reclaiming.remove(&lease);
        self.protected.remove(&worker);
        let Some(WorkerState::Leased { shape, blocked, suspended, .. }) = self.workers.remove(&worker) else {
            unreachable!("checked above")
        };
        self.release(&shape, blocked || suspended);
        let mut actions = Vec::new();
        if suspended {
            // Given back while stopped (its owner cancelled, say): it must not idle stopped.
            self.suspended.retain(|w| *w != worker);
            actions.push(Action::Resume { worker });
        }
        if kill {
            actions.push(Action::KillWorker { worker });
        } else {
            self.workers.insert(worker, WorkerState::Idle { since: now });
            self.idle.push(worker);
        }
        actions.extend(self.schedule());
        actions
    }

    /// A worker process is gone (exited, killed, or its connection broke).
    pub fn worker_died(&mut self, worker: WorkerId) -> Vec<Action> {
        self.forget(worker);
        match self.workers.remove(&worker) {
            Some(WorkerState::Leased { lease, shape, blocked, suspended, .. }) => {
                self.leases.remove(&lease);
                self.reclaiming.remove(&lease);
                self.release(&shape, blocked || suspended);
                self.suspended.retain(|w| *w != worker);
            }
            Some(WorkerState::Preempting { lease, .. }) => {
                self.leases.remove(&lease);
            }
            Some(WorkerState::Idle { .. }) => self.idle.retain(|w| *w != worker),
            Some(WorkerState::Retiring { .. } | WorkerState::Draining { .. }) => {}
            None => return Vec::new(),
        }
        let mut actions = Vec::new();
        // Keep the warm pool at its size.
        if self.pool_len() + self.starting < self.opts.prestart {
            self.starting += 1;
            actions.push(Action::StartWorker);
        }
        actions.extend(self.schedule());
        actions
    }

    /// The task running on `worker` waits in `get`: lend its CPUs to other work.
    pub fn blocked(&mut self, worker: WorkerId) -> Vec<Action> {
        if let Some(WorkerState::Leased { shape, blocked, suspended, .. }) = self.workers.get_mut(&worker) {
            if !*blocked {
                *blocked = true;
                if *suspended {
                    return Vec::new(); // its CPUs are lent already
                }
                let cpu = shape.get_milli(CPU) as i64;
                *self.available.entry(CPU.to_string()).or_insert(0) += cpu;
                return self.schedule();
            }
        }
        Vec::new()
    }

    /// The waiting task on `worker` resumes: it takes its CPUs back (possibly
    /// oversubscribing the node for a while).
    pub fn unblocked(&mut self, worker: WorkerId) {
        if let Some(WorkerState::Leased { shape, blocked, suspended, .. }) = self.workers.get_mut(&worker) {
            if *blocked {
                *blocked = false;
                if *suspended {
                    return; // it takes them back when resumed
                }
                let cpu = shape.get_milli(CPU) as i64;
                *self.available.entry(CPU.to_string()).or_insert(0) -= cpu;
            }
        }
    }

    /// An owner's connection closed: forget its requests; the workers it leased may still
    /// run its tasks, which nobody wants any more, so they are killed (and replaced).
    pub fn conn_closed(&mut self, conn: ConnId) -> Vec<Action> {
        self.queue.retain(|r| r.conn != conn);
        self.recalled.remove(&conn);
        let held: Vec<WorkerId> = self
            .workers
            .iter()
            .filter_map(|(w, s)| match s {
                WorkerState::Leased { owner, .. } | WorkerState::Preempting { owner, .. } if *owner == conn => Some(*w),
                _ => None,
            })
            .collect();
        let mut actions = Vec::new();
        for w in held {
            actions.push(Action::KillWorker { worker: w });
            actions.extend(self.worker_died(w));
        }
        actions.extend(self.schedule());
        actions
    }

    /// Asks idle workers beyond the warm pool that have been idle too long to retire, and
    /// kills those asked long ago that neither went nor answered.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let stuck: Vec<WorkerId> = self
            .workers
            .iter()
            .filter_map(|(w, s)| match s {
                WorkerState::Retiring { since, .. } if now.duration_since(*since) >= RETIRE_GRACE => Some(*w),
                _ => None,
            })
            .collect();
        for w in stuck {
            actions.push(Action::KillWorker { worker: w });
            actions.extend(self.worker_died(w));
        }
        actions.extend(self.tick_preemption(now));
        self.count_usage(now);
        // Draining workers are asked again, once per idle timeout.
        let due: Vec<WorkerId> = self
            .workers
            .iter()
            .filter_map(|(w, s)| match s {
                WorkerState::Draining { since } if now.duration_since(*since) >= self.opts.idle_timeout => Some(*w),
                _ => None,
            })
            .collect();
        for w in due {
            self.workers.insert(w, WorkerState::Retiring { since: now, stale: true });
            actions.push(Action::Retire { worker: w });
        }
        let mut beyond = self.pool_len().saturating_sub(self.opts.prestart);
        while beyond > 0 {
            // The oldest idle worker is at the front.
            let Some(&w) = self.idle.first() else { break };
            let Some(WorkerState::Idle { since }) = self.workers.get(&w) else {
                break;
            };
            if now.duration_since(*since) < self.opts.idle_timeout {
                break;
            }
            self.idle.remove(0);
            self.workers.insert(w, WorkerState::Retiring { since: now, stale: false });
            actions.push(Action::Retire { worker: w });
            beyond -= 1;
        }
        actions
    }

    /// What is known of a worker that is gone or whose lease ended for good.
    fn forget(&mut self, worker: WorkerId) {
        self.lowered.remove(&worker);
        self.protected.remove(&worker);
        self.suspended_seen.remove(&worker);
    }

    /// A worker asked to retire still owns objects or tasks in use: it stays, idle, and is
    /// asked again after another idle timeout.
    pub fn keep(&mut self, worker: WorkerId, now: Instant) -> Vec<Action> {
        match self.workers.get(&worker) {
            Some(WorkerState::Retiring { stale: false, .. }) => {
                self.workers.insert(worker, WorkerState::Idle { since: now });
                self.idle.push(worker);
                self.schedule()
            }
            Some(WorkerState::Retiring { stale: true, .. }) => {
                // Its binary is no longer the job's: never leased again, but what it owns
                // lives on until it owns nothing.
                self.workers.insert(worker, WorkerState::Draining { since: now });
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A lease's resources come back; `lent`: its CPUs came back already (it was blocked
    /// in `get`, or suspended).
    fn release(&mut self, shape: &Shape, lent: bool) {
        for (n, v) in &shape.0 {
            if lent && n == CPU {
                continue; // already lent back
            }
            *self.available.entry(n.clone()).or_insert(0) += *v as i64;
        }
    }

    fn fits(pool: &BTreeMap<String, i64>, shape: &Shape) -> bool {
        shape.0.iter().all(|(n, v)| pool.get(n).copied().unwrap_or(0) >= *v as i64)
    }

    fn schedule(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.order_by_share();
        self.resume_suspended(&mut actions);
        let mut provisional = self.available.clone();
        let mut need_workers = 0usize;
        let mut short = false;
        let mut i = 0;
        while i < self.queue.len() {
            if !Self::fits(&provisional, &self.queue[i].shape)
                && self.queue[i].priority == Priority::RealTime
                && Self::fits(&self.total, &self.queue[i].shape)
            {
                if !self.has_idle_for(Priority::RealTime) {
                    // A worker starts for it if suspending best-effort work could make room;
                    // that work goes on until the worker is ready.
                    if self.has_suspendable() {
                        need_workers += 1;
                    }
                    short = true;
                    i += 1;
                    continue;
                }
                // Real-time work takes resources from best-effort work at once: CPUs by
                // suspending it, anything else (memory, GPUs) by resetting it.
                let shape = self.queue[i].shape.clone();
                self.reset_for(&shape, &mut provisional, &mut actions);
                self.suspend_for(&shape, &mut provisional, &mut actions);
            }
            let shape = &self.queue[i].shape;
            // A placement group's resources appear when its bundles are committed: a task
            // for one waits for them (the node refuses it if the group is removed).
            if !Self::fits(&self.total, shape) && !shape.0.iter().any(|(n, _)| n.contains("_group_")) {
                let r = self.queue.remove(i).expect("index checked");
                let total = Shape(self.total.iter().map(|(n, v)| (n.clone(), *v as u64)).collect());
                actions.push(Action::Infeasible {
                    conn: r.conn,
                    req: r.req,
                    reason: format!("the task needs {} but the node has {total} in all", r.shape),
                });
                continue;
            }
            if !Self::fits(&provisional, shape) {
                short = true;
                i += 1;
                continue;
            }
            if let Some(worker) = self.take_idle(self.queue[i].priority, &mut actions) {
                let r = self.queue.remove(i).expect("index checked");
                for (n, v) in &r.shape.0 {
                    *self.available.entry(n.clone()).or_insert(0) -= *v as i64;
                    *provisional.entry(n.clone()).or_insert(0) -= *v as i64;
                }
                let lease = self.next_lease;
                self.next_lease += 1;
                self.leases.insert(lease, worker);
                let job = r.job;
                self.workers.insert(
                    worker,
                    WorkerState::Leased {
                        lease,
                        owner: r.conn,
                        shape: r.shape,
                        blocked: false,
                        priority: r.priority,
                        suspended: false,
                        job,
                    },
                );
                actions.push(Action::Grant { conn: r.conn, req: r.req, lease, worker });
                continue;
            }
            for (n, v) in &self.queue[i].shape.0 {
                *provisional.entry(n.clone()).or_insert(0) -= *v as i64;
            }
            need_workers += 1;
            i += 1;
        }
        while self.starting < need_workers && self.workers.len() + self.starting < self.opts.max_workers {
            self.starting += 1;
            actions.push(Action::StartWorker);
        }
        if short {
            self.reclaim_for_fairness(&mut actions);
        }
        if short || !self.suspended.is_empty() {
            // Every holder of a lease learns that the node is short (or that best-effort work
            // waits, suspended, for the leases real-time work holds), including holders that
            // got their lease after the first recall.
            let holders: BTreeSet<ConnId> = self
                .workers
                .values()
                .filter_map(|s| match s {
                    WorkerState::Leased { owner, .. } => Some(*owner),
                    _ => None,
                })
                .collect();
            for conn in holders {
                if self.recalled.insert(conn) {
                    actions.push(Action::Recall { conn });
                }
            }
        } else {
            actions.extend(std::mem::take(&mut self.recalled).into_iter().map(|conn| Action::EndRecall { conn }));
        }
        actions
    }

    /// Suspends best-effort leases, most recently granted first, until `shape` fits in
    /// `provisional`; suspends none if that cannot make it fit (only CPUs are taken).
    fn suspend_for(&mut self, shape: &Shape, provisional: &mut BTreeMap<String, i64>, actions: &mut Vec<Action>) {
        let others_fit = shape.0.iter().all(|(n, v)| n == CPU || provisional.get(n).copied().unwrap_or(0) >= *v as i64);
        if !others_fit {
            return;
        }
        let mut short = shape.get_milli(CPU) as i64 - provisional.get(CPU).copied().unwrap_or(0);
        let mut victims: Vec<(LeaseId, WorkerId, i64)> =
            self.workers.iter().filter_map(|(w, s)| s.suspendable().map(|(lease, cpu)| (lease, *w, cpu))).collect();
        // The most recently started loses the least work if it must wait (REEF's order).
        victims.sort_by_key(|(lease, _, _)| std::cmp::Reverse(*lease));
        let mut chosen = Vec::new();
        for (_, w, cpu) in victims {
            if short <= 0 {
                break;
            }
            chosen.push((w, cpu));
            short -= cpu;
        }
        if short > 0 {
            return;
        }
        for (w, cpu) in chosen {
            if let Some(WorkerState::Leased { suspended, .. }) = self.workers.get_mut(&w) {
                *suspended = true;
            }
            *self.available.entry(CPU.to_string()).or_insert(0) += cpu;
            *provisional.entry(CPU.to_string()).or_insert(0) += cpu;
            self.suspended.push(w);
            self.suspensions += 1;
            actions.push(Action::Suspend { worker: w });
        }
    }

    /// Suspended workers go on, oldest first, as their CPUs come free, unless real-time work
    /// still waits for them.
    fn resume_suspended(&mut self, actions: &mut Vec<Action>) {
        if self.suspended.is_empty() || self.queue.iter().any(|r| r.priority == Priority::RealTime) {
            return;
        }
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.suspended) {
            let Some(WorkerState::Leased { shape, blocked, suspended, .. }) = self.workers.get_mut(&w) else {
                continue;
            };
            let cpu = shape.get_milli(CPU) as i64;
            let free = self.available.get(CPU).copied().unwrap_or(0);
            if !still.is_empty() || (!*blocked && free < cpu) {
                still.push(w);
                continue;
            }
            *suspended = false;
            if !*blocked {
                *self.available.entry(CPU.to_string()).or_insert(0) -= cpu;
            }
            actions.push(Action::Resume { worker: w });
        }
        self.suspended = still;
    }

    /// Whether some best-effort lease holds CPUs it could lend by being suspended.
    fn has_suspendable(&self) -> bool {
        self.workers.values().any(|s| s.suspendable().is_some())
    }

    /// Whether an idle worker may take work of `priority` (lowered workers take only
    /// best-effort work).
    fn has_idle_for(&self, priority: Priority) -> bool {
        priority == Priority::BestEffort || self.idle.iter().any(|w| !self.lowered.contains(w))
    }

    /// An idle worker for work of `priority`, most recently used first: a lowered one for
    /// best-effort work if there is one (else one is lowered), never a lowered one for other
    /// work.
    fn take_idle(&mut self, priority: Priority, actions: &mut Vec<Action>) -> Option<WorkerId> {
        let pos = if priority == Priority::BestEffort {
            self.idle.iter().rposition(|w| self.lowered.contains(w)).or_else(|| self.idle.len().checked_sub(1))
        } else {
            self.idle.iter().rposition(|w| !self.lowered.contains(w))
        }?;
        let w = self.idle.remove(pos);
        if priority == Priority::BestEffort && self.lowered.insert(w) {
            actions.push(Action::Lower { worker: w });
        }
        Some(w)
    }

    /// Best-effort workers suspended now, and suspensions so far.
    pub fn suspensions(&self) -> (usize, u64) {
        (self.suspended.len(), self.suspensions)
    }

    /// Whether `worker` is suspended (stopped for real-time work).
    pub fn is_suspended(&self, worker: WorkerId) -> bool {
        self.suspended.contains(&worker)
    }

    /// Number of worker processes (idle or leased), not counting those starting.
    pub fn num_workers(&self) -> usize {
        self.workers.len()
    }
    pub fn num_idle(&self) -> usize {
        self.idle.len()
    }
    pub fn num_queued(&self) -> usize {
        self.queue.len()
    }
    pub fn total(&self) -> Shape {
        Shape(self.total.iter().map(|(n, v)| (n.clone(), *v as u64)).collect())
    }
    /// Available resources (negative amounts, from oversubscription, show as zero).
    pub fn available(&self) -> Shape {
        Shape(self.available.iter().map(|(n, v)| (n.clone(), (*v).max(0) as u64)).collect())
    }
    /// The owner connection holding `worker`'s lease, if leased.
    pub fn lease_holder(&self, worker: WorkerId) -> Option<ConnId> {
        match self.workers.get(&worker) {
            Some(WorkerState::Leased { owner, .. } | WorkerState::Preempting { owner, .. }) => Some(*owner),
            _ => None,
        }
    }

    /// Takes `shape` out of what is free, for a placement group's bundle (its prepare);
    /// `false`, taking nothing, if it does not fit now. Nothing is preempted for a bundle.
    pub fn reserve(&mut self, shape: &Shape) -> bool {
        if !Self::fits(&self.available, shape) {
            return false;
        }
        for (n, v) in &shape.0 {
            *self.available.entry(n.clone()).or_insert(0) -= *v as i64;
        }
        true
    }

    /// Gives back what [`Self::reserve`] took (a bundle cancelled or removed).
    pub fn unreserve(&mut self, shape: &Shape) -> Vec<Action> {
        self.release(shape, false);
        self.schedule()
    }

    /// New resources, total and free: a committed bundle's renamed resources.
    pub fn add_resources(&mut self, extra: &Shape) -> Vec<Action> {
        for (n, v) in &extra.0 {
            *self.total.entry(n.clone()).or_insert(0) += *v as i64;
            *self.available.entry(n.clone()).or_insert(0) += *v as i64;
        }
        self.schedule()
    }

    /// Takes away what [`Self::add_resources`] added (a bundle removed): the leases holding
    /// any of it are killed first (their tasks and actors were placed in the bundle), and
    /// queued requests for it are refused as infeasible.
    pub fn remove_resources(&mut self, extra: &Shape) -> Vec<Action> {
        let holders: Vec<WorkerId> = self
            .workers
            .iter()
            .filter_map(|(w, s)| match s {
                WorkerState::Leased { shape, .. } if shape.0.iter().any(|(n, _)| extra.get_milli(n) > 0) => Some(*w),
                _ => None,
            })
            .collect();
        let mut actions = Vec::new();
        for w in holders {
            actions.push(Action::KillWorker { worker: w });
            actions.extend(self.worker_died(w));
        }
        for (n, v) in &extra.0 {
            let t = self.total.entry(n.clone()).or_insert(0);
            *t -= *v as i64;
            if *t <= 0 {
                self.total.remove(n);
                self.available.remove(n);
            } else {
                *self.available.entry(n.clone()).or_insert(0) -= *v as i64;
            }
        }
        actions.extend(self.schedule());
        actions
    }

    /// Refuses the queued requests that ask for a resource `doomed` says will never come (a
    /// removed placement group's), with `reason`.
    pub fn refuse_queued(&mut self, doomed: impl Fn(&str) -> bool, reason: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        self.queue.retain(|r| {
            let refuse = r.shape.0.iter().any(|(n, _)| doomed(n));
            if refuse {
                actions.push(Action::Infeasible { conn: r.conn, req: r.req, reason: reason.to_string() });
            }
            !refuse
        });
        actions
    }

    /// Leases reset so far ([`Action::Preempt`]).
    pub fn resets(&self) -> u64 {
        self.resets
    }
}

#[cfg(test)]
mod tests;
