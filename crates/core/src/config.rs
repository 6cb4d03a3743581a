//! Every tunable of a ferry process, in one place, with its default and its environment
//! override (`FERRY_<NAME>`, read by [`Config::default`]).

use std::time::Duration;

/// How to start or join a cluster, and the runtime's tunables.
///
/// ```no_run
/// let cfg = ferry_core::Config::default().num_cpus(4).resource("disk", 2.0);
/// ```
#[derive(Clone)]
pub struct Config {
    /// Join the node at this address (`host:port`, from `ferry start`) instead of starting an
    /// embedded one. Env: `FERRY_ADDRESS`.
    pub address: Option<String>,
    /// The namespace of this job's actor names (Ray's `namespace`): named actors are unique
    /// within a namespace and found by name in it. Default: an anonymous namespace of this
    /// job's own. Env: `FERRY_NAMESPACE`.
    pub namespace: Option<String>,
    /// The cluster token (printed by `ferry start`). Env: `FERRY_TOKEN`. Default: read from
    /// the token file `ferry start` wrote for this user on the node's host (in the private
    /// runtime directory, see `ferry_os::runtime_dir`), or random for an embedded cluster.
    pub token: Option<String>,
    /// CPUs of the embedded node (default: the machine's cores). Env: `FERRY_NUM_CPUS`.
    pub num_cpus: Option<usize>,
    /// Custom resources of the embedded node, e.g. `("gpu", 1.0)`.
    pub resources: Vec<(String, f64)>,
    /// Values whose encoding is at most this many bytes travel inline (in task specs,
    /// replies and the owner's memory); larger ones go to the shared-memory store.
    /// Env: `FERRY_INLINE_MAX_BYTES`. Default 100 KiB.
    pub inline_max_bytes: usize,
    /// Capacity of the node's store. Env: `FERRY_OBJECT_STORE_BYTES`. Default 30% of RAM.
    /// Past it, the oldest objects spill to `spill_dir`.
    pub object_store_bytes: Option<u64>,
    /// Where objects spill when the store is full (should be on disk). Env:
    /// `FERRY_SPILL_DIR`. Default: `spill` in the session's directory under `$TMPDIR`.
    pub spill_dir: Option<std::path::PathBuf>,
    /// Tasks pushed to one leased worker before its replies come back. Env:
    /// `FERRY_MAX_TASKS_IN_FLIGHT`. Default 16.
    pub max_tasks_in_flight_per_worker: usize,
    /// Lease requests one owner keeps outstanding per scheduling class. Default 2.
    pub max_pending_lease_requests: usize,
    /// Bytes of task arguments (inline values, and stored objects they hold) an owner keeps to
    /// make lost objects again (lineage). Objects made past it are not reconstructable.
    /// Default 256 MiB.
    pub max_lineage_bytes: usize,
    /// A lease unused this long is returned to the daemon. Env: `FERRY_LEASE_IDLE_MS`.
    /// Default 1 s (the daemon also recalls idle leases at once when it runs short).
    pub lease_idle_timeout: Duration,
    /// Workers started ahead of need (default: `num_cpus`). Env: `FERRY_PRESTART_WORKERS`.
    pub prestart_workers: Option<usize>,
    /// Most worker processes on a node (actors are processes too): a safety cap.
    /// Env: `FERRY_MAX_WORKERS`. Default 4096.
    pub max_workers: usize,
    /// Idle workers beyond the prestarted ones are stopped after this. Default 5 s.
    pub idle_worker_timeout: Duration,
    /// Largest frame accepted on any connection. Default 64 MiB.
    pub max_frame_bytes: u32,
    /// Default retries of a task whose worker dies. Default 3.
    pub default_max_retries: u32,
    /// Record each task's changes of state (`ferry list tasks`, `ferry summary tasks`): sent
    /// to the node in batches, off the task path. Env: `FERRY_TASK_EVENTS` (`0` turns it off).
    /// Default on: it costs the task round trip and the 20,000-task throughput a few percent
    /// at most on two cores (`ferry-bench observability`; BENCHMARKS.md has the figures).
    pub task_events: bool,
    /// This job's weight in fair sharing: when jobs together want more CPUs than a node has,
    /// each gets a share in proportion to its weight (default 1). Env: `FERRY_JOB_WEIGHT`
    /// (set by `ferry job submit --weight`).
    pub job_weight: Option<u32>,
    /// Show a progress bar on standard error (when it is a terminal) while `get_all` or `wait`
    /// waits on 1,000 refs or more for over a second. Env: `FERRY_PROGRESS` (`0` turns them
    /// off). Default on.
    pub progress_bars: bool,
    /// Takes the errors of tasks whose every ref was dropped without a `get` (Ray's
    /// "unhandled errors"). Default: each is printed once on this process's standard error
    /// (in a worker, that reaches the driver's terminal).
    pub on_unhandled_error: Option<UnhandledHook>,
}

/// What [`Config::on_unhandled_error`] calls, once per error nobody read.
pub type UnhandledHook = std::sync::Arc<dyn Fn(&crate::owner::UnhandledError) + Send + Sync>;

