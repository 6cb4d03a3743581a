//! Persisted tables (DESIGN §9) in an embedded database (redb: transactional, crash-safe,
//! pure Rust) in the head's state directory. The control store's file (`control.redb`) has its
//! node id, the nodes that joined, the named actors and the specs of the actors it is home
//! for; a control store started again on that directory loads them: the nodes alive when it
//! stopped get a timeout to join again (members retry on their own) and are declared dead if
//! they do not, names stay reserved, actors wait to be re-reported by their hosts. The head node's file (`jobs.redb`) has the jobs it ran: a job's
//! driver is that daemon's child, so its record lives with the process that sees it end.
//!
//! What changes every heartbeat (load, last heard) stays in memory: a restart re-learns it
//! within a heartbeat.

use ferry_proto::msg::{ActorId, ActorSpec, JobView, Shape};
use ferry_proto::NodeId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("named_actors");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const ACTORS: TableDefinition<u64, &[u8]> = TableDefinition::new("actors");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// See the module docs.
pub(crate) struct Tables {
    db: redb::Database,
}

type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Tables {
    /// Opens (or creates) the store `file` in `dir`.
    pub(crate) fn open(dir: &std::path::Path, file: &str) -> Res<Tables> {
        let dir = ferry_os::private_dir_all(dir).map_err(err)?;
        let path = dir.join(file);
        // Its rows hold job arguments (passwords, say): made readable by this user alone
        // before redb opens it (redb would make it with the umask's mode).
        match ferry_os::create_private_file(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
        let db = redb::Database::create(&path).map_err(err)?;
        // Create the tables, so that reads of a new store find them empty.
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(NODES).map_err(err)?;
        tx.open_table(NAMES).map_err(err)?;
        tx.open_table(JOBS).map_err(err)?;
        tx.open_table(ACTORS).map_err(err)?;
        tx.open_table(META).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Tables { db })
    }

    fn write(&self, f: impl FnOnce(&redb::WriteTransaction) -> Res<()>) -> Res<()> {
        let tx = self.db.begin_write().map_err(err)?;
        f(&tx)?;
        tx.commit().map_err(err)
    }

    pub(crate) fn put_node(&self, node: NodeId, addr: &str, total: &Shape) -> Res<()> {
        let v = postcard::to_stdvec(&(addr, total)).map_err(err)?;
        self.write(|tx| tx.open_table(NODES).map_err(err)?.insert(node.0, v.as_slice()).map(|_| ()).map_err(err))
    }

    pub(crate) fn remove_node(&self, node: NodeId) -> Res<()> {
        self.write(|tx| tx.open_table(NODES).map_err(err)?.remove(node.0).map(|_| ()).map_err(err))
    }

    pub(crate) fn nodes(&self) -> Res<Vec<(NodeId, String, Shape)>> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(NODES).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            if let Ok((addr, total)) = postcard::from_bytes::<(String, Shape)>(v.value()) {
                out.push((NodeId(k.value()), addr, total));
            }
        }
        Ok(out)
    }

    pub(crate) fn put_name(&self, name: &str, actor: ActorId, class: &str) -> Res<()> {
        let v = postcard::to_stdvec(&(actor, class)).map_err(err)?;
        self.write(|tx| tx.open_table(NAMES).map_err(err)?.insert(name, v.as_slice()).map(|_| ()).map_err(err))
    }

    pub(crate) fn remove_name(&self, name: &str) -> Res<()> {
        self.write(|tx| tx.open_table(NAMES).map_err(err)?.remove(name).map(|_| ()).map_err(err))
    }

    pub(crate) fn names(&self) -> Res<Vec<(String, ActorId, String)>> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(NAMES).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            if let Ok((actor, class)) = postcard::from_bytes::<(ActorId, String)>(v.value()) {
                out.push((k.value().to_string(), actor, class));
            }
        }
        Ok(out)
    }

    /// The id this store's node has had since the store was made: a control store started
    /// again keeps it, so the actor ids that name it as their home still do.
    pub(crate) fn node_id(&self) -> Res<NodeId> {
        let tx = self.db.begin_write().map_err(err)?;
        let id = {
            let mut t = tx.open_table(META).map_err(err)?;
            let known = t.get("node_id").map_err(err)?.map(|v| v.value());
            match known {
                Some(id) => id,
                None => {
                    let id = ferry_proto::ids::random_u64();
                    t.insert("node_id", id).map_err(err)?;
                    id
                }
            }
        };
        tx.commit().map_err(err)?;
        Ok(NodeId(id))
    }

    pub(crate) fn put_actor(&self, actor: ActorId, spec: &ActorSpec) -> Res<()> {
        let v = postcard::to_stdvec(spec).map_err(err)?;
        self.write(|tx| tx.open_table(ACTORS).map_err(err)?.insert(actor.0, v.as_slice()).map(|_| ()).map_err(err))
    }

    pub(crate) fn remove_actor(&self, actor: ActorId) -> Res<()> {
        self.write(|tx| tx.open_table(ACTORS).map_err(err)?.remove(actor.0).map(|_| ()).map_err(err))
    }

    pub(crate) fn actors(&self) -> Res<Vec<(ActorId, ActorSpec)>> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(ACTORS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            if let Ok(spec) = postcard::from_bytes::<ActorSpec>(v.value()) {
                out.push((ActorId(k.value()), spec));
            }
        }
        Ok(out)
    }

    pub(crate) fn put_job(&self, job: &JobView) -> Res<()> {
        let v = postcard::to_stdvec(job).map_err(err)?;
        self.write(|tx| tx.open_table(JOBS).map_err(err)?.insert(job.id, v.as_slice()).map(|_| ()).map_err(err))
    }

    pub(crate) fn jobs(&self) -> Res<Vec<JobView>> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(JOBS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            if let Ok(j) = postcard::from_bytes::<JobView>(v.value()) {
                out.push(j);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("ferry-control-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Tables::open(&dir, "control.redb").unwrap();
            s.put_node(NodeId(7), "10.0.0.2:1", &Shape::cpus(2.0)).unwrap();
            s.put_name("svc", ActorId(9), "app::Svc").unwrap();
            s.put_name("gone", ActorId(10), "app::Svc").unwrap();
            s.remove_name("gone").unwrap();
            let job = JobView {
                name: "job".into(),
                id: 1,
                hash: "ab".into(),
                args: vec!["x".into()],
                pid: 5,
                started_ms: 1,
                ended_ms: None,
                code: None,
                stopped: false,
                driver: ferry_proto::WorkerId(3),
            };
            s.put_job(&job).unwrap();
            s.put_job(&JobView { ended_ms: Some(2), code: Some(0), ..job }).unwrap();
        }
        let s = Tables::open(&dir, "control.redb").unwrap();
        assert_eq!(s.nodes().unwrap(), vec![(NodeId(7), "10.0.0.2:1".to_string(), Shape::cpus(2.0))]);
        assert_eq!(s.names().unwrap(), vec![("svc".to_string(), ActorId(9), "app::Svc".to_string())]);
        let jobs = s.jobs().unwrap();
        assert_eq!((jobs.len(), jobs[0].code), (1, Some(0)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
