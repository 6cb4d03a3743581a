//! Progress bars for long waits on many refs (`get_all`, `wait`), as `indicatif` draws them
//! on a terminal: only in a driver whose standard error is a terminal, only for waits on at
//! least [`MIN_REFS`] refs, and only once the wait has lasted [`SHOW_AFTER`] (a short wait
//! draws nothing). `Config::progress_bars` (or `FERRY_PROGRESS=0`) turns them off.

use super::Runtime;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Fewer refs than this never get a bar.
pub(crate) const MIN_REFS: usize = 1000;
/// A wait shorter than this never shows one.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// A wait's bar, hidden until it has lasted [`SHOW_AFTER`].
pub(crate) struct Progress {
    bar: ProgressBar,
    since: Instant,
    shown: bool,
}

impl Progress {
    /// A bar for a wait on `total` refs, or `None` when none may be shown.
    pub(crate) fn new(rt: &Runtime, what: &'static str, total: usize) -> Option<Progress> {
        if total < MIN_REFS || !rt.cfg.progress_bars || rt.executor.is_some() || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} ready ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what);
        Some(Progress { bar, since: Instant::now(), shown: false })
    }

    /// `done` of the refs are ready.
    pub(crate) fn at(&mut self, done: usize) {
        if !self.shown && self.since.elapsed() >= SHOW_AFTER {
            self.shown = true;
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        self.bar.set_position(done as u64);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.shown {
            self.bar.finish_and_clear();
        }
    }
}
