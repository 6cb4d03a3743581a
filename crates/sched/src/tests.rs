//! The scheduler's state machine driven through every interleaving the tests name: no
//! processes, no clock but the one passed in.

use super::*;

fn opts(prestart: usize) -> PoolOptions {
    PoolOptions { prestart, max_workers: 8, idle_timeout: Duration::from_secs(1), reset_after: Duration::from_secs(30) }
}

fn grants(a: &[Action]) -> Vec<(ConnId, u64, WorkerId)> {
    a.iter()
        .filter_map(|x| match x {
            Action::Grant { conn, req, worker, .. } => Some((*conn, *req, *worker)),
            _ => None,
        })
        .collect()
}

fn lease_of(a: &[Action]) -> LeaseId {
    a.iter()
        .find_map(|x| match x {
            Action::Grant { lease, .. } => Some(*lease),
            _ => None,
        })
        .expect("a grant")
}

fn suspended(a: &[Action]) -> Vec<WorkerId> {
    a.iter()
        .filter_map(|x| match x {
            Action::Suspend { worker } => Some(*worker),
            _ => None,
        })
        .collect()
}

fn resumed(a: &[Action]) -> Vec<WorkerId> {
    a.iter()
        .filter_map(|x| match x {
            Action::Resume { worker } => Some(*worker),
            _ => None,
        })
        .collect()
}

/// A queue holding best-effort, normal and real-time requests serves real-time first,
/// then normal, then best-effort, each in arrival order (depth equal).
#[test]
fn higher_priorities_are_served_first() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(0));
    s.worker_registered(WorkerId(1), now);
    let first = s.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal);
    let l = lease_of(&first);
    s.request(1, 2, Shape::cpus(1.0), 1, Priority::BestEffort);
    s.request(1, 3, Shape::cpus(1.0), 1, Priority::Normal);
    s.request(1, 4, Shape::cpus(1.0), 1, Priority::RealTime);
    let mut order = Vec::new();
    let mut lease = l;
    for _ in 0..3 {
        let a = s.return_lease(1, lease, false, now);
        let g = grants(&a);
        assert_eq!(g.len(), 1, "{a:?}");
        order.push(g[0].1);
        lease = lease_of(&a);
    }
    assert_eq!(order, vec![4, 3, 2]);
}

/// REEF's preemption by suspension: a node whose CPUs best-effort leases hold suspends
/// the most recently granted for a real-time request at once, lends its CPU, and
/// resumes it when the real-time lease goes back; a normal lease is never suspended.
/// The accounts balance throughout.
#[test]
fn real_time_work_suspends_best_effort_work_and_gives_its_cpus_back() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(2.0), opts(0));
    for w in 1..=3 {
        s.worker_registered(WorkerId(w), now);
    }
    let older = lease_of(&s.request(1, 1, Shape::cpus(1.0), 1, Priority::BestEffort));
    let newer = s.request(1, 2, Shape::cpus(1.0), 1, Priority::BestEffort);
    let newer_worker = grants(&newer)[0].2;
    let _ = older;
    assert_eq!(s.available().get_milli(CPU), 0);
    let a = s.request(2, 3, Shape::cpus(1.0), 1, Priority::RealTime);
    assert_eq!(suspended(&a), vec![newer_worker], "{a:?}");
    let rt = grants(&a);
    assert_eq!(rt.len(), 1, "{a:?}");
    assert!(a.iter().any(|x| matches!(x, Action::Recall { conn: 2 })), "the real-time owner is asked back: {a:?}");
    assert_eq!(s.suspensions(), (1, 1));
    assert_eq!(s.available().get_milli(CPU), 0);
    // A best-effort request meanwhile waits: the suspended one comes first.
    assert!(grants(&s.request(1, 4, Shape::cpus(1.0), 1, Priority::BestEffort)).is_empty());
    let a = s.return_lease(2, lease_of(&a), false, now);
    assert_eq!(resumed(&a), vec![newer_worker], "{a:?}");
    assert!(grants(&a).is_empty(), "{a:?}");
    assert_eq!((s.suspensions().0, s.available().get_milli(CPU)), (0, 0));

    // Normal work is not suspended: real-time work waits for it.
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(0));
    s.worker_registered(WorkerId(1), now);
    s.worker_registered(WorkerId(2), now);
    s.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal);
    let a = s.request(2, 2, Shape::cpus(1.0), 1, Priority::RealTime);
    assert!(suspended(&a).is_empty() && grants(&a).is_empty(), "{a:?}");
}

