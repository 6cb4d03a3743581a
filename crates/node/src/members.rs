//! The control store's membership table: the nodes that joined it, their last heartbeat, and
//! which are dead. A node is dead when its heartbeats stop for longer than the timeout, or at
//! once when its connection closes (a process that was killed closes its sockets; a frozen
//! process or a cut link does not, and is caught by the timeout). Deaths are published to
//! every node, and by each to its processes.
//!
//! A member's side (`join_loop`): it asks the address it was given where the control store
//! is (any node answers), joins it, heartbeats, and when the link breaks (the control store
//! was killed, or restarts) asks and joins again, re-reporting the actors it hosts for it.

use crate::{ConnId, Node, State};
use ferry_proto::msg::{FromNode, NodeStats, NodeView, ProcKind, Shape, ToNode};
use ferry_proto::NodeId;
use ferry_types::sync::MutexExt;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Member {
    addr: String,
    total: Shape,
    /// Its figures at the last heartbeat.
    stats: NodeStats,
    last_seen: Instant,
    pub(crate) alive: bool,
    pub(crate) conn: ConnId,
    /// Its view as last published (without `silent_ms`), and the change that published it.
    published: Option<NodeView>,
    changed: u64,
    /// The last change this member was told of (heartbeat replies carry what changed since).
    told: u64,
}

impl Member {
    /// A node that was alive when the control store stopped: alive until the timeout passes
    /// without it joining again, and then declared dead (published, as any death is), so
    /// that a node that died meanwhile is not forgotten. Until it joins it shows no room.
    pub(crate) fn restored(addr: String, total: Shape) -> Member {
        let stats = NodeStats { total: total.clone(), ..Default::default() };
        // No connection yet: 0 is the daemon's own (actors') id, never a peer's.
        Member {
            addr,
            total,
            stats,
            last_seen: Instant::now(),
            alive: true,
            conn: 0,
            published: None,
            changed: 0,
            told: 0,
        }
    }
}

impl Node {
    pub(crate) fn join_cluster(
        &self,
        st: &mut State,
        conn: ConnId,
        node: NodeId,
        addr: String,
        total: Shape,
    ) -> Option<String> {
        self.opts.head_timeout?;
        tracing::info!("node {node} at {addr} joined with {total}");
        let stats = NodeStats { available: total.clone(), total: total.clone(), ..Default::default() };
        if let Some(c) = &self.tables {
            if let Err(e) = c.put_node(node, &addr, &total) {
                tracing::error!("control store: cannot record node {node}: {e}");
            }
        }
        let (published, changed) = match st.cluster.members.remove(&node) {
            Some(m) => (m.published, m.changed),
            None => (None, 0),
        };
        // `told: 0`: its first heartbeat's answer describes every node.
        let m =
            Member { addr, total, stats, last_seen: Instant::now(), alive: true, conn, published, changed, told: 0 };
        st.cluster.members.insert(node, m);
        publish(st, node);
        self.retry_infeasible(st);
        None
    }

    /// What a member is told in answer to its heartbeat: this node, and every member whose
    /// view changed since it was last told (all of them the first time). An idle cluster of a
    /// thousand nodes then costs a few entries per heartbeat, not a thousand.
    pub(crate) fn changes_for(&self, st: &mut State, node: NodeId) -> Vec<NodeView> {
        let mut v = vec![self.my_view(st)];
        let Some(told) = st.cluster.members.get(&node).map(|m| m.told) else { return v };
        for n in st.cluster.changes.range(told + 1..).map(|(_, n)| *n) {
            if let Some(m) = st.cluster.members.get(&n) {
                v.push(member_view(n, m));
            }
        }
        let last = st.cluster.change_seq;
        if let Some(m) = st.cluster.members.get_mut(&node) {
            m.told = last;
        }
        v
    }

