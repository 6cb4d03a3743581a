//! Leases on workers: asking for them, granting, work stealing between the leases of a
//! class, returning idle ones, and losing a worker.

use super::*;

/// A node took back a lease on a worker (reset preemption): why, and which node.
#[derive(Debug)]
pub(crate) struct Preemption {
    node: NodeId,
    memory: bool,
    detail: String,
}

impl OwnerState {
    /// Node `node` took back the lease on `worker` (`FromNode::Preempted`): the lease goes
    /// back to be killed, and when the worker is seen gone what it ran is run again without
    /// charging a retry (see [`Self::on_worker_lost`]).
    pub fn on_preempted(&mut self, node: NodeId, worker: WorkerId, memory: bool, detail: String, fx: &mut Effects) {
        let held: Vec<u64> =
            self.leases.iter().filter(|(_, l)| l.worker == worker && l.node == node).map(|(id, _)| *id).collect();
        if held.is_empty() {
            return; // given back already: the node kills it anyway
        }
        self.preempted.insert(worker, Preemption { node, memory, detail });
        for id in held {
            self.return_lease(id, true, fx);
        }
    }

    /// When a lease of `class` has nothing to do and nothing is queued, asks the busiest
    /// other lease of the class to hand back half of its unstarted tasks: without this, a
    /// task pipelined behind a long one waits while a worker idles.
    pub(super) fn steal(&mut self, class: usize, fx: &mut Effects) {
        let c = &self.classes[class];
        if !c.queue.is_empty() {
            return;
        }
        let leases = || c.leases.iter().filter_map(|l| self.leases.get(l).map(|s| (*l, s)));
        if !leases().any(|(_, l)| l.in_flight == 0 && !l.blocked) {
            return;
        }
        let victim = leases().filter(|(_, l)| l.in_flight >= 2 && !l.stealing).max_by_key(|(_, l)| l.in_flight);
        if let Some((id, l)) = victim {
            let max = (l.in_flight / 2) as u32;
            fx.to_workers.push((l.worker, ToWorker::Steal { max }));
            self.leases.get_mut(&id).expect("listed").stealing = true;
        }
    }

    /// The answer to a `Steal`: the tasks come back to the queue and go to idle leases.
    pub fn on_stolen(&mut self, worker: WorkerId, tasks: Vec<TaskId>, fx: &mut Effects) {
        for l in self.leases.values_mut().filter(|l| l.worker == worker) {
            l.stealing = false;
        }
        self.take_back(tasks, false, fx);
    }

    /// Pushed tasks that a worker hands back unstarted go to the front of their queues, in
    /// order; with `blocked`, their lease gets no more until its running task finishes.
    pub(super) fn take_back(&mut self, tasks: Vec<TaskId>, blocked: bool, fx: &mut Effects) {
        let mut classes = Vec::new();
        for task in tasks.into_iter().rev() {
            let Some(t) = self.tasks.get_mut(&task) else {
                continue;
            };
            if t.cancelled {
                // Handed back unstarted after it was cancelled: it ends here.
                if let TaskState::Pushed { lease, .. } = t.state {
                    if let Some(l) = self.leases.get_mut(&lease) {
                        l.in_flight = l.in_flight.saturating_sub(1);
                    }
                }
                if let Some(t) = self.tasks.remove(&task) {
                    self.task_over(&t, fx);
                }
                continue;
            }
            if let TaskState::Pushed { lease, .. } = t.state {
                if let Some(l) = self.leases.get_mut(&lease) {
                    l.in_flight = l.in_flight.saturating_sub(1);
                    l.blocked |= blocked;
                }
                t.state = TaskState::Queued;
                self.classes[t.class].queue.push_front(task);
                classes.push(t.class);
                self.note_waiting(task, fx);
            }
        }
        classes.dedup();
        // A lease being given back (one-shot, used) that has nothing left goes now: its
        // tasks all came back unstarted, so no reply will return it.
        let done: Vec<u64> =
            self.leases.iter().filter(|(_, l)| l.one_shot && l.used && l.in_flight == 0).map(|(id, _)| *id).collect();
        for id in done {
            self.return_lease(id, false, fx);
        }
        for c in classes {
            self.pump(c, fx);
        }
    }

    /// The worker of a lease blocked in `get` and handed back the tasks it had not started.
    pub fn on_requeued(&mut self, tasks: Vec<TaskId>, fx: &mut Effects) {
        self.take_back(tasks, true, fx);
    }

    /// Asks for one more lease for `class` (of this node's daemon, which may send the request
    /// on to another node: see [`Self::on_lease_spilled`]).
    pub(super) fn request_lease(&mut self, class: usize, prefer: Option<NodeId>, fx: &mut Effects) {
        let req = self.next_req;
        self.next_req += 1;
        // Its job: a worker's tasks belong to its caller's job, never to the worker itself.
        let job = self.classes[class].job;
        let c = &mut self.classes[class];
        c.pending_requests += 1;
        let r = LeaseRequest { class, node: self.node, placement: c.placement.clone(), depth: self.depth, prefer, job };
        self.send_lease_request(req, &r, fx);
        self.lease_requests.insert(req, r);
    }

