//! Accepting browsers and scrapers that may be hostile: at most [`MAX_CONNECTIONS`] at once
//! and [`PER_SOURCE`] from one address, a deadline for each request's headers, a bounded
//! buffer per connection and a bounded life, back-off when descriptors run out.

use axum::Router;
use ferry_types::sync::MutexExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections from one address at once.
pub const PER_SOURCE: usize = 16;
/// A request's headers must arrive within this.
const HEADERS_WITHIN: Duration = Duration::from_secs(10);
/// A connection is closed after this (browsers open another).
const LIFETIME: Duration = Duration::from_secs(120);
/// The most a connection buffers of a request.
const MAX_BUF: usize = 64 << 10;

/// Connections per source address.
#[derive(Default)]
struct Sources(Mutex<HashMap<IpAddr, usize>>);

impl Sources {
    fn enter(&self, ip: IpAddr) -> bool {
        let mut m = self.0.locked();
        let n = m.entry(ip).or_default();
        if *n >= PER_SOURCE {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.0.locked();
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `stop` says so.
pub async fn accept_loop(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources = Arc::new(Sources::default());
    let mut last_warning: Option<Instant> = None;
    let mut refused = 0u64;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (or a connection reset before it was taken): wait a
                // little instead of spinning.
                tracing::warn!("the dashboard cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !sources.enter(peer.ip()) {
            refused += 1;
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                tracing::warn!("the dashboard refused {refused} connection(s): {} has {PER_SOURCE} open", peer.ip());
                last_warning = Some(Instant::now());
                refused = 0;
            }
            continue;
        }
        let svc = TowerToHyperService::new(app.clone());
        let sources = sources.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(HEADERS_WITHIN).max_buf_size(MAX_BUF);
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(LIFETIME, conn).await;
            sources.leave(peer.ip());
        });
    }
}
