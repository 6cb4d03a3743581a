//! `/metrics`: the cluster's Prometheus metrics, aggregated at the head from every node (each
//! node's own figures, asked of it at scrape time) and from the task history. Encoded by
//! `prometheus-client`, from a snapshot taken for the scrape: nothing is kept between scrapes,
//! so nothing here can drift from what the nodes say.

use crate::api::{blocking, ApiError, App};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ferry_node::client::{
    Client, HistoryStats, Latency, NodeStats, NodeView, TaskState, TaskSummaryRow, LATENCY_BOUNDS_US,
};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt::Error;
use std::sync::Arc;

/// Everything one scrape reports.
#[derive(Debug, Default)]
struct Snapshot {
    nodes: Vec<(NodeView, Option<NodeStats>)>,
    rows: Vec<TaskSummaryRow>,
    history: Option<HistoryStats>,
    control_store_restarts: u64,
}

fn take(app: &App) -> Result<Snapshot, String> {
    let source = &app.source;
    let nodes = source.nodes()?;
    let nodes = nodes
        .into_iter()
        .map(|n| {
            // Each live node's own figures (a node that does not answer is reported without).
            let stats = n
                .alive
                .then(|| {
                    let c = if n.addr == source.node {
                        source.node().ok()
                    } else {
                        Client::connect_tcp(&n.addr, &source.token).ok()
                    };
                    c.and_then(|mut c| c.stats().ok())
                })
                .flatten();
            (n, stats)
        })
        .collect();
    let (rows, history) = match source.history().and_then(|mut h| h.summarize_tasks(None).map_err(|e| e.to_string())) {
        Ok(Some((rows, stats))) => (rows, Some(stats)),
        _ => (Vec::new(), None),
    };
    let control_store_restarts = app.head_facts.as_ref().map(|f| f().control_store_restarts).unwrap_or(0);
    Ok(Snapshot { nodes, rows, history, control_store_restarts })
}