/// With no idle worker, a real-time request starts one and suspends nothing until it is
/// ready; a suspended lease given back is resumed (never left stopped), and one whose
/// worker died is forgotten.
#[test]
fn suspension_waits_for_a_worker_and_never_leaves_one_stopped() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(0));
    s.worker_registered(WorkerId(1), now);
    let be = s.request(1, 1, Shape::cpus(1.0), 1, Priority::BestEffort);
    let be_lease = lease_of(&be);
    let a = s.request(2, 2, Shape::cpus(1.0), 1, Priority::RealTime);
    assert!(suspended(&a).is_empty(), "{a:?}");
    assert!(a.contains(&Action::StartWorker), "{a:?}");
    let a = s.worker_registered(WorkerId(2), now);
    assert_eq!(suspended(&a), vec![WorkerId(1)]);
    assert_eq!(grants(&a), vec![(2, 2, WorkerId(2))]);
    // The best-effort owner gives its lease back while it is suspended.
    let a = s.return_lease(1, be_lease, false, now);
    assert_eq!(resumed(&a), vec![WorkerId(1)], "{a:?}");
    assert_eq!(s.suspensions().0, 0);
    assert_eq!(s.available().get_milli(CPU), 0, "the real-time lease holds the one CPU");
    // A suspended worker that dies is forgotten.
    let be = s.request(1, 3, Shape::cpus(1.0), 1, Priority::BestEffort);
    assert!(grants(&be).is_empty());
    s.worker_died(WorkerId(2));
    assert_eq!(s.suspensions().0, 0);
}

fn preempted(a: &[Action]) -> Vec<(ConnId, WorkerId, bool)> {
    a.iter()
        .filter_map(|x| match x {
            Action::Preempt { conn, worker, memory } => Some((*conn, *worker, *memory)),
            _ => None,
        })
        .collect()
}

/// Suspension cannot free a GPU (or memory): a real-time request that lacks one resets the
/// most recently granted best-effort lease holding it, is granted at once, and the reset
/// worker is killed when its holder gives the lease back. A lease that cannot be reset is
/// not, and none is when resetting all would still not make room.
#[test]
fn real_time_work_resets_best_effort_work_that_holds_what_it_needs() {
    let now = Instant::now();
    let total = Shape::with_resources(4.0, &[("GPU".to_string(), 2.0)]);
    let gpu = |g: f64| Shape::with_resources(1.0, &[("GPU".to_string(), g)]);
    let (mut s, _) = Scheduler::new(&total, opts(0));
    for w in 1..=4 {
        s.worker_registered(WorkerId(w), now);
    }
    let older = grants(&s.request(1, 1, gpu(1.0), 1, Priority::BestEffort))[0].2;
    let newer = s.request(1, 2, gpu(1.0), 1, Priority::BestEffort);
    let (newer_worker, newer_lease) = (grants(&newer)[0].2, lease_of(&newer));
    let a = s.request(2, 3, gpu(1.0), 1, Priority::RealTime);
    assert_eq!(preempted(&a), vec![(1, newer_worker, false)], "the newest is reset: {a:?}");
    assert!(suspended(&a).is_empty(), "CPUs were free: {a:?}");
    let rt = lease_of(&a);
    assert_eq!(s.resets(), 1);
    assert_eq!(s.lease_holder(newer_worker), Some(1), "its holder is still told of its death");
    // A second reset of the same lease never happens; its holder's return kills it.
    assert_eq!(s.return_lease(1, newer_lease, false, now), vec![Action::KillWorker { worker: newer_worker }]);
    assert!(s.worker_died(newer_worker).iter().all(|x| !matches!(x, Action::Grant { .. })));
    // The older one is protected (an actor that cannot restart): a second real-time request
    // waits rather than kill it.
    s.protect(older);
    let a = s.request(2, 4, gpu(2.0), 1, Priority::RealTime);
    assert!(preempted(&a).is_empty() && grants(&a).is_empty(), "{a:?}");
    // Accounts balance once everything is back.
    s.return_lease(2, rt, false, now);
    assert_eq!(s.available().get_milli("GPU"), 1000, "the second request took nothing yet");
}

