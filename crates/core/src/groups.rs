//! Placement groups, the program's side (Ray's `placement_group`): resources reserved for a
//! group of bundles, atomically across nodes, then used by tasks and actors placed in them
//! with `.placement_group(&pg, Some(bundle))`. The group lives at the control store (the
//! node, alone); see `ferry_node`'s `groups` module for how it is placed.

use crate::error::{Error, Result};
use crate::runtime::runtime;
use crate::ObjectRef;
use ferry_proto::msg::{FromNode, GroupView, ToNode};
use ferry_proto::{GroupStrategy, NodeId, Shape};
use std::time::{Duration, Instant};

pub use ferry_proto::msg::GroupPhase;

/// A placement group: its id, bundles and strategy. Dropping it does not remove it (as in
/// Ray): call [`PlacementGroup::remove`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementGroup {
    id: u64,
    bundles: Vec<Shape>,
    strategy: GroupStrategy,
}

/// Reserves `bundles` (each a [`Shape`]: `Shape::cpus(1.0)`, `Shape::with_resources(..)`)
/// laid out by `strategy`, in the background: [`PlacementGroup::ready`] says when every
/// bundle is reserved. A group that no set of nodes could ever hold fails `ready` with
/// [`Error::Infeasible`].
pub fn placement_group(bundles: impl IntoIterator<Item = Shape>, strategy: GroupStrategy) -> Result<PlacementGroup> {
    placement_group_named("", bundles, strategy)
}

/// [`placement_group`] with a name, shown by `ferry status` and [`placement_groups`].
pub fn placement_group_named(
    name: &str,
    bundles: impl IntoIterator<Item = Shape>,
    strategy: GroupStrategy,
) -> Result<PlacementGroup> {
    let bundles: Vec<Shape> = bundles.into_iter().collect();
    if bundles.is_empty() || bundles.iter().any(|b| b.0.is_empty()) {
        return Err(Error::InvalidArgument {
            detail: format!(
                "a placement group needs one bundle or more, each with some resource (got {bundles:?}); \
                 give bundles such as Shape::cpus(1.0)"
            ),
        });
    }
    let rt = runtime()?;
    let id = ferry_proto::ids::random_u64();
    let conn = rt.control_conn()?;
    let m = |req| ToNode::CreateGroup { req, group: id, name: name.to_string(), bundles: bundles.clone(), strategy };
    match rt.call_at(&conn, m)? {
        FromNode::Ack { error: None, .. } => Ok(PlacementGroup { id, bundles, strategy }),
        FromNode::Ack { error: Some(detail), .. } => Err(Error::InvalidArgument { detail }),
        other => Err(Error::Connection { detail: format!("unexpected answer to a placement group: {other:?}") }),
    }
}

/// Every placement group of the cluster (removed and infeasible ones too, the newest
/// thousand).
pub fn placement_groups() -> Result<Vec<GroupView>> {
    list(None)
}

fn list(group: Option<u64>) -> Result<Vec<GroupView>> {
    let rt = runtime()?;
    let conn = rt.control_conn()?;
    match rt.call_at(&conn, |req| ToNode::ListGroups { req, group })? {
        FromNode::Groups { groups, .. } => Ok(groups),
        other => Err(Error::Connection { detail: format!("unexpected answer to a placement group list: {other:?}") }),
    }
}

impl PlacementGroup {
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn bundles(&self) -> &[Shape] {
        &self.bundles
    }
    pub fn strategy(&self) -> GroupStrategy {
        self.strategy
    }

    /// The group as its home knows it now: its phase and each bundle's node.
    pub fn info(&self) -> Result<GroupView> {
        list(Some(self.id))?.pop().ok_or_else(|| Error::InvalidArgument {
            detail: format!("placement group {:016x} is not known to the control store (it restarted?)", self.id),
        })
    }

    /// The node of each bundle (`None` while not placed).
    pub fn bundle_nodes(&self) -> Result<Vec<Option<NodeId>>> {
        Ok(self.info()?.bundles.into_iter().map(|(_, n)| n).collect())
    }

    /// A ref that is ready once every bundle is reserved: `get` it, `wait` on it beside
    /// other refs, or `.await` it. It fails with [`Error::Infeasible`] if the group can
    /// never be placed, or was removed first.
    pub fn ready(&self) -> ObjectRef<()> {
        let Ok(rt) = runtime() else {
            return ObjectRef::from_id(ferry_proto::ObjectId::default());
        };
        let obj = rt.pending_object();
        let id = self.id;
        let _ = std::thread::Builder::new().name("ferry-pg-ready".into()).spawn(move || {
            rt.settle_object(obj, placed(id, None).map(|()| Vec::new()));
        });
        ObjectRef::from_id(obj)
    }

    /// Waits up to `timeout` for every bundle to be reserved ([`Error::Timeout`] if they
    /// are not by then).
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        placed(self.id, Some(Instant::now() + timeout))
    }

    /// Removes the group: its bundles' resources go back to their nodes, and the tasks and
    /// actors running in them are killed (as in Ray). Tasks still waiting for it fail with
    /// [`Error::Infeasible`].
    pub fn remove(&self) -> Result<()> {
        remove_placement_group(self)
    }
}

/// Waits until group `id` is placed (or `deadline` passes), asking its home, sooner at
/// first.
fn placed(id: u64, deadline: Option<Instant>) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match list(Some(id))?.pop() {
            Some(v) => match v.phase {
                GroupPhase::Created => return Ok(()),
                GroupPhase::Infeasible | GroupPhase::Removed => {
                    return Err(Error::Infeasible {
                        task: format!("placement group {id:016x}"),
                        detail: v.reason.unwrap_or_else(|| "it was removed".into()),
                    })
                }
                GroupPhase::Pending | GroupPhase::Rescheduling => {}
            },
            None => {
                return Err(Error::InvalidArgument {
                    detail: format!("placement group {id:016x} is not known to the control store"),
                })
            }
        }
        if deadline.is_some_and(|d| Instant::now() + pause > d) {
            return Err(Error::Timeout { waited: start.elapsed() });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// See [`PlacementGroup::remove`].
pub fn remove_placement_group(pg: &PlacementGroup) -> Result<()> {
    let rt = runtime()?;
    let conn = rt.control_conn()?;
    match rt.call_at(&conn, |req| ToNode::RemoveGroup { req, group: pg.id })? {
        FromNode::Ack { error: None, .. } => Ok(()),
        FromNode::Ack { error: Some(detail), .. } => Err(Error::InvalidArgument { detail }),
        other => Err(Error::Connection { detail: format!("unexpected answer to a removal: {other:?}") }),
    }
}

/// The shape a task or actor of `shape` asks for inside bundle `bundle` of `group` (any of
/// its bundles if `None`): its resources renamed for the bundle, as the nodes offer them.
pub(crate) fn shape_in(shape: &Shape, group: u64, bundle: Option<u32>) -> Shape {
    use ferry_types::{bundle_resource, BUNDLE};
    let mut out = Shape::default();
    for (n, v) in &shape.0 {
        out.set(&bundle_resource(n, group, bundle), *v as f64 / 1000.0);
        if bundle.is_some() {
            out.set(&bundle_resource(n, group, None), *v as f64 / 1000.0);
        }
    }
    // Something of the bundle, so that even a task that needs nothing lands there.
    out.set(&bundle_resource(BUNDLE, group, bundle), 0.001);
    out
}
