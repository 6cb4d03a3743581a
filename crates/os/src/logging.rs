//! The one log facade: ferry's crates emit `tracing` events (with spans for tasks, leases,
//! actors and objects); [`init`] installs the subscriber that writes them to standard error,
//! filtered by `FERRY_LOG`, else `RUST_LOG` (`warn`, `ferry_node=debug`,
//! `info,ferry_core=trace`, ...), else [`DEFAULT_FILTER`].
//!
//! A program that installs its own subscriber before `ferry::init` keeps it. A worker's
//! standard error is captured and sent to the drivers' terminals, so what a task logs appears
//! there as its prints do.

use std::io::IsTerminal;
use std::str::FromStr;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// What is logged when neither `FERRY_LOG` nor `RUST_LOG` says.
pub const DEFAULT_FILTER: &str = "info";

/// Whether events carry the time: a daemon's log file, yes; a driver's terminal, no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Terminal,
    Daemon,
}

/// The filter the environment asks for, or the default and why the one asked for does not
/// parse.
pub fn filter() -> (Targets, Option<String>) {
    let asked = ["FERRY_LOG", "RUST_LOG"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()));
    let default = || Targets::from_str(DEFAULT_FILTER).unwrap_or_default();
    match asked.as_deref().map(Targets::from_str) {
        Some(Ok(t)) => (t, None),
        Some(Err(e)) => {
            let why = format!(
                "the log filter {:?} (FERRY_LOG or RUST_LOG) is not valid ({e}); logging at {DEFAULT_FILTER}: give \
                 levels like `warn` or `info,ferry_node=debug`",
                asked.unwrap_or_default()
            );
            (default(), Some(why))
        }
        None => (default(), None),
    }
}

/// Installs ferry's subscriber for this process unless one is installed already; returns
/// whether it did.
pub fn init(style: Style) -> bool {
    let ansi = std::io::stderr().is_terminal();
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let (filter, invalid) = filter();
    let r = match style {
        Style::Terminal => tracing_subscriber::registry().with(layer.without_time().with_filter(filter)).try_init(),
        Style::Daemon => tracing_subscriber::registry().with(layer.with_filter(filter)).try_init(),
    };
    if let Some(why) = invalid.filter(|_| r.is_ok()) {
        tracing::warn!("{why}");
    }
    r.is_ok()
}