/// A best-effort lease suspended longer than `reset_after` is reset: its worker is stopped
/// already, its holder told, and it is killed after `PREEMPT_GRACE` if the holder never
/// gives the lease back.
#[test]
fn a_lease_suspended_too_long_is_reset_and_killed_if_never_returned() {
    let now = Instant::now();
    let mut o = opts(0);
    o.reset_after = Duration::from_secs(1);
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), o);
    s.worker_registered(WorkerId(1), now);
    s.worker_registered(WorkerId(2), now);
    let be = grants(&s.request(1, 1, Shape::cpus(1.0), 1, Priority::BestEffort))[0].2;
    let a = s.request(2, 2, Shape::cpus(1.0), 1, Priority::RealTime);
    assert_eq!(suspended(&a), vec![be]);
    assert!(preempted(&s.tick(now)).is_empty(), "first seen suspended now");
    let a = s.tick(now + Duration::from_millis(1100));
    assert_eq!(preempted(&a), vec![(1, be, false)], "{a:?}");
    assert_eq!(s.suspensions().0, 0, "no longer suspended: reset");
    let a = s.tick(now + Duration::from_millis(1200));
    assert!(!a.contains(&Action::KillWorker { worker: be }), "{a:?}");
    let a = s.tick(now + Duration::from_millis(1200) + PREEMPT_GRACE);
    assert!(a.contains(&Action::KillWorker { worker: be }), "{a:?}");
    assert_eq!(s.lease_holder(be), None);
    assert_eq!(s.available().get_milli(CPU), 0, "the real-time lease holds the CPU");
}

/// Under memory pressure the victim is the newest best-effort lease, then the newest other
/// by rising priority; a protected lease (an actor with no restarts left) only when nothing
/// else is left.
#[test]
fn memory_pressure_resets_newest_lowest_priority_first_and_protected_last() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(8.0), opts(0));
    for w in 1..=5 {
        s.worker_registered(WorkerId(w), now);
    }
    let mut by_req = std::collections::BTreeMap::new();
    for (req, p) in [
        (1, Priority::BestEffort),
        (2, Priority::Normal),
        (3, Priority::BestEffort),
        (4, Priority::RealTime),
        (5, Priority::BestEffort),
    ] {
        by_req.insert(grants(&s.request(1, req, Shape::cpus(1.0), 1, p))[0].2, req);
    }
    let protected = by_req.iter().find(|(_, r)| **r == 5).map(|(w, _)| *w).expect("granted");
    s.protect(protected);
    let mut order = Vec::new();
    loop {
        let (victim, a) = s.preempt_for_memory();
        let Some(w) = victim else { break };
        assert_eq!(preempted(&a), vec![(1, w, true)]);
        order.push(by_req[&w]);
    }
    assert_eq!(order, vec![3, 1, 2, 4, 5]);
    assert_eq!(s.available().get_milli(CPU), 8000, "every reset lease gave its CPU back");
}

/// A worker that ran best-effort work is lowered once and from then on takes only
/// best-effort work: other work gets another worker.
#[test]
fn lowered_workers_take_only_best_effort_work() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(0));
    s.worker_registered(WorkerId(1), now);
    let a = s.request(1, 1, Shape::cpus(1.0), 1, Priority::BestEffort);
    assert!(a.contains(&Action::Lower { worker: WorkerId(1) }), "{a:?}");
    let a = s.return_lease(1, lease_of(&a), false, now);
    assert!(grants(&a).is_empty());
    let a = s.request(1, 2, Shape::cpus(1.0), 1, Priority::Normal);
    assert!(grants(&a).is_empty() && a.contains(&Action::StartWorker), "{a:?}");
    assert_eq!(grants(&s.worker_registered(WorkerId(2), now)), vec![(1, 2, WorkerId(2))]);
    let a = s.request(1, 3, Shape::cpus(0.0), 1, Priority::BestEffort);
    assert_eq!(grants(&a), vec![(1, 3, WorkerId(1))]);
    assert!(!a.iter().any(|x| matches!(x, Action::Lower { .. })), "lowered once: {a:?}");
}

