//! Where the dashboard's data comes from: the head node and its control store, through the
//! typed client (blocking calls, run on the runtime's blocking threads), and the samples of
//! the cluster's use it keeps for the last minutes.

use crate::api::App;
use ferry_node::client::{Client, NodeView, TaskState, TaskSummaryRow};
use ferry_types::sync::MutexExt;
use ferry_types::CPU;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often the cluster is sampled, and how many samples are kept (six minutes).
const EVERY: Duration = Duration::from_secs(2);
pub const KEPT: usize = 180;

/// The cluster at one moment (the dashboard's charts).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub nodes_alive: u64,
    pub cpu_total: f64,
    pub cpu_used: f64,
    pub store_bytes: u64,
    pub spilled_bytes: u64,
    pub workers: u64,
    pub actors: u64,
    pub tasks_running: u64,
    pub tasks_finished: u64,
    pub tasks_failed: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The head node and its token.
#[derive(Clone, Debug)]
pub struct Source {
    pub node: String,
    pub token: String,
}

impl Source {
    pub fn node(&self) -> Result<Client, String> {
        Client::connect(&self.node, &self.token).map_err(|e| e.to_string())
    }

    /// Whatever keeps the task history (the control store).
    pub fn history(&self) -> Result<Client, String> {
        self.node()?.into_history(&self.token).map_err(|e| e.to_string())
    }

    /// The cluster's nodes that run work (not its control store), as the control store sees
    /// them.
    pub fn nodes(&self) -> Result<Vec<NodeView>, String> {
        self.node()?.nodes(&self.token).map_err(|e| e.to_string())
    }

    /// Every live node's answer to `ask` (nodes that cannot be asked are left out).
    pub fn each<T>(
        &self,
        mut ask: impl FnMut(&mut Client) -> Result<T, ferry_node::client::ClientError>,
    ) -> Result<Vec<(NodeView, T)>, String> {
        let nodes = self.node()?.each_node(&self.token).map_err(|e| e.to_string())?;
        Ok(nodes.into_iter().filter_map(|(n, c)| c.and_then(|mut c| ask(&mut c)).ok().map(|v| (n, v))).collect())
    }

    /// Tasks by job and function (empty if the history cannot be read).
    pub fn summary(&self, job: Option<ferry_node::client::JobId>) -> Result<Vec<TaskSummaryRow>, String> {
        let mut h = self.history()?;
        Ok(h.summarize_tasks(job).map_err(|e| e.to_string())?.map(|(rows, _)| rows).unwrap_or_default())
    }

    fn sample(&self) -> Result<Sample, String> {
        let nodes = self.nodes()?;
        let mut s = Sample { t_ms: now_ms(), ..Default::default() };
        for n in nodes.iter().filter(|n| n.alive) {
            s.nodes_alive += 1;
            let (t, a) = (n.total.get_milli(CPU) as f64 / 1000.0, n.available.get_milli(CPU) as f64 / 1000.0);
            s.cpu_total += t;
            s.cpu_used += (t - a).max(0.0);
            s.store_bytes += n.object_bytes;
            s.spilled_bytes += n.spilled_bytes;
            s.workers += n.workers;
            s.actors += n.actors;
        }
        for r in self.summary(None).unwrap_or_default() {
            let c = |st: TaskState| r.counts.get(st.index()).copied().unwrap_or(0);
            s.tasks_running += c(TaskState::Running) + c(TaskState::Blocked);
            s.tasks_finished += c(TaskState::Finished);
            s.tasks_failed += c(TaskState::Failed);
        }
        Ok(s)
    }
}

/// Samples the cluster every [`EVERY`] until `stop`.
pub async fn sample_forever(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        let source = app.source.clone();
        match tokio::task::spawn_blocking(move || source.sample()).await {
            Ok(Ok(s)) => {
                let mut kept = app.samples.locked();
                if kept.len() == KEPT {
                    kept.pop_front();
                }
                kept.push_back(s);
            }
            Ok(Err(e)) => tracing::debug!("the dashboard could not sample the cluster: {e}"),
            Err(e) => tracing::debug!("the dashboard's sampler failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