    pub(crate) fn heartbeat(&self, st: &mut State, node: NodeId, stats: NodeStats) {
        if !st.book.waiting.is_empty() {
            // Room may have freed for actors the control store could not place.
            self.retry_infeasible(st);
        }
        if let Some(m) = st.cluster.members.get_mut(&node) {
            if !m.alive {
                tracing::info!("node {node} at {} is heard from again", m.addr);
                if let Some(c) = &self.tables {
                    // Alive again: a restarted control store waits for it too.
                    let _ = c.put_node(node, &m.addr, &m.total);
                }
            }
            m.alive = true;
            m.stats = stats;
            m.last_seen = Instant::now();
            publish(st, node);
        }
    }

    /// Marks silent members dead (called by the head's monitor thread).
    pub(crate) fn check_members(&self, st: &mut State, timeout: Duration) {
        let now = Instant::now();
        let silent: Vec<NodeId> = st
            .cluster
            .members
            .iter()
            .filter(|(_, m)| m.alive && now.duration_since(m.last_seen) > timeout)
            .map(|(n, _)| *n)
            .collect();
        for n in silent {
            self.member_died(st, n, "no heartbeat within the timeout");
        }
    }

    /// A connection closed: if a member's, that node is gone.
    pub(crate) fn member_conn_closed(&self, st: &mut State, conn: ConnId) {
        let gone: Vec<NodeId> =
            st.cluster.members.iter().filter(|(_, m)| m.alive && m.conn == conn).map(|(n, _)| *n).collect();
        for n in gone {
            self.member_died(st, n, "its connection to the control store closed");
        }
    }

    fn member_died(&self, st: &mut State, node: NodeId, why: &str) {
        let Some(m) = st.cluster.members.get_mut(&node) else { return };
        m.alive = false;
        let silent_ms = m.last_seen.elapsed().as_millis() as u64;
        publish(st, node);
        let Some(m) = st.cluster.members.get(&node) else { return };
        tracing::warn!("node {node} at {} is dead: {why} (silent for {silent_ms} ms)", m.addr);
        if let Some(c) = &self.tables {
            // The table holds the nodes alive: what a restarted control store waits for.
            if let Err(e) = c.remove_node(node) {
                tracing::error!("control store: cannot drop node {node}: {e}");
            }
        }
        let msg = FromNode::NodeDied { node, silent_ms };
        let all: Vec<ConnId> = st.conns.iter().filter(|(_, c)| c.registered).map(|(k, _)| *k).collect();
        for c in all {
            self.send(st, c, &msg);
        }
        self.actors_node_died(st, node);
        self.groups_node_died(st, node);
    }

    /// Node `dead` was declared dead: the links of its processes here are closed (a frozen or
    /// cut-off node's stay open otherwise), which releases their leases and holds and frees the
    /// objects they own here, as when a process exits.
    pub(crate) fn close_conns_of(&self, st: &State, dead: NodeId) {
        for c in st.conns.values().filter(|c| c.kind == Some(ProcKind::Client) && c.node == Some(dead)) {
            c.conn.shutdown();
        }
    }

    /// This node as a cluster view shows it (its live figures).
    pub(crate) fn my_view(&self, st: &State) -> NodeView {
        let addr = self.tcp_addr.map(|a| a.to_string()).unwrap_or_default();
        view_of(self.id, addr, self.opts.head_timeout.is_some(), true, 0, &self.stats(st))
    }

    /// Every other node that can run work: the control store's members, or what it last
    /// told a member (less the control store itself).
    pub(crate) fn others(&self, st: &State) -> Vec<NodeView> {
        match self.opts.head_timeout {
            Some(_) => self.cluster_view(st).into_iter().skip(1).collect(),
            None => st.cluster.view.iter().filter(|v| v.node != self.id && !v.head).cloned().collect(),
        }
    }