#[test]
fn prestarts_pool_and_grants_when_workers_register() {
    let now = Instant::now();
    let (mut s, a) = Scheduler::new(&Shape::cpus(2.0), opts(2));
    assert_eq!(a, vec![Action::StartWorker, Action::StartWorker]);
    // A request before any worker registered waits without starting more than needed.
    assert!(s.request(1, 10, Shape::cpus(1.0), 1, Priority::Normal).is_empty());
    let a = s.worker_registered(WorkerId(1), now);
    assert_eq!(grants(&a), vec![(1, 10, WorkerId(1))]);
    s.worker_registered(WorkerId(2), now);
    assert_eq!(s.num_idle(), 1);
}

#[test]
fn infeasible_requests_are_refused_with_reason() {
    let (mut s, _) = Scheduler::new(&Shape::cpus(2.0), opts(0));
    let mut shape = Shape::cpus(1.0);
    shape.set("GPU", 1.0);
    let a = s.request(3, 1, shape, 1, Priority::Normal);
    assert!(matches!(&a[0], Action::Infeasible { conn: 3, req: 1, reason } if reason.contains("GPU")));
    assert_eq!(s.num_queued(), 0);
}

/// The finding of the live fuzzer: a request for an amount near `u64::MAX` overflowed
/// the node's signed accounts and panicked the daemon. Such amounts are refused.
#[test]
fn absurd_amounts_are_refused_not_counted() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(2.0), opts(1));
    s.worker_registered(WorkerId(1), now);
    let huge = Shape(vec![("CPU".into(), 0), ("x".into(), u64::MAX - 5)]);
    let a = s.request(3, 1, huge, 1, Priority::Normal);
    assert!(matches!(&a[0], Action::Infeasible { conn: 3, req: 1, reason } if reason.contains("more than any node")));
    let a = s.request(3, 2, Shape(vec![("CPU".into(), MAX_AMOUNT + 1)]), 1, Priority::Normal);
    assert!(matches!(&a[0], Action::Infeasible { .. }));
    // The node still grants what fits.
    assert_eq!(grants(&s.request(3, 3, Shape::cpus(1.0), 1, Priority::Normal)).len(), 1);
}

#[test]
fn resources_bound_grants_and_return_frees_them() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(2.0), opts(3));
    for w in 1..=3 {
        s.worker_registered(WorkerId(w), now);
    }
    let a1 = s.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal);
    let a2 = s.request(1, 2, Shape::cpus(1.0), 1, Priority::Normal);
    let a3 = s.request(2, 3, Shape::cpus(1.0), 1, Priority::Normal);
    assert_eq!(grants(&a1).len() + grants(&a2).len(), 2);
    // The third does not fit: no grant, and the holder of leases is asked for idle ones.
    assert!(grants(&a3).is_empty());
    assert!(a3.contains(&Action::Recall { conn: 1 }));
    // Told once, not on every event.
    assert!(!s.request(2, 4, Shape::cpus(1.0), 1, Priority::Normal).contains(&Action::Recall { conn: 1 }));
    let a = s.return_lease(1, lease_of(&a1), false, now);
    assert_eq!(grants(&a).len(), 1);
    assert_eq!(grants(&a)[0].0, 2);
    // Conn 2 now holds a lease while request 4 still waits: it is told too.
    assert!(a.contains(&Action::Recall { conn: 2 }));
    let a = s.return_lease(1, lease_of(&a2), false, now);
    assert_eq!(grants(&a).len(), 1);
    assert!(a.contains(&Action::EndRecall { conn: 1 }) && a.contains(&Action::EndRecall { conn: 2 }));
}

#[test]
fn blocked_worker_lends_cpu_and_oversubscribes_on_resume() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(2));
    s.worker_registered(WorkerId(1), now);
    s.worker_registered(WorkerId(2), now);
    let a = s.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal);
    let (_, _, w) = grants(&a)[0];
    assert!(grants(&s.request(2, 2, Shape::cpus(1.0), 1, Priority::Normal)).is_empty());
    let a = s.blocked(w);
    assert_eq!(grants(&a).len(), 1, "the blocked worker's CPU goes to the waiting request");
    s.unblocked(w);
    assert_eq!(s.available().get_milli(CPU), 0);
    // Oversubscribed: a further request waits until both leases are back.
    assert!(grants(&s.request(3, 3, Shape::cpus(1.0), 1, Priority::Normal)).is_empty());
}

