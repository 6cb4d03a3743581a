//! Accepting connections from peers that may be hostile (SECURITY.md).
//!
//! Before a peer proves it holds the cluster token it is a stranger, and a stranger may open
//! thousands of connections and send a byte every few seconds (slowloris). So, on every
//! listener:
//! - the whole handshake has one deadline ([`Limits::handshake`]), not a timeout per read;
//! - a [`Gate`] bounds the handshakes in progress, per source address and in all: a source
//!   at its bound has its new connections closed at once, and when the total is reached the
//!   oldest handshake of the source with the most is dropped to make room (a flood from one
//!   address never shuts out peers from another);
//! - authenticated connections are bounded too ([`Limits::max_conns`]);
//! - running out of descriptors (`EMFILE`, `ENFILE`) backs off instead of spinning;
//! - refusals are logged at a bounded rate ([`RateLog`]);
//! - [`accept_loop`] stops when its [`Wake`] is rung, with no connection to itself (which
//!   cannot arrive when the socket file is gone or the descriptors are used up).

use crate::conn::Stream;
use ferry_types::sync::MutexExt;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
    }

    fn accept(&self) -> io::Result<(Stream, Source)> {
        match self {
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok((Stream::from(s), Source::Local))
            }
            Listener::Tcp(l) => {
                let (s, a) = l.accept()?;
                s.set_nonblocking(false)?;
                let _ = s.set_nodelay(true);
                Ok((Stream::from(s), Source::Ip(a.ip())))
            }
        }
    }
}

/// Where a connection comes from, for the per-source bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A Unix socket: only this user can reach one (its directory is private).
    Local,
    Ip(IpAddr),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Local => write!(f, "a local process"),
            Source::Ip(a) => write!(f, "{a}"),
        }
    }
}

/// Bounds of one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The whole handshake, from accept to the answer, must end within this.
    pub handshake: Duration,
    /// Handshakes in progress at once, in all.
    pub max_pending: usize,
    /// Handshakes in progress at once from one source.
    pub max_pending_per_source: usize,
    /// Authenticated connections at once.
    pub max_conns: usize,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// This process's limit on open descriptors.
fn fd_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills a struct we own.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
        0 => lim.rlim_cur.min(1 << 20) as usize,
        _ => 1024,
    }
}

impl Limits {
    /// For a TCP listener, which anyone on the network may reach. The defaults fit the
    /// process's descriptor limit (a handshake holds two descriptors, a connection two):
    /// strangers may use an eighth of it. Env overrides: `FERRY_MAX_HANDSHAKES`,
    /// `FERRY_MAX_HANDSHAKES_PER_SOURCE`, `FERRY_MAX_CONNECTIONS`, `FERRY_HANDSHAKE_MS`.
    pub fn tcp() -> Limits {
        let fds = fd_limit();
        let max_pending = env_usize("FERRY_MAX_HANDSHAKES").unwrap_or((fds / 16).clamp(8, 256)).max(1);
        Limits {
            handshake: Duration::from_millis(env_usize("FERRY_HANDSHAKE_MS").unwrap_or(5000) as u64),
            max_pending,
            max_pending_per_source: env_usize("FERRY_MAX_HANDSHAKES_PER_SOURCE")
                .unwrap_or((max_pending / 4).clamp(2, 64))
                .max(1),
            max_conns: env_usize("FERRY_MAX_CONNECTIONS")
                .unwrap_or((fds / 2).saturating_sub(64).clamp(16, 32768))
                .max(1),
        }
    }

    /// For a Unix socket in a private directory: only processes of this user reach it, so
    /// the bounds only keep a runaway program of ours from exhausting the daemon.
    pub fn unix() -> Limits {
        Limits { max_pending: 1024, max_pending_per_source: 1024, ..Limits::tcp() }
    }
}

/// Logs at most one line per interval, then says how many it left out.
#[derive(Debug)]
pub struct RateLog {
    every: Duration,
    st: Mutex<(Option<Instant>, u64)>,
}

impl RateLog {
    pub fn new(every: Duration) -> RateLog {
        RateLog { every, st: Mutex::new((None, 0)) }
    }

    /// Logs `line()` unless a line went out less than an interval ago (then it is counted).
    /// Returns whether it was logged.
    pub fn log(&self, line: impl FnOnce() -> String) -> bool {
        let mut g = self.st.locked();
        let now = Instant::now();
        if g.0.is_some_and(|t| now.duration_since(t) < self.every) {
            g.1 += 1;
            return false;
        }
        let skipped = std::mem::take(&mut g.1);
        g.0 = Some(now);
        drop(g);
        let more = match skipped {
            0 => String::new(),
            n => format!(" ({n} more like it since the last such line)"),
        };
        tracing::warn!("{}{more}", line());
        true
    }
}

struct PendingRec {
    id: u64,
    source: Source,
    /// A second descriptor of the connection, to cut it off if it must make room.
    cut: Option<Stream>,
}