    /// [`Node::others`], less what actors on their way to them will take.
    pub(crate) fn others_free(&self, st: &State) -> Vec<NodeView> {
        let mut v = self.others(st);
        let now = Instant::now();
        for (node, shape, _) in st.book.pending_hosts.values().filter(|p| p.2.is_none_or(|until| until > now)) {
            if let Some(n) = v.iter_mut().find(|n| n.node == *node) {
                ferry_sched::place::take(&mut n.available, shape);
            }
        }
        v
    }

    /// This node and every other, the control store included.
    pub(crate) fn full_view(&self, st: &State) -> Vec<NodeView> {
        match self.opts.head_timeout {
            Some(_) => self.cluster_view(st),
            None => {
                let mut v = vec![self.my_view(st)];
                v.extend(st.cluster.view.iter().filter(|v| v.node != self.id).cloned());
                v
            }
        }
    }

    /// This node (the head) and every member.
    pub(crate) fn cluster_view(&self, st: &State) -> Vec<NodeView> {
        let mut v = vec![self.my_view(st)];
        for (n, m) in &st.cluster.members {
            let mut view = member_view(*n, m);
            view.silent_ms = m.last_seen.elapsed().as_millis() as u64;
            v.push(view);
        }
        v
    }
}

/// A member's view (`silent_ms` left 0): its total as it joined, and the resources of the
/// placement-group bundles committed there since (renamed: see `groups`).
fn member_view(n: NodeId, m: &Member) -> NodeView {
    let mut stats = m.stats.clone();
    let mut total = m.total.clone();
    for (n, v) in stats.total.0.iter().filter(|(n, _)| n.contains("_group_")) {
        total.set(n, *v as f64 / 1000.0);
    }
    stats.total = total;
    view_of(n, m.addr.clone(), false, m.alive, 0, &stats)
}

/// Records a change of member `node`'s view, if it changed since it was last published.
fn publish(st: &mut State, node: NodeId) {
    let Some(m) = st.cluster.members.get(&node) else { return };
    let view = member_view(node, m);
    if m.published.as_ref() == Some(&view) {
        return;
    }
    st.cluster.change_seq += 1;
    let seq = st.cluster.change_seq;
    let old = m.changed;
    st.cluster.changes.remove(&old);
    st.cluster.changes.insert(seq, node);
    let m = st.cluster.members.get_mut(&node).expect("looked up above");
    m.published = Some(view);
    m.changed = seq;
}

/// What placement needs of a node's view.
pub(crate) fn room(v: &NodeView) -> ferry_sched::place::NodeRoom {
    ferry_sched::place::NodeRoom {
        node: v.node,
        addr: v.addr.clone(),
        head: v.head,
        alive: v.alive,
        total: v.total.clone(),
        available: v.available.clone(),
    }
}

/// [`room`] of each.
pub(crate) fn rooms(vs: &[NodeView]) -> Vec<ferry_sched::place::NodeRoom> {
    vs.iter().map(room).collect()
}

fn view_of(node: NodeId, addr: String, head: bool, alive: bool, silent_ms: u64, s: &NodeStats) -> NodeView {
    NodeView {
        node,
        addr,
        head,
        alive,
        total: s.total.clone(),
        available: s.available.clone(),
        queued: s.pending_lease_requests,
        workers: s.workers,
        silent_ms,
        actors: s.actors,
        objects: s.store_objects,
        object_bytes: s.store_used_bytes + s.spilled_bytes,
        spilled_bytes: s.spilled_bytes,
    }
}

/// The head's monitor: checks heartbeats ten times per timeout.
pub(crate) fn monitor(node: std::sync::Arc<Node>, timeout: Duration) {
    let tick = (timeout / 10).max(Duration::from_millis(10));
    while !node.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(tick);
        let mut st = node.lock();
        node.check_members(&mut st, timeout);
        node.recover_due(&mut st);
    }
}