#[test]
fn starts_workers_on_demand_up_to_max() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(
        &Shape::cpus(16.0),
        PoolOptions { prestart: 0, max_workers: 2, idle_timeout: Duration::ZERO, reset_after: Duration::from_secs(30) },
    );
    let mut starts = 0;
    for r in 0..5 {
        starts += s
            .request(1, r, Shape::cpus(1.0), 1, Priority::Normal)
            .iter()
            .filter(|a| **a == Action::StartWorker)
            .count();
    }
    assert_eq!(starts, 2);
    let a = s.worker_registered(WorkerId(9), now);
    assert_eq!(grants(&a).len(), 1);
}

#[test]
fn worker_death_frees_lease_and_replaces_pool_member() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(1));
    s.worker_registered(WorkerId(1), now);
    let a = s.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal);
    let lease = lease_of(&a);
    let a = s.worker_died(WorkerId(1));
    assert_eq!(a, vec![Action::StartWorker]);
    assert_eq!(s.available().get_milli(CPU), 1000);
    // Returning the dead worker's lease later is harmless.
    assert!(s.return_lease(1, lease, false, now).is_empty());
}

#[test]
fn foreign_lease_return_is_ignored() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(1));
    s.worker_registered(WorkerId(1), now);
    let lease = lease_of(&s.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal));
    assert!(s.return_lease(2, lease, false, now).is_empty());
    assert_eq!(s.lease_holder(WorkerId(1)), Some(1));
}

#[test]
fn closed_owner_loses_requests_and_leased_workers() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(1));
    s.worker_registered(WorkerId(1), now);
    s.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal);
    s.request(1, 2, Shape::cpus(1.0), 1, Priority::Normal);
    let a = s.conn_closed(1);
    assert!(a.contains(&Action::KillWorker { worker: WorkerId(1) }));
    assert_eq!(s.num_queued(), 0);
    assert_eq!(s.available().get_milli(CPU), 1000);
}

#[test]
fn short_requests_can_move_but_not_those_waiting_for_a_worker() {
    let (mut s, _) = Scheduler::new(&Shape::cpus(2.0), opts(0));
    // Two fit (they wait for workers to start); the third does not.
    for req in 1..=3 {
        s.request(1, req, Shape::cpus(1.0), 1, Priority::Normal);
    }
    let (moved, _) = s.take_short(|_, _, _| true);
    assert_eq!(moved.iter().map(|m| m.1).collect::<Vec<_>>(), vec![3]);
    assert_eq!(s.num_queued(), 2);
    // Nowhere else has room: nothing moves.
    s.request(1, 4, Shape::cpus(1.0), 1, Priority::Normal);
    assert!(s.take_short(|_, _, _| false).0.is_empty());
}

#[test]
fn deeper_requests_are_served_first() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(1.0), opts(0));
    s.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal);
    s.request(2, 2, Shape::cpus(1.0), 3, Priority::Normal);
    s.request(3, 3, Shape::cpus(1.0), 2, Priority::Normal);
    let a = s.worker_registered(WorkerId(1), now);
    assert_eq!(grants(&a), vec![(2, 2, WorkerId(1))]);
}

#[test]
fn idle_extras_are_asked_to_retire_after_timeout() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(4.0), opts(1));
    s.worker_registered(WorkerId(1), now);
    s.worker_registered(WorkerId(2), now);
    assert!(s.tick(now).is_empty());
    let later = now + Duration::from_secs(2);
    let a = s.tick(later);
    assert_eq!(a, vec![Action::Retire { worker: WorkerId(1) }]);
    // Asked, not yet gone: not leased meanwhile, and not asked twice.
    assert_eq!(s.num_idle(), 1);
    assert!(s.tick(later).is_empty());
    let g = s.request(9, 1, Shape::cpus(1.0), 1, Priority::Normal);
    assert_eq!(grants(&g), vec![(9, 1, WorkerId(2))]);
    // It exits: gone like any worker.
    s.worker_died(WorkerId(1));
    assert_eq!(s.num_workers(), 1);
}