#[derive(Default)]
struct GateState {
    pending: Vec<PendingRec>,
    per_source: HashMap<Source, usize>,
    conns: usize,
    next: u64,
}

impl GateState {
    /// One handshake of `source` fewer; a source with none left is forgotten (a flood from
    /// many addresses leaves nothing behind).
    fn count_out(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// The bounds of one listener, shared by its accept loop and its connections' threads.
pub struct Gate {
    name: String,
    limits: Limits,
    st: Mutex<GateState>,
    /// Refused and failed handshakes.
    pub log: RateLog,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("name", &self.name).field("limits", &self.limits).finish()
    }
}

impl Gate {
    /// A gate for the listener `name` (for the logs: `ferry-node`, `ferry`).
    pub fn new(name: &str, limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            name: name.to_string(),
            limits,
            st: Mutex::new(GateState::default()),
            log: RateLog::new(Duration::from_secs(1)),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Handshakes in progress and authenticated connections, now.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.st.locked();
        (g.pending.len(), g.conns)
    }

    /// Admits a new connection from `source` to its handshake, or refuses it (`None`: close
    /// it). May cut off the oldest handshake of the busiest source to make room.
    pub fn admit(self: &Arc<Self>, stream: &Stream, source: Source) -> Option<Admission> {
        let mut g = self.st.locked();
        let from_source = g.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_pending_per_source {
            drop(g);
            self.log.log(|| {
                format!(
                    "{}: refusing connections from {source}: {from_source} handshakes from it are already in \
                     progress (FERRY_MAX_HANDSHAKES_PER_SOURCE)",
                    self.name
                )
            });
            return None;
        }
        let mut evicted = None;
        if g.pending.len() >= self.limits.max_pending {
            // Room is made at the expense of the source with the most handshakes open.
            let busiest = g.per_source.iter().max_by_key(|(_, n)| **n).map(|(s, _)| *s);
            if let Some(i) = busiest.and_then(|b| g.pending.iter().position(|p| p.source == b)) {
                let victim = g.pending.remove(i);
                g.count_out(victim.source);
                if let Some(s) = &victim.cut {
                    s.shutdown();
                }
                evicted = Some(victim.source);
            }
        }
        let id = g.next;
        g.next += 1;
        *g.per_source.entry(source).or_insert(0) += 1;
        g.pending.push(PendingRec { id, source, cut: stream.try_clone().ok() });
        drop(g);
        // Logged with the lock released: a slow stderr must not hold up every handshake.
        if let Some(victim) = evicted {
            let total = self.limits.max_pending;
            self.log.log(|| {
                format!(
                    "{}: {total} handshakes in progress (FERRY_MAX_HANDSHAKES): dropped the oldest from {victim}",
                    self.name
                )
            });
        }
        Some(Admission { gate: self.clone(), id, source, deadline: Instant::now() + self.limits.handshake })
    }

    fn forget(&self, id: u64) {
        let mut g = self.st.locked();
        if let Some(i) = g.pending.iter().position(|p| p.id == id) {
            let rec = g.pending.remove(i);
            g.count_out(rec.source);
        }
    }
}

/// A connection admitted to its handshake: it ends by [`Admission::promote`] (the peer
/// proved it holds the token) or by being dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    id: u64,
    source: Source,
    deadline: Instant,
}

impl Admission {
    /// When the whole handshake must be over.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The peer is authenticated: it now counts as a connection, if there is room for one.
    pub fn promote(self) -> Result<ConnSlot, String> {
        let gate = self.gate.clone();
        drop(self);
        let mut g = gate.st.locked();
        if g.conns >= gate.limits.max_conns {
            return Err(format!(
                "{} has {} connections, its limit (FERRY_MAX_CONNECTIONS); try again later",
                gate.name, g.conns
            ));
        }
        g.conns += 1;
        drop(g);
        Ok(ConnSlot { gate })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.forget(self.id);
    }
}

/// An authenticated connection's place in its listener's count, given back when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    gate: Arc<Gate>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.gate.st.locked();
        g.conns = g.conns.saturating_sub(1);
    }
}

/// Rings an [`accept_loop`] to stop it (a pipe: nothing can prevent the wake-up).
#[derive(Debug)]
pub struct Wake {
    wr: OwnedFd,
}

/// What an [`accept_loop`] watches for its [`Wake`].
#[derive(Debug)]
pub struct WakeRx {
    rd: OwnedFd,
}

/// A new wake-up pair.
pub fn wake_pair() -> io::Result<(Wake, WakeRx)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((Wake { wr }, WakeRx { rd }))
}

