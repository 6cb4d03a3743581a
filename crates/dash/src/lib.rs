//! The head's dashboard: a web page of the cluster (nodes and their use over the last minutes,
//! jobs, tasks, actors, objects, job logs) and its Prometheus metrics (`/metrics`), served by
//! the head (`ferry start --head`, port 8265 by default as Ray's).
//!
//! It reads what the `ferry` commands read, through the head node's typed client
//! ([`ferry_node::client::Client`]): nothing here has state of its own except the samples of
//! the last minutes. Everything it serves is bundled in the binary (no CDN: it works offline).
//!
//! Access: every page and `/metrics` needs the dashboard's access token, derived from the
//! cluster token ([`access_token`]): whoever reads the dashboard cannot join the cluster with
//! what it gave them. `ferry start` prints a URL with it; the page at `/login` takes it (or
//! the cluster token) and keeps it in an HTTP-only cookie; scrapers send it as a bearer token.
//! The dashboard only reads: it starts and stops nothing.

mod api;
mod auth;
mod http;
mod metrics;
mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use auth::access_token;

/// The port Ray's dashboard uses, and ferry's by default.
pub const DEFAULT_PORT: u16 = 8265;

/// Facts only the head's own process knows.
#[derive(Clone, Debug, Default)]
pub struct HeadFacts {
    /// Times its control store was started again after it died.
    pub control_store_restarts: u64,
}

/// What the dashboard serves and where.
pub struct DashOptions {
    /// Where to listen: the head's host, and the dashboard port.
    pub bind: SocketAddr,
    /// The head node's address (`host:port`, as `Client::connect` takes it).
    pub node: String,
    /// The cluster token.
    pub token: String,
    pub head_facts: Option<Arc<dyn Fn() -> HeadFacts + Send + Sync>>,
}

impl std::fmt::Debug for DashOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashOptions").field("bind", &self.bind).field("node", &self.node).finish_non_exhaustive()
    }
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashError {
    #[error("port {port} on {host} is in use by another program; give another with --dashboard-port")]
    PortInUse { host: std::net::IpAddr, port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the dashboard's thread: {0}")]
    Thread(std::io::Error),
}

/// A running dashboard; dropping it stops it.
#[derive(Debug)]
pub struct Dashboard {
    addr: SocketAddr,
    access: String,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl Dashboard {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL that logs a browser in (it carries the access token: give it only to people
    /// who may see the cluster).
    pub fn login_url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.access)
    }

    /// Stops serving and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts the dashboard on a thread of its own; returns once it listens.
pub fn serve(opts: DashOptions) -> Result<Dashboard, DashError> {
    let listener = std::net::TcpListener::bind(opts.bind).map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => DashError::PortInUse { host: opts.bind.ip(), port: opts.bind.port() },
        _ => DashError::Listen { addr: opts.bind, source },
    })?;
    let addr = listener.local_addr().map_err(|source| DashError::Listen { addr: opts.bind, source })?;
    listener.set_nonblocking(true).map_err(|source| DashError::Listen { addr, source })?;
    let access = access_token(&opts.token);
    let app = Arc::new(api::App::new(opts, access.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("ferry-dashboard".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(http::MAX_CONNECTIONS + 4)
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("the dashboard cannot start its runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("the dashboard cannot listen: {e}");
                        return;
                    }
                };
                tokio::spawn(source::sample_forever(app.clone(), stopped.clone()));
                http::accept_loop(listener, api::router(app), stopped).await;
            });
        })
        .map_err(DashError::Thread)?;
    Ok(Dashboard { addr, access, stop: Some(stop), thread: Some(thread) })
}