#[test]
fn a_worker_that_owns_objects_in_use_is_kept_and_asked_again_later() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(4.0), opts(0));
    s.worker_registered(WorkerId(1), now);
    let t1 = now + Duration::from_secs(2);
    assert_eq!(s.tick(t1), vec![Action::Retire { worker: WorkerId(1) }]);
    s.keep(WorkerId(1), t1);
    assert_eq!((s.num_workers(), s.num_idle()), (1, 1));
    assert!(s.tick(t1 + Duration::from_millis(500)).is_empty(), "idle again since it was kept");
    assert_eq!(s.tick(t1 + Duration::from_secs(2)), vec![Action::Retire { worker: WorkerId(1) }]);
    // A worker of a binary the node no longer runs is never leased again: it drains (its
    // objects live on) and is asked again each idle timeout until it goes.
    let (mut s2, _) = Scheduler::new(&Shape::cpus(4.0), opts(1));
    s2.worker_registered(WorkerId(7), now);
    let a = s2.retire_idle(now);
    assert!(a.contains(&Action::Retire { worker: WorkerId(7) }) && a.contains(&Action::StartWorker), "{a:?}");
    assert!(s2.keep(WorkerId(7), now).is_empty());
    assert!(
        grants(&s2.request(1, 1, Shape::cpus(1.0), 1, Priority::Normal)).is_empty(),
        "a draining worker is not leased"
    );
    assert_eq!(s2.tick(now + Duration::from_secs(2)), vec![Action::Retire { worker: WorkerId(7) }]);
    s2.worker_died(WorkerId(7));
    assert_eq!(s2.num_workers(), 0);
    // One that neither goes nor answers is killed after the grace.
    let a = s.tick(t1 + Duration::from_secs(2) + RETIRE_GRACE);
    assert!(a.contains(&Action::KillWorker { worker: WorkerId(1) }), "{a:?}");
    assert_eq!(s.num_workers(), 0);
}

fn reclaimed(a: &[Action]) -> Vec<(ConnId, LeaseId)> {
    a.iter()
        .filter_map(|x| match x {
            Action::Reclaim { conn, lease } => Some((*conn, *lease)),
            _ => None,
        })
        .collect()
}

/// Two jobs that each want more than the node has: the first holds every CPU; when the
/// second asks, the first is asked back the leases past its weighted share (newest first),
/// and what it gives back goes to the job that used least of its share.
#[test]
fn jobs_share_the_cpus_by_weight() {
    let now = Instant::now();
    let (mut s, _) = Scheduler::new(&Shape::cpus(4.0), opts(0));
    for w in 1..=6 {
        s.worker_registered(WorkerId(w), now);
    }
    let a = Share { job: 10, weight: Some(3) };
    let b = Share { job: 20, weight: Some(1) };
    let mut a_leases = Vec::new();
    for req in 1..=4 {
        a_leases.push(lease_of(&s.request_for(1, req, Shape::cpus(1.0), 1, Priority::Normal, a)));
    }
    s.tick(now);
    s.tick(now + Duration::from_secs(1));
    let (job, used, weight) = s.job_usage()[0];
    assert_eq!((job, weight), (10, 3));
    assert!((used - 4.0).abs() < 0.01, "4 CPUs for 1 s: {used}");
    // Job b waits: a holds 4 of 4 CPUs, its share is 3: one lease is asked back, the newest.
    let w = s.request_for(2, 100, Shape::cpus(1.0), 1, Priority::Normal, b);
    assert_eq!(reclaimed(&w), vec![(1, a_leases[3])], "{w:?}");
    // Asked once, not again while it runs its last task.
    let w = s.request_for(2, 101, Shape::cpus(1.0), 1, Priority::Normal, b);
    assert!(reclaimed(&w).is_empty(), "{w:?}");
    // a asks for more too; the lease given back goes to b, whose share is unused.
    s.request_for(1, 5, Shape::cpus(1.0), 1, Priority::Normal, a);
    let g = s.return_lease(1, a_leases[3], false, now);
    assert_eq!(grants(&g).iter().map(|x| x.1).collect::<Vec<_>>(), vec![100], "{g:?}");
    // Equal weights from now on: a, holding 3 of 4 CPUs and wanting more, gives one more
    // back for b's second request.
    let w = s.request_for(2, 102, Shape::cpus(1.0), 1, Priority::Normal, Share { job: 20, weight: Some(3) });
    assert_eq!(reclaimed(&w).len(), 1, "{w:?}");
    assert_eq!(s.reclaiming.len(), 1);
}
