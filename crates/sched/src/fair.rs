//! Fair sharing between jobs: when every job wants more than the node has, its CPUs go to
//! the jobs in proportion to their weights. Requests are ordered by each job's CPU-seconds
//! per unit of weight (decayed, half-life [`FAIR_HALF_LIFE`]), and a job holding more than
//! its share while another waits is asked to give leases back ([`Action::Reclaim`]) once
//! their running task ends: leases are reused for many tasks, so ordering grants alone
//! would leave the first job every CPU for as long as it has work.

use super::*;

impl Scheduler {
    /// A job's CPU-seconds used per unit of weight: lower goes first.
    pub(crate) fn share_used(&self, job: u64) -> f64 {
        self.usage.get(&job).copied().unwrap_or(0.0) / *self.weights.get(&job).unwrap_or(&1) as f64
    }

    /// Orders the queue by priority, then by each job's use of its share, then depth
    /// (stable: arrival order among equals). Nothing moves while one job is queued.
    pub(crate) fn order_by_share(&mut self) {
        let first = self.queue.front().map(|r| r.job);
        if self.queue.iter().all(|r| Some(r.job) == first) {
            return;
        }
        let used: HashMap<u64, f64> = self.queue.iter().map(|r| (r.job, self.share_used(r.job))).collect();
        self.queue.make_contiguous().sort_by(|a, b| {
            b.priority.cmp(&a.priority).then(used[&a.job].total_cmp(&used[&b.job])).then(b.depth.cmp(&a.depth))
        });
    }

    /// Counts each job's CPU-seconds since the last count, decayed (see [`FAIR_HALF_LIFE`]).
    pub(crate) fn count_usage(&mut self, now: Instant) {
        let Some(last) = self.counted.replace(now) else { return };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        let keep = 0.5f64.powf(dt / FAIR_HALF_LIFE.as_secs_f64());
        for u in self.usage.values_mut() {
            *u *= keep;
        }
        for s in self.workers.values() {
            if let WorkerState::Leased { shape, blocked: false, suspended: false, job, .. } = s {
                if *job != 0 {
                    *self.usage.entry(*job).or_insert(0.0) += shape.get_milli(CPU) as f64 / 1000.0 * dt;
                }
            }
        }
        self.usage.retain(|_, u| *u > 1e-6);
    }

    /// A job waits for CPUs while another holds more than its weighted share of the node's:
    /// that one's newest leases are asked back ([`Action::Reclaim`]), as many as the waiting
    /// job's share is short by.
    pub(crate) fn reclaim_for_fairness(&mut self, actions: &mut Vec<Action>) {
        let total = self.total.get(CPU).copied().unwrap_or(0) as f64;
        let mut holding: HashMap<u64, f64> = HashMap::new();
        for s in self.workers.values() {
            if let WorkerState::Leased { shape, blocked: false, suspended: false, job, lease, .. } = s {
                if *job != 0 && !self.reclaiming.contains(lease) {
                    *holding.entry(*job).or_insert(0.0) += shape.get_milli(CPU) as f64;
                }
            }
        }
        let waiting: BTreeSet<u64> =
            self.queue.iter().filter(|r| r.job != 0 && r.shape.get_milli(CPU) > 0).map(|r| r.job).collect();
        if waiting.is_empty() {
            return;
        }
        let active: BTreeSet<u64> = holding.keys().copied().chain(waiting.iter().copied()).collect();
        let weight = |j: &u64| *self.weights.get(j).unwrap_or(&1) as f64;
        let sum: f64 = active.iter().map(weight).sum();
        let fair = |j: &u64| total * weight(j) / sum;
        let mut short: f64 = waiting.iter().map(|j| (fair(j) - holding.get(j).copied().unwrap_or(0.0)).max(0.0)).sum();
        if short < 1000.0 {
            return; // no waiting job is a whole CPU short of its share
        }
        let mut over: Vec<(u64, f64)> =
            holding.iter().map(|(j, h)| (*j, h - fair(j))).filter(|(_, excess)| *excess >= 1000.0).collect();
        over.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (job, mut excess) in over {
            let mut leases: Vec<(LeaseId, ConnId, f64)> = self
                .workers
                .values()
                .filter_map(|s| match s {
                    WorkerState::Leased { lease, owner, shape, job: j, blocked: false, suspended: false, .. }
                        if *j == job && !self.reclaiming.contains(lease) =>
                    {
                        Some((*lease, *owner, shape.get_milli(CPU) as f64))
                    }
                    _ => None,
                })
                .collect();
            leases.sort_by_key(|(l, ..)| std::cmp::Reverse(*l));
            for (lease, conn, cpu) in leases {
                if short < 1000.0 || excess < cpu || cpu == 0.0 {
                    break;
                }
                self.reclaiming.insert(lease);
                actions.push(Action::Reclaim { conn, lease });
                short -= cpu;
                excess -= cpu;
            }
        }
    }

    /// Each job's CPU-seconds, decayed (see [`FAIR_HALF_LIFE`]), and its weight.
    pub fn job_usage(&self) -> Vec<(u64, f64, u32)> {
        let mut v: Vec<(u64, f64, u32)> =
            self.usage.iter().map(|(j, u)| (*j, *u, *self.weights.get(j).unwrap_or(&1))).collect();
        v.sort_by_key(|x| x.0);
        v
    }
}
