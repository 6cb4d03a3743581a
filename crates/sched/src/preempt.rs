//! Preemption (REEF, DESIGN §6): real-time work takes resources from best-effort work at
//! once, by suspension when CPUs are enough (nothing is lost) and by reset when it needs
//! what a stopped process keeps (memory, devices), when a suspended lease would wait too
//! long, or when the node is short of memory. See ARCHITECTURE "Priorities and preemption".

use super::*;

impl Scheduler {
    /// Resets best-effort leases, most recently granted first, that hold resources other
    /// than CPUs that `shape` lacks in `provisional`, until it no longer lacks them; resets
    /// none if that cannot make them fit. Suspension cannot free those: a stopped process
    /// keeps its memory and its devices.
    pub(crate) fn reset_for(
        &mut self,
        shape: &Shape,
        provisional: &mut BTreeMap<String, i64>,
        actions: &mut Vec<Action>,
    ) {
        let mut lacking: BTreeMap<&str, i64> = shape
            .0
            .iter()
            .filter(|(n, _)| n != CPU)
            .map(|(n, v)| (n.as_str(), *v as i64 - provisional.get(n).copied().unwrap_or(0)))
            .filter(|(_, short)| *short > 0)
            .collect();
        if lacking.is_empty() {
            return;
        }
        let mut victims: Vec<(LeaseId, WorkerId, &Shape)> = self
            .workers
            .iter()
            .filter_map(|(w, s)| match s {
                WorkerState::Leased { lease, shape, priority: Priority::BestEffort, .. }
                    if !self.protected.contains(w) && shape.0.iter().any(|(n, _)| lacking.contains_key(n.as_str())) =>
                {
                    Some((*lease, *w, shape))
                }
                _ => None,
            })
            .collect();
        victims.sort_by_key(|(lease, _, _)| std::cmp::Reverse(*lease));
        let mut chosen = Vec::new();
        for (_, w, held) in victims {
            if lacking.values().all(|v| *v <= 0) {
                break;
            }
            for (n, v) in &held.0 {
                if let Some(short) = lacking.get_mut(n.as_str()) {
                    *short -= *v as i64;
                }
            }
            chosen.push(w);
        }
        if lacking.values().any(|v| *v > 0) {
            return;
        }
        // Reset nothing unless the CPUs can be had too (the victims' own, and what
        // suspending the other best-effort leases lends): else work is killed for nothing.
        let cpu = |w: &WorkerId| match self.workers.get(w) {
            Some(WorkerState::Leased { shape, blocked: false, suspended: false, .. }) => shape.get_milli(CPU) as i64,
            _ => 0,
        };
        let freed: i64 = chosen.iter().map(cpu).sum();
        let lendable: i64 = self
            .workers
            .iter()
            .filter(|(w, _)| !chosen.contains(w))
            .filter_map(|(_, s)| s.suspendable().map(|(_, c)| c))
            .sum();
        let cpu_short = shape.get_milli(CPU) as i64 - provisional.get(CPU).copied().unwrap_or(0);
        if cpu_short > freed + lendable {
            return;
        }
        for w in chosen {
            let before = self.available.clone();
            self.reset(w, false, actions);
            for (n, v) in &self.available {
                *provisional.entry(n.clone()).or_insert(0) += v - before.get(n).copied().unwrap_or(0);
            }
        }
    }

    /// Preemption's clock: preempted workers whose holders did not give their leases back
    /// in time are killed, and best-effort leases suspended longer than
    /// [`PoolOptions::reset_after`] are reset.
    pub(crate) fn tick_preemption(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut late = Vec::new();
        for (w, s) in self.workers.iter_mut() {
            if let WorkerState::Preempting { since, .. } = s {
                match since {
                    None => *since = Some(now),
                    Some(t) if now.duration_since(*t) >= PREEMPT_GRACE => late.push(*w),
                    Some(_) => {}
                }
            }
        }
        for w in late {
            actions.push(Action::KillWorker { worker: w });
            actions.extend(self.worker_died(w));
        }
        let suspended = &self.suspended;
        self.suspended_seen.retain(|w, _| suspended.contains(w));
        let mut overdue = Vec::new();
        for w in &self.suspended {
            let seen = *self.suspended_seen.entry(*w).or_insert(now);
            if now.duration_since(seen) >= self.opts.reset_after && !self.protected.contains(w) {
                overdue.push(*w);
            }
        }
        for w in overdue {
            self.reset(w, false, &mut actions);
        }
        if !actions.is_empty() {
            actions.extend(self.schedule());
        }
        actions
    }

    /// Resets the lease on `worker` ([`Action::Preempt`]): its resources come back now.
    pub(crate) fn reset(&mut self, worker: WorkerId, memory: bool, actions: &mut Vec<Action>) {
        let Some(WorkerState::Leased { lease, owner, shape, blocked, suspended, .. }) = self.workers.remove(&worker)
        else {
            return;
        };
        self.release(&shape, blocked || suspended);
        self.suspended.retain(|w| *w != worker);
        self.suspended_seen.remove(&worker);
        self.workers.insert(worker, WorkerState::Preempting { lease, owner, since: None });
        self.resets += 1;
        actions.push(Action::Preempt { conn: owner, worker, memory });
    }

    /// The node is short of memory: resets one lease to free it, and says which worker. The
    /// victim is the most recently granted best-effort lease, else the most recently granted
    /// other one, lower priorities first; leases that cannot be reset (actors with no
    /// restarts left) only when no other is left. `None` if nothing is leased.
    pub fn preempt_for_memory(&mut self) -> (Option<WorkerId>, Vec<Action>) {
        let victim = self
            .workers
            .iter()
            .filter_map(|(w, s)| match s {
                WorkerState::Leased { lease, priority, .. } => {
                    Some(((!self.protected.contains(w), std::cmp::Reverse(*priority), *lease), *w))
                }
                _ => None,
            })
            .max()
            .map(|(_, w)| w);
        let mut actions = Vec::new();
        if let Some(w) = victim {
            self.reset(w, true, &mut actions);
            actions.extend(self.schedule());
        }
        (victim, actions)
    }

    /// The lease on `worker` must never be reset for priority (an actor with no restarts
    /// left: a reset would kill it for good). Forgotten when the lease ends.
    pub fn protect(&mut self, worker: WorkerId) {
        self.protected.insert(worker);
    }
}