/// Asks the node at `addr` where the control store is.
fn find_control(node: &Node, addr: &str, every: Duration) -> Result<String, String> {
    use ferry_proto::conn::{connect, Addr};
    use ferry_proto::msg::{ProcKind, ToNode};
    let me = ferry_proto::WorkerId(node.id.0);
    let (conn, mut rx, _) = connect(&Addr::Tcp(addr.to_string()), &node.opts.token, me, node.opts.max_frame)
        .map_err(|e| format!("cannot reach {addr}: {e}"))?;
    conn.send(&ToNode::register_tool(ProcKind::Tool)).map_err(|e| e.to_string())?;
    conn.send(&ToNode::ControlAddress { req: 1 }).map_err(|e| e.to_string())?;
    rx.get_ref().set_read_timeout(Some(every.max(Duration::from_millis(500)))).map_err(|e| e.to_string())?;
    loop {
        match rx.read::<FromNode>().map_err(|e| format!("{addr} did not answer: {e}"))? {
            FromNode::ControlAt { addr: Some(a), .. } => return Ok(a),
            FromNode::ControlAt { addr: None, .. } => return Err(format!("{addr} has not joined a control store")),
            _ => {}
        }
    }
}

/// A member's link to the control store: finds it through the address it was given, joins,
/// re-reports the actors it hosts for it, then sends a heartbeat every interval and keeps the
/// view of the cluster it gets back (what spillback chooses from); joins again when the link
/// breaks.
pub(crate) fn join_loop(node: std::sync::Arc<Node>, given: &str, every: Duration) {
    use ferry_proto::conn::{connect, Addr};
    use ferry_proto::msg::{ProcKind, ToNode};
    use std::sync::atomic::Ordering;
    let stopping = || node.stopping.load(Ordering::SeqCst);
    // The last failure told, so that a control store down for a while is reported once.
    let mut told = String::new();
    // When the control store was last reached: past the grace, the head is gone for good.
    let last_link = std::sync::Arc::new(std::sync::Mutex::new(Instant::now()));
    while !stopping() {
        let since = last_link.locked().elapsed();
        if since > node.opts.head_grace {
            tracing::error!(
                "the control store at {given} has not been reachable for {:.0?} (the grace, \
                 FERRY_HEAD_GRACE_MS); its head is gone: stopping this node",
                since
            );
            node.request_stop();
            return;
        }
        let last_link = last_link.clone();
        let mut head = given.to_string();
        let joined = (|| -> Result<(), String> {
            head = find_control(&node, given, every)?;
            let head = head.as_str();
            let me = ferry_proto::WorkerId(node.id.0);
            let (conn, mut rx, control) =
                connect(&Addr::Tcp(head.to_string()), &node.opts.token, me, node.opts.max_frame)
                    .map_err(|e| format!("cannot reach the control store: {e}"))?;
            let conn = std::sync::Arc::new(conn);
            conn.send(&ToNode::register_tool(ProcKind::Node)).map_err(|e| e.to_string())?;
            let addr = node.tcp_addr.map(|a| a.to_string()).unwrap_or_default();
            let total = node.lock().pool.sched.total();
            conn.send(&ToNode::JoinCluster { req: 1, node: node.id, addr, total }).map_err(|e| e.to_string())?;
            rx.get_ref().set_read_timeout(Some(every.max(Duration::from_millis(10)))).map_err(|e| e.to_string())?;
            let mut joined = false;
            let mut next_beat = Instant::now();
            let mut last_heard = Instant::now();
            while !stopping() {
                if joined && Instant::now() >= next_beat {
                    let s = node.stats(&node.lock());
                    conn.send(&ToNode::Heartbeat { node: node.id, stats: s }).map_err(|e| e.to_string())?;
                    next_beat = Instant::now() + every;
                }
                match rx.read::<FromNode>() {
                    Ok(FromNode::Ack { error: None, .. }) if !joined => {
                        joined = true;
                        tracing::info!("joined the control store at {head}");
                        *node.head_link.locked() = Some(conn.clone());
                        *node.control_addr.locked() = Some(head.to_string());
                        let actors = node.hosted_for(&node.lock(), control);
                        if !actors.is_empty() {
                            conn.send(&ToNode::ActorsHosted { node: node.id, actors }).map_err(|e| e.to_string())?;
                        }
                    }
                    Ok(FromNode::Ack { error: Some(e), .. }) => return Err(e),
                    Ok(FromNode::Cluster { nodes, .. }) => {
                        last_heard = Instant::now();
                        *last_link.locked() = last_heard;
                        let mut st = node.lock();
                        st.cluster.view = nodes;
                        node.retry_infeasible(&mut st);
                    }
                    Ok(FromNode::ClusterChanges { nodes }) => {
                        last_heard = Instant::now();
                        *last_link.locked() = last_heard;
                        let mut st = node.lock();
                        for n in nodes {
                            match st.cluster.view.iter_mut().find(|v| v.node == n.node) {
                                Some(v) => *v = n,
                                None => st.cluster.view.push(n),
                            }
                        }
                        node.retry_infeasible(&mut st);
                    }
                    Ok(m @ FromNode::NodeDied { node: dead, .. }) => {
                        // Published to this node's processes too: their leases there end now.
                        // Its view says so at once, so that their retries are not sent there.
                        let mut st = node.lock();
                        if let Some(v) = st.cluster.view.iter_mut().find(|v| v.node == dead) {
                            v.alive = false;
                        }
                        let all: Vec<ConnId> = st.conns.iter().filter(|(_, c)| c.registered).map(|(k, _)| *k).collect();
                        for c in all {
                            node.send(&st, c, &m);
                        }
                        node.actors_node_died(&mut st, dead);
                        node.close_conns_of(&st, dead);
                    }
                    Ok(FromNode::Log { node: origin, stderr, lines }) => {
                        let mut st = node.lock();
                        node.log_from_head(&mut st, origin, stderr, lines);
                    }
                    Ok(_) => {}
                    Err(ferry_proto::FrameError::Io(e))
                        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.to_string()),
                }
                if last_heard.elapsed() > every * 10 + Duration::from_secs(1) {
                    return Err("the control store stopped answering heartbeats".into());
                }
            }
            Ok(())
        })();
        *node.head_link.locked() = None;
        match joined {
            Err(e) if !stopping() && e != told => {
                tracing::warn!("no link to the control store at {head} ({e}); trying again");
                told = e;
            }
            Err(_) => {}
            Ok(()) => told.clear(),
        }
        std::thread::sleep(every);
    }
}