impl Wake {
    /// Stops the loop (it returns once it sees this; later rings do nothing more).
    pub fn wake(&self) {
        // SAFETY: writing one byte from a local buffer to a descriptor we own.
        unsafe { libc::write(self.wr.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

/// Waits for `fds` to be readable; returns which are (all false on timeout).
fn poll_in(fds: &[RawFd], timeout: Option<Duration>) -> Vec<bool> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|fd| libc::pollfd { fd: *fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.map(|t| t.as_millis().min(i32::MAX as u128) as i32).unwrap_or(-1);
    // SAFETY: `p` is a valid array of pollfd for the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if r <= 0 {
        return vec![false; fds.len()];
    }
    p.iter().map(|x| x.revents != 0).collect()
}

/// Accepts connections on `listener` until `wake` rings: each is admitted by `gate` (or
/// closed at once) and given to `handle` with its [`Admission`], which runs its handshake
/// (normally on a thread of its own). Out of descriptors, it waits (10 ms, doubling up to
/// 1 s) instead of spinning.
pub fn accept_loop(listener: &Listener, wake: &WakeRx, gate: &Arc<Gate>, mut handle: impl FnMut(Stream, Admission)) {
    if let Err(e) = listener.set_nonblocking() {
        tracing::error!("{}: cannot listen: {e}", gate.name);
        return;
    }
    let (lfd, wfd) = (listener.fd(), wake.rd.as_raw_fd());
    let mut backoff = Duration::ZERO;
    loop {
        if !backoff.is_zero() {
            if poll_in(&[wfd], Some(backoff))[0] {
                return;
            }
        } else {
            let ready = poll_in(&[lfd, wfd], None);
            if ready[1] {
                return;
            }
            if !ready[0] {
                continue;
            }
        }
        loop {
            match listener.accept() {
                Ok((stream, source)) => {
                    backoff = Duration::ZERO;
                    if let Some(adm) = gate.admit(&stream, source) {
                        handle(stream, adm);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    backoff = Duration::ZERO;
                    break;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO)) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection waits in the backlog
                    // until a descriptor is free; spinning on it would only burn a CPU.
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    gate.log.log(|| format!("{}: cannot accept connections ({e}); waiting {backoff:?}", gate.name));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Stream {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Stream::from(a)
    }

    #[test]
    fn a_source_at_its_bound_is_refused_and_others_still_admitted() {
        let limits =
            Limits { handshake: Duration::from_secs(5), max_pending: 8, max_pending_per_source: 2, max_conns: 1 };
        let g = Gate::new("test", limits);
        let bad = Source::Ip("10.0.0.66".parse().unwrap());
        let good = Source::Ip("10.0.0.1".parse().unwrap());
        let a1 = g.admit(&pair(), bad).unwrap();
        let _a2 = g.admit(&pair(), bad).unwrap();
        assert!(g.admit(&pair(), bad).is_none(), "a third from one source is refused");
        let ok = g.admit(&pair(), good).unwrap();
        assert_eq!(g.counts(), (3, 0));
        drop(a1);
        assert!(g.admit(&pair(), bad).is_some(), "room again once one ends");
        // Authenticated connections are bounded too.
        let slot = ok.promote().unwrap();
        let err = g.admit(&pair(), good).unwrap().promote().unwrap_err();
        assert!(err.contains("FERRY_MAX_CONNECTIONS"), "{err}");
        drop(slot);
        assert_eq!(g.counts().1, 0);
    }

    #[test]
    fn at_the_total_bound_the_busiest_source_makes_room() {
        let limits =
            Limits { handshake: Duration::from_secs(5), max_pending: 4, max_pending_per_source: 4, max_conns: 9 };
        let g = Gate::new("test", limits);
        let bad = Source::Ip("10.0.0.66".parse().unwrap());
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let first = Stream::from(a);
        let _held: Vec<Admission> = std::iter::once(g.admit(&first, bad).unwrap())
            .chain((0..3).map(|_| g.admit(&pair(), bad).unwrap()))
            .collect();
        let good = g.admit(&pair(), Source::Local).expect("admitted: the flood makes room");
        assert_eq!(g.counts().0, 4);
        assert_eq!(g.st.lock().unwrap().per_source.get(&bad), Some(&3));
        // The oldest of the flood was cut off: its peer sees the end of the stream.
        use std::io::Read;
        let mut buf = [0u8; 1];
        assert_eq!((&b).read(&mut buf).unwrap(), 0);
        drop(good);
    }

    #[test]
    fn the_loop_stops_when_rung_even_without_its_socket_file() {
        let dir = std::env::temp_dir().join(format!("ferry-listen-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let l = Listener::Unix(UnixListener::bind(dir.join("s.sock")).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        let (wake, rx) = wake_pair().unwrap();
        let g = Gate::new("test", Limits::unix());
        let t = std::thread::spawn(move || accept_loop(&l, &rx, &g, |_, _| {}));
        std::thread::sleep(Duration::from_millis(20));
        wake.wake();
        let end = Instant::now() + Duration::from_secs(10);
        while !t.is_finished() {
            assert!(Instant::now() < end, "the accept loop did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn rate_log_counts_what_it_leaves_out() {
        let l = RateLog::new(Duration::from_secs(60));
        assert!(l.log(|| "first".into()));
        assert!(!l.log(|| unreachable!("not formatted when left out")));
        assert_eq!(l.st.lock().unwrap().1, 1);
    }
}
