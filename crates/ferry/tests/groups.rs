//! Placement groups on one node (issue 16): bundles reserved at once or not at all, tasks
//! and actors run inside them, removal gives everything back and ends what ran there,
//! competing groups never deadlock, and a group that can never fit fails as infeasible.
//! Across nodes: `cli/tests/groups.rs`.

mod common;

use common::*;
use ferry::prelude::*;
use ferry::{GroupPhase, GroupStrategy, Shape};

#[ferry::remote]
fn whoami() -> u32 {
    std::process::id()
}

#[ferry::actor]
struct Keeper {
    n: u32,
}

#[ferry::actor]
impl Keeper {
    fn new() -> Self {
        Keeper { n: 0 }
    }
    fn bump(&mut self) -> u32 {
        self.n += 1;
        self.n
    }
}

fn free_cpus() -> u64 {
    ferry::node_stats().unwrap().available.get_milli(ferry::CPU)
}

fn not_ready<T: serde::de::DeserializeOwned + 'static>(r: &ObjectRef<T>, within: Duration) -> bool {
    ferry::wait(std::slice::from_ref(r), 1, Some(within)).unwrap().0.is_empty()
}

#[test]
fn a_group_reserves_its_bundles_and_what_runs_inside_ends_with_it() {
    ferry_testkit::own_process!();
    cluster();
    let pg = ferry::placement_group_named("pair", vec![Shape::cpus(1.0); 2], GroupStrategy::Pack).unwrap();
    ferry::get_timeout(&pg.ready(), T).expect("placed");
    let info = pg.info().unwrap();
    assert_eq!(info.phase, GroupPhase::Created);
    assert_eq!(info.bundles.iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![Some(ferry::node_id().unwrap()); 2]);
    assert!(ferry::placement_groups().unwrap().iter().any(|g| g.group == pg.id() && g.name == "pair"));
    assert_eq!(free_cpus(), 0, "both CPUs are the group's");
    // A task outside the group waits; tasks and actors inside it run.
    let outside = whoami::remote();
    assert!(not_ready(&outside, Duration::from_millis(300)), "a task outside the group took its CPUs");
    let inside = whoami::options().placement_group(&pg, Some(0)).remote();
    ferry::get_timeout(&inside, T).unwrap();
    let anywhere = whoami::options().placement_group(&pg, None).remote();
    ferry::get_timeout(&anywhere, T).unwrap();
    let keeper = Keeper::options().num_cpus(1.0).placement_group(&pg, Some(1)).remote().unwrap();
    assert_eq!(ferry::get_timeout(&keeper.bump(), T).unwrap(), 1);
    assert!(not_ready(&outside, Duration::from_millis(100)));
    // Removed: its CPUs come back (the waiting task runs) and its actor is ended.
    pg.remove().unwrap();
    ferry::get_timeout(&outside, T).expect("the CPUs came back");
    eventually("the group's actor is ended", T, || ferry::get_timeout(&keeper.bump(), T).is_err());
    eventually("both CPUs are free", T, || free_cpus() == 2000);
    assert_eq!(pg.info().unwrap().phase, GroupPhase::Removed);
    // A task for a removed group fails, saying why.
    let late = whoami::options().placement_group(&pg, Some(0)).remote();
    match ferry::get_timeout(&late, T) {
        Err(ferry::Error::Infeasible { detail, .. }) if detail.contains("removed") => {}
        other => panic!("expected Infeasible (removed), got {other:?}"),
    }
}

#[test]
fn competing_groups_wait_their_turn_and_impossible_ones_fail() {
    ferry_testkit::own_process!();
    cluster();
    let first = ferry::placement_group(vec![Shape::cpus(2.0)], GroupStrategy::StrictPack).unwrap();
    let second = ferry::placement_group(vec![Shape::cpus(1.0); 2], GroupStrategy::Pack).unwrap();
    ferry::get_timeout(&first.ready(), T).unwrap();
    let second_ready = second.ready();
    assert!(not_ready(&second_ready, Duration::from_millis(300)), "two groups hold the node's two CPUs");
    assert_eq!(second.info().unwrap().phase, GroupPhase::Pending);
    // A task for the waiting group waits with it, then runs.
    let queued = whoami::options().placement_group(&second, Some(1)).remote();
    assert!(not_ready(&queued, Duration::from_millis(100)));
    first.remove().unwrap();
    ferry::block_on(async { (&second_ready).await }).expect("placed once the first is gone");
    ferry::get_timeout(&queued, T).unwrap();
    second.remove().unwrap();

    for (bundles, strategy) in [
        (vec![Shape::cpus(3.0)], GroupStrategy::Pack),
        (vec![Shape::cpus(1.0); 2], GroupStrategy::StrictSpread),
        (vec![Shape::with_resources(0.0, &[("gpu".into(), 1.0)])], GroupStrategy::Spread),
    ] {
        let pg = ferry::placement_group(bundles, strategy).unwrap();
        match ferry::get_timeout(&pg.ready(), T) {
            Err(ferry::Error::Infeasible { detail, .. }) if detail.contains(strategy.name()) => {}
            other => panic!("expected Infeasible under {strategy:?}, got {other:?}"),
        }
    }
    assert!(matches!(ferry::placement_group(vec![], GroupStrategy::Pack), Err(ferry::Error::InvalidArgument { .. })));
    assert_eq!(free_cpus(), 2000, "nothing is left reserved");
}