impl Node {
    /// Membership requests (on the control store) and views of the cluster. Routed here by `handle`.
    pub(crate) fn on_cluster(&self, st: &mut State, conn: ConnId, msg: ToNode) {
        match msg {
            ToNode::JoinCluster { req, node, addr, total } => {
                let error = match self.opts.head_timeout {
                    Some(_) => self.join_cluster(st, conn, node, addr, total),
                    None => Some("this node is not a head: join the head's address".into()),
                };
                self.send(st, conn, &FromNode::Ack { req, error });
            }
            ToNode::Heartbeat { node, stats } => {
                self.heartbeat(st, node, stats);
                let nodes = self.changes_for(st, node);
                self.send(st, conn, &FromNode::ClusterChanges { nodes });
            }
            ToNode::ClusterStatus { req } => {
                let nodes = self.full_view(st);
                self.send(st, conn, &FromNode::Cluster { req, nodes });
            }
            ToNode::ControlAddress { req } => {
                let addr = match self.opts.head_timeout.is_some() {
                    true => self.tcp_addr.map(|a| a.to_string()),
                    false => self.control_addr.locked().clone(),
                };
                self.send(st, conn, &FromNode::ControlAt { req, addr });
            }
            // Routed elsewhere by `handle`.
            _ => {}
        }
    }
}