/// Every field but the token, which no log or panic message should carry.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("num_cpus", &self.num_cpus)
            .field("resources", &self.resources)
            .field("inline_max_bytes", &self.inline_max_bytes)
            .field("object_store_bytes", &self.object_store_bytes)
            .field("spill_dir", &self.spill_dir)
            .field("max_tasks_in_flight_per_worker", &self.max_tasks_in_flight_per_worker)
            .field("max_pending_lease_requests", &self.max_pending_lease_requests)
            .field("max_lineage_bytes", &self.max_lineage_bytes)
            .field("lease_idle_timeout", &self.lease_idle_timeout)
            .field("prestart_workers", &self.prestart_workers)
            .field("max_workers", &self.max_workers)
            .field("idle_worker_timeout", &self.idle_worker_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("default_max_retries", &self.default_max_retries)
            .field("task_events", &self.task_events)
            .field("job_weight", &self.job_weight)
            .field("progress_bars", &self.progress_bars)
            .field("on_unhandled_error", &self.on_unhandled_error.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

use ferry_types::defaults::{self, env, env_str};

impl Default for Config {
    fn default() -> Self {
        Config {
            address: env_str("FERRY_ADDRESS"),
            namespace: env_str("FERRY_NAMESPACE"),
            token: env_str("FERRY_TOKEN"),
            num_cpus: env("FERRY_NUM_CPUS"),
            resources: Vec::new(),
            inline_max_bytes: env("FERRY_INLINE_MAX_BYTES").unwrap_or(defaults::INLINE_MAX_BYTES),
            object_store_bytes: env("FERRY_OBJECT_STORE_BYTES"),
            spill_dir: std::env::var_os("FERRY_SPILL_DIR").filter(|d| !d.is_empty()).map(Into::into),
            max_tasks_in_flight_per_worker: env("FERRY_MAX_TASKS_IN_FLIGHT")
                .unwrap_or(defaults::MAX_TASKS_IN_FLIGHT)
                .max(1),
            max_pending_lease_requests: defaults::MAX_PENDING_LEASE_REQUESTS,
            max_lineage_bytes: defaults::MAX_LINEAGE_BYTES,
            lease_idle_timeout: env("FERRY_LEASE_IDLE_MS").map(Duration::from_millis).unwrap_or(defaults::LEASE_IDLE),
            prestart_workers: env("FERRY_PRESTART_WORKERS"),
            max_workers: env("FERRY_MAX_WORKERS").unwrap_or(defaults::MAX_WORKERS),
            idle_worker_timeout: defaults::IDLE_WORKER_TIMEOUT,
            max_frame_bytes: ferry_proto::DEFAULT_MAX_FRAME,
            default_max_retries: defaults::MAX_RETRIES,
            on_unhandled_error: None,
            progress_bars: env_str("FERRY_PROGRESS").is_none_or(|v| v != "0" && v != "false"),
            task_events: env_str("FERRY_TASK_EVENTS").is_none_or(|v| v != "0" && v != "false"),
            job_weight: env::<u32>("FERRY_JOB_WEIGHT").filter(|w| *w > 0),
        }
    }
}

impl Config {
    /// Sets the embedded node's CPU count.
    pub fn num_cpus(mut self, n: usize) -> Self {
        self.num_cpus = Some(n.max(1));
        self
    }
    /// This job's weight in fair sharing between jobs (see [`Config::job_weight`]).
    pub fn weight(mut self, w: u32) -> Self {
        self.job_weight = Some(w.max(1));
        self
    }
    /// Adds a custom resource to the embedded node.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.push((name.to_string(), amount));
        self
    }
    /// Sets the store's capacity in bytes.
    pub fn object_store_bytes(mut self, bytes: u64) -> Self {
        self.object_store_bytes = Some(bytes);
        self
    }
    /// Joins the node at `address` (`host:port`) instead of starting an embedded one.
    pub fn address(mut self, address: &str) -> Self {
        self.address = Some(address.to_string());
        self
    }
    /// Sets the cluster token.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }
    /// Sets the spill directory.
    pub fn spill_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }
    /// Sets the inline threshold in bytes.
    /// The namespace of this job's actor names (see the field).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// Takes the errors nobody read instead of printing them (see the field).
    pub fn on_unhandled_error(mut self, f: impl Fn(&crate::owner::UnhandledError) + Send + Sync + 'static) -> Self {
        self.on_unhandled_error = Some(std::sync::Arc::new(f));
        self
    }

    pub fn inline_max_bytes(mut self, bytes: usize) -> Self {
        self.inline_max_bytes = bytes;
        self
    }

    /// Shows progress bars or not (see the field).
    pub fn progress_bars(mut self, on: bool) -> Self {
        self.progress_bars = on;
        self
    }

    /// Records task events or not (see the field).
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
        self
    }

    /// The CPUs the embedded node offers.
    pub fn cpus(&self) -> usize {
        self.num_cpus.unwrap_or_else(defaults::cpus)
    }

    /// The settings a worker inherits from its driver, as environment variables.
    #[doc(hidden)]
    pub fn to_worker_env(&self) -> Vec<(String, String)> {
        vec![
            ("FERRY_INLINE_MAX_BYTES".into(), self.inline_max_bytes.to_string()),
            ("FERRY_MAX_TASKS_IN_FLIGHT".into(), self.max_tasks_in_flight_per_worker.to_string()),
            ("FERRY_LEASE_IDLE_MS".into(), self.lease_idle_timeout.as_millis().to_string()),
            ("FERRY_TASK_EVENTS".into(), if self.task_events { "1" } else { "0" }.into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_leaves_the_token_out() {
        let c = super::Config::default().token("very-secret-token");
        let d = format!("{c:?}");
        assert!(!d.contains("very-secret-token") && d.contains("<redacted>"), "{d}");
    }
}