    fn send_lease_request(&self, req: u64, r: &LeaseRequest, fx: &mut Effects) {
        let shape = self.classes[r.class].shape.clone();
        tracing::debug!(lease_request = req, node = ?r.node, %shape, "requesting a lease");
        let priority = self.classes[r.class].priority;
        let m = ToNode::RequestLease {
            req,
            shape,
            depth: r.depth,
            placement: r.placement.clone(),
            prefer: r.prefer,
            priority,
            job: r.job,
            // Only this process's own job's weight is known here (a worker's nested tasks'
            // job goes by the weight its driver gave).
            weight: if r.job == self.me { self.limits.job_weight } else { None },
        };
        fx.to_daemons.push((Daemon::Node(r.node), m));
    }

    /// A daemon sent lease request `req` on to node `to` (`LeaseSpillback`), which this
    /// process is now connected to: it is asked there, to grant or queue it (`Here`). `to` is
    /// this node if that node could not be reached.
    pub fn on_lease_spilled(&mut self, req: u64, to: NodeId, fx: &mut Effects) {
        let Some(mut r) = self.lease_requests.remove(&req) else { return };
        r.node = to;
        r.placement = Placement::Here;
        self.send_lease_request(req, &r, fx);
        self.lease_requests.insert(req, r);
    }

    /// The node a daemon sent request `req` on to could not be reached: this node is asked
    /// again to place it, as the request was first placed.
    pub fn on_spill_unreachable(&mut self, req: u64, fx: &mut Effects) {
        let Some(mut r) = self.lease_requests.remove(&req) else { return };
        r.node = self.node;
        r.placement = self.classes[r.class].placement.clone();
        self.send_lease_request(req, &r, fx);
        self.lease_requests.insert(req, r);
    }

    /// Node `n`'s daemon is gone: the requests waiting there are asked of this node again,
    /// placed anew.
    pub fn on_daemon_lost(&mut self, n: NodeId, fx: &mut Effects) {
        let stranded: Vec<u64> = self.lease_requests.iter().filter(|(_, r)| r.node == n).map(|(q, _)| *q).collect();
        for req in stranded {
            let r = self.lease_requests.get_mut(&req).expect("listed");
            r.node = self.node;
            r.placement = Placement::Default;
            let r = self.lease_requests.remove(&req).expect("listed");
            self.send_lease_request(req, &r, fx);
            self.lease_requests.insert(req, r);
        }
    }

    /// The workers of leases granted by node `n`.
    pub fn workers_leased_at(&self, n: NodeId) -> Vec<WorkerId> {
        self.leases.values().filter(|l| l.node == n).map(|l| l.worker).collect()
    }

    /// Lease request `req` was granted by node `from` (its lease `theirs` there) on `worker`,
    /// which this process is now connected to; `now` is when.
    pub fn on_lease_granted(
        &mut self,
        req: u64,
        (from, theirs): (NodeId, u64),
        worker: WorkerId,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(LeaseRequest { class, .. }) = self.lease_requests.remove(&req) else {
            fx.to_daemons.push((Daemon::Node(from), ToNode::ReturnLease { lease: theirs, kill: false }));
            return;
        };
        let lease = self.next_lease;
        self.next_lease += 1;
        let c = &mut self.classes[class];
        c.pending_requests -= 1;
        c.leases.push(lease);
        let one_shot = c.placement == Placement::Spread;
        self.leases.insert(
            lease,
            Lease {
                worker,
                node: from,
                theirs,
                class,
                in_flight: 0,
                blocked: false,
                idle_since: Some(now),
                stealing: false,
                one_shot,
                used: false,
            },
        );
        self.steal(class, fx);
        self.pump(class, fx);
    }

    /// The worker behind a lease granted by node `from` (`theirs` there) could not be reached:
    /// the lease goes back, its worker killed.
    pub fn on_lease_unreachable(&mut self, req: u64, (from, theirs): (NodeId, u64), fx: &mut Effects) {
        fx.to_daemons.push((Daemon::Node(from), ToNode::ReturnLease { lease: theirs, kill: true }));
        if let Some(r) = self.lease_requests.remove(&req) {
            self.classes[r.class].pending_requests -= 1;
            self.pump(r.class, fx);
        }
    }

    /// Gives lease `lease` back to the node that granted it (`kill`: its worker is not to be
    /// trusted again).
    pub(super) fn return_lease(&mut self, lease: u64, kill: bool, fx: &mut Effects) {
        if let Some(l) = self.leases.remove(&lease) {
            self.classes[l.class].leases.retain(|x| *x != lease);
            fx.to_daemons.push((Daemon::Node(l.node), ToNode::ReturnLease { lease: l.theirs, kill }));
        }
    }