pub async fn metrics(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let a = app.clone();
    let snap = blocking(move || take(&a)).await?;
    let mut registry = Registry::with_prefix("ferry");
    registry.register_collector(Box::new(snap));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|e| ApiError::internal(format!("cannot encode the metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response())
}

type Labels = Vec<(&'static str, String)>;

/// One family of gauges or counters: its name, help, type and labelled values.
fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in values {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(v: f64) -> ConstGauge<f64> {
    ConstGauge::new(v)
}

fn node_label(n: &NodeView) -> Labels {
    vec![("node", n.node.to_string()), ("address", n.addr.clone())]
}

fn with(mut l: Labels, k: &'static str, v: impl Into<String>) -> Labels {
    l.push((k, v.into()));
    l
}

/// A histogram from a [`Latency`] (its buckets are per bucket; the encoder adds them up).
fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    of: impl IntoIterator<Item = (Labels, Latency)>,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, l) in of {
        let bounds = LATENCY_BOUNDS_US.iter().map(|&b| b as f64 / 1e6).chain([f64::MAX]);
        let buckets: Vec<(f64, u64)> = bounds.zip(l.buckets.iter().copied().chain(std::iter::repeat(0))).collect();
        m.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            l.sum_us as f64 / 1e6,
            l.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let nodes = &self.nodes;
        family(
            &mut e,
            "node_up",
            "Whether the node is alive (1) or was declared dead (0).",
            MetricType::Gauge,
            nodes.iter().map(|(n, _)| (node_label(n), gauge(if n.alive { 1.0 } else { 0.0 }))),
        )?;
        let resources = |available: bool| {
            nodes.iter().flat_map(move |(n, _)| {
                n.total.0.iter().map(move |(r, total)| {
                    let v = if available { total - n.available.get_milli(r).min(*total) } else { *total };
                    (with(node_label(n), "resource", r.clone()), gauge(v as f64 / 1000.0))
                })
            })
        };
        family(&mut e, "resources_capacity", "A node's resources.", MetricType::Gauge, resources(false))?;
        family(
            &mut e,
            "resources_used",
            "A node's resources held by leases and actors.",
            MetricType::Gauge,
            resources(true),
        )?;
        family(
            &mut e,
            "actors",
            "Actors alive on a node.",
            MetricType::Gauge,
            nodes.iter().map(|(n, _)| (with(node_label(n), "state", "alive"), gauge(n.actors as f64))),
        )?;
        family(
            &mut e,
            "object_store_bytes",
            "Bytes of objects a node holds: in its shared-memory store, or spilled to disk.",
            MetricType::Gauge,
            nodes.iter().flat_map(|(n, _)| {
                [
                    (
                        with(node_label(n), "kind", "in_memory"),
                        gauge(n.object_bytes.saturating_sub(n.spilled_bytes) as f64),
                    ),
                    (with(node_label(n), "kind", "spilled"), gauge(n.spilled_bytes as f64)),
                ]
            }),
        )?;
        family(
            &mut e,
            "object_store_objects",
            "Objects a node holds.",
            MetricType::Gauge,
            nodes.iter().map(|(n, _)| (node_label(n), gauge(n.objects as f64))),
        )?;
        let live: Vec<(&NodeView, &NodeStats)> = nodes.iter().filter_map(|(n, s)| s.as_ref().map(|s| (n, s))).collect();
        family(
            &mut e,
            "object_store_capacity_bytes",
            "The capacity of a node's shared-memory store.",
            MetricType::Gauge,
            live.iter().map(|(n, s)| (node_label(n), gauge(s.store_capacity_bytes as f64))),
        )?;
        family(
            &mut e,
            "workers",
            "A node's worker processes: idle, or leased to an owner.",
            MetricType::Gauge,
            live.iter().flat_map(|(n, s)| {
                [
                    (with(node_label(n), "state", "idle"), gauge(s.idle_workers as f64)),
                    (with(node_label(n), "state", "leased"), gauge(s.leased_workers as f64)),
                ]
            }),
        )?;
        family(
            &mut e,
            "leases",
            "Workers a node has leased to owners.",
            MetricType::Gauge,
            live.iter().map(|(n, s)| (node_label(n), gauge(s.leased_workers as f64))),
        )?;
        family(
            &mut e,
            "lease_requests_pending",
            "Lease requests waiting at a node.",
            MetricType::Gauge,
            live.iter().map(|(n, s)| (node_label(n), gauge(s.pending_lease_requests as f64))),
        )?;
        family(
            &mut e,
            "spilled_bytes",
            "Bytes a node spilled to disk since it started.",
            MetricType::Counter,
            live.iter().map(|(n, s)| (node_label(n), ConstCounter::new(s.spill_total_bytes))),
        )?;
        family(
            &mut e,
            "transfer_bytes",
            "Bytes of objects a node sent to or copied from other nodes since it started.",
            MetricType::Counter,
            live.iter().flat_map(|(n, s)| {
                [
                    (with(node_label(n), "direction", "out"), ConstCounter::new(s.transfer_bytes_out)),
                    (with(node_label(n), "direction", "in"), ConstCounter::new(s.transfer_bytes_in)),
                ]
            }),
        )?;
        // Tasks by state and function, every job's added (exact, from the history's counts).
        let mut by_function: BTreeMap<&str, (Vec<u64>, Latency, Latency)> = BTreeMap::new();
        for r in &self.rows {
            let f = by_function
                .entry(r.function.as_str())
                .or_insert_with(|| (vec![0; 8], Latency::default(), Latency::default()));
            for (a, b) in f.0.iter_mut().zip(&r.counts) {
                *a += b;
            }
            f.1.add(&r.wait);
            f.2.add(&r.run);
        }
        family(
            &mut e,
            "tasks",
            "Tasks (and actor calls) by state and function, as the task history counts them.",
            MetricType::Gauge,
            by_function.iter().flat_map(|(f, (counts, _, _))| {
                TaskState::ALL.iter().map(move |s| {
                    (
                        vec![("state", s.name().to_string()), ("function", f.to_string())],
                        gauge(counts[s.index()] as f64),
                    )
                })
            }),
        )?;
        let fl = |f: &str| vec![("function", f.to_string())];
        histogram(
            &mut e,
            "task_queue_wait_seconds",
            "From a task's submission to its start.",
            by_function.iter().map(|(f, (_, w, _))| (fl(f), w.clone())),
        )?;
        histogram(
            &mut e,
            "task_run_seconds",
            "From a task's start to its end.",
            by_function.iter().map(|(f, (_, _, r))| (fl(f), r.clone())),
        )?;
        if let Some(h) = &self.history {
            family(
                &mut e,
                "task_history_records",
                "Task records the head keeps.",
                MetricType::Gauge,
                [(vec![], gauge(h.records as f64))],
            )?;
            family(
                &mut e,
                "task_history_dropped_records",
                "Records of ended tasks dropped to keep within the per-job limit (their counts stay).",
                MetricType::Counter,
                [(vec![], ConstCounter::new(h.dropped_records))],
            )?;
            family(
                &mut e,
                "task_events_dropped",
                "Task events processes dropped before sending them (their buffers were full).",
                MetricType::Counter,
                [(vec![], ConstCounter::new(h.dropped_events))],
            )?;
        }
        family(
            &mut e,
            "control_store_restarts",
            "Times the head started its control store again after it died.",
            MetricType::Counter,
            [(vec![], ConstCounter::new(self.control_store_restarts))],
        )?;
        Ok(())
    }
}