    pub fn on_lease_infeasible(&mut self, req: u64, reason: String, fx: &mut Effects) {
        let Some(LeaseRequest { class, .. }) = self.lease_requests.remove(&req) else {
            return;
        };
        self.classes[class].pending_requests -= 1;
        let queued: Vec<TaskId> = self.classes[class].queue.drain(..).collect();
        for t in queued {
            let name = self.tasks.get(&t).map(|t| t.name.to_string()).unwrap_or_default();
            self.fail_task(t, Error::Infeasible { task: name, detail: reason.clone() }, fx);
        }
    }

    /// Node `node` asks lease `theirs` back for fair sharing (`FromNode::GiveBackLease`): it
    /// is pushed nothing more, what waits on it comes back (`Steal`), and it goes back once
    /// its running task ends.
    pub fn on_give_back(&mut self, node: NodeId, theirs: u64, fx: &mut Effects) {
        let Some((&id, l)) = self.leases.iter_mut().find(|(_, l)| l.node == node && l.theirs == theirs) else {
            return;
        };
        l.one_shot = true;
        l.used = true;
        if l.in_flight == 0 {
            self.return_lease(id, false, fx);
        } else if l.in_flight > 1 && !l.stealing {
            l.stealing = true;
            fx.to_workers.push((l.worker, ToWorker::Steal { max: l.in_flight as u32 }));
        }
    }

    /// A worker is gone: its leases end, and what it was running is retried or failed.
    pub fn on_worker_lost(&mut self, worker: WorkerId, detail: &str, fx: &mut Effects) {
        let preempted = self.preempted.remove(&worker);
        let dead: Vec<u64> = self.leases.iter().filter(|(_, l)| l.worker == worker).map(|(id, _)| *id).collect();
        let mut classes = Vec::new();
        for id in dead {
            if let Some(l) = self.leases.remove(&id) {
                self.classes[l.class].leases.retain(|x| *x != id);
                classes.push(l.class);
            }
        }
        // Actor calls in flight there go back, in order, to the front of their actor's queue
        // (for the next incarnation) or fail; the actor's address must be fetched again.
        let actor_ids: Vec<ActorId> =
            self.actors.iter().filter(|(_, c)| c.worker == Some(worker)).map(|(a, _)| *a).collect();
        for a in actor_ids {
            self.actor_conn_lost(a, detail, fx);
        }
        let lost: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.actor.is_none() && matches!(t.state, TaskState::Pushed { worker: w, .. } if w == worker))
            .map(|(id, _)| *id)
            .collect();
        for task in lost {
            let t = self.tasks.get_mut(&task).expect("listed");
            if t.cancelled {
                // Its worker was ended to cancel it (`force`): over, not retried.
                if let Some(t) = self.tasks.remove(&task) {
                    self.task_over(&t, fx);
                }
                continue;
            }
            if preempted.is_some() {
                self.preemptions += 1;
                t.preempted += 1;
            }
            // A preempted run is not the task's fault: it does not charge a retry, only its
            // own bound.
            let again = match &preempted {
                Some(_) if t.preemptions_left > 0 => {
                    t.preemptions_left -= 1;
                    true
                }
                Some(_) => false,
                None if t.retries_left > 0 => {
                    t.retries_left -= 1;
                    self.retries += 1;
                    true
                }
                None => false,
            };
            if again {
                t.attempts += 1;
                t.state = TaskState::Queued;
                self.classes[t.class].queue.push_front(task);
                classes.push(t.class);
                self.note(task, ferry_proto::state::TaskState::WaitingForWorker, true, fx);
            } else {
                let name = t.name.to_string();
                let node = match t.state {
                    TaskState::Pushed { lease, .. } => self.leases.get(&lease).map(|l| l.node),
                    _ => None,
                };
                let node = node.or(preempted.as_ref().map(|p| p.node));
                t.state = TaskState::Queued;
                let times = t.preempted;
                let class = t.class;
                self.classes[class].queue.push_front(task);
                let err = match &preempted {
                    Some(Preemption { node, memory: true, detail }) => {
                        Error::OutOfMemory { task: name, node: node.to_string(), detail: detail.clone() }
                    }
                    Some(Preemption { detail, .. }) => Error::Preempted { task: name, times, detail: detail.clone() },
                    None => Error::WorkerDied { task: name, detail: detail.to_string() },
                };
                if let Some(t) = self.tasks.remove(&task) {
                    self.note_unread(&t, &err, (Some(worker), node));
                    self.tasks.insert(task, t);
                }
                self.fail_task(task, err, fx);
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
            self.return_lease(id, false, fx);
        }
    }

    pub fn num_leases(&self) -> usize {
        self.leases.len()
    }
}
