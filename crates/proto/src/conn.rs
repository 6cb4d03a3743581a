//! Connections: a byte stream (Unix or TCP), a writer shared by many threads, and the
//! handshake.
//!
//! [`Conn`] is the sending half. Any thread may call [`Conn::send`]; frames are appended to
//! one buffer, and the thread that finds nobody writing becomes the writer and drains the
//! buffer, so frames sent while a write is in progress leave together in one syscall.
//! The receiving half is a [`FrameReader`] owned by one reader thread.

use crate::frame::{encode_frame, FrameError, FrameReader};
use crate::ids::{NodeId, WorkerId};
use crate::listen::{Admission, ConnSlot};
use crate::msg::{Hello, HelloProof, HelloReply};
use crate::{MAGIC, PROTOCOL_VERSION};
use ferry_types::sync::MutexExt;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a process listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub enum Addr {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A connected byte stream. Its clones share one descriptor (a connection's reader and
/// writer hold one each): a process with ten thousand connections uses ten thousand
/// descriptors, not twenty (a descriptor's options and `shutdown` are the socket's anyway, as
/// with `dup`).
#[derive(Debug, Clone)]
pub enum Stream {
    Unix(Arc<UnixStream>),
    Tcp(Arc<TcpStream>),
}

impl Stream {
    pub fn connect(addr: &Addr) -> io::Result<Stream> {
        Stream::connect_by(addr, Instant::now() + HANDSHAKE_TIMEOUT)
    }

    /// Connects, giving up at `end`: a host that is down must not hold a caller for the
    /// kernel's minutes.
    pub fn connect_by(addr: &Addr, end: Instant) -> io::Result<Stream> {
        match addr {
            Addr::Unix(p) => UnixStream::connect(p).map(Stream::from),
            Addr::Tcp(a) => {
                use std::net::ToSocketAddrs;
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{a} resolves to no address"));
                for sa in a.to_socket_addrs()? {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, format!("cannot reach {a} in time")));
                    }
                    match TcpStream::connect_timeout(&sa, left) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Stream::from(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }
    /// Another handle on the same descriptor (never fails; kept fallible for its callers).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(self.clone())
    }
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(d),
            Stream::Tcp(s) => s.set_read_timeout(d),
        }
    }
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(d),
            Stream::Tcp(s) => s.set_write_timeout(d),
        }
    }
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Stream {
        Stream::Unix(Arc::new(s))
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Tcp(Arc::new(s))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&**s).read(buf),
            Stream::Tcp(s) => (&**s).read(buf),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&**s).read(buf),
            Stream::Tcp(s) => (&**s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&**s).write(buf),
            Stream::Tcp(s) => (&**s).write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Out {
    buf: Vec<u8>,
    flushing: bool,
    failed: bool,
}

/// The sending half of a connection; share it with `Arc`.
pub struct Conn {
    stream: Stream,
    out: Mutex<Out>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("stream", &self.stream).finish()
    }
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn { stream, out: Mutex::new(Out { buf: Vec::new(), flushing: false, failed: false }) }
    }

    /// Sends one message. Frames queued by other threads during our write go out with it.
    pub fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        let g = self.enqueue(msg)?;
        self.write_out(g)
    }

    /// Queues one message without writing it: it goes out, after everything queued before
    /// it, with the next [`Conn::flush`] or `send` on this connection, whichever thread makes
    /// it. For a caller holding a lock that others need: it queues under the lock (so
    /// messages keep the order of the changes they report) and flushes once it is released,
    /// so a peer that reads slowly stalls nobody else.
    pub fn queue<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        self.enqueue(msg).map(drop)
    }

    /// Writes what is queued, unless another thread is writing already (it writes it then).
    pub fn flush(&self) -> io::Result<()> {
        let g = self.out.locked();
        if g.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection failed earlier"));
        }
        self.write_out(g)
    }

    fn enqueue<T: Serialize>(&self, msg: &T) -> io::Result<std::sync::MutexGuard<'_, Out>> {
        let mut g = self.out.locked();
        if g.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection failed earlier"));
        }
        encode_frame(&mut g.buf, msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(g)
    }

    /// Writes the buffer, and whatever others add meanwhile, unless a writer is at it already.
    fn write_out<'a>(&'a self, mut g: std::sync::MutexGuard<'a, Out>) -> io::Result<()> {
        if g.flushing || g.buf.is_empty() {
            return Ok(());
        }
        g.flushing = true;
        let mut spare = Vec::new();
        loop {
            let data = std::mem::replace(&mut g.buf, spare);
            drop(g);
            let r = (&self.stream).write_all(&data);
            spare = data;
            spare.clear();
            g = self.out.locked();
            if let Err(e) = r {
                g.flushing = false;
                self.break_off(&mut g);
                return Err(e);
            }
            if g.buf.is_empty() {
                g.buf = spare;
                g.flushing = false;
                return Ok(());
            }
        }
    }

    /// A write failed: a frame or raw bytes may be cut and what was queued after is dropped,
    /// so the stream is broken and both ends must see it end. A peer still reading would
    /// otherwise wait for ever for answers that were lost (a slow reader whose writer timed
    /// out), and our own reader would not learn the peer is unusable.
    fn break_off(&self, g: &mut Out) {
        g.failed = true;
        g.buf.clear();
        self.stream.shutdown();
    }

    /// Sends raw bytes without framing them. Only for tests that send garbage on purpose.
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let _g = self.out.locked();
        (&self.stream).write_all(bytes)
    }

    /// Runs `f` on the socket's descriptor with every other sender held off, once everything
    /// queued before is written: for raw bytes after a frame (an object's contents written
    /// with `sendfile`, for instance).
    pub fn with_raw_fd<R>(&self, f: impl FnOnce(std::os::fd::RawFd) -> io::Result<R>) -> io::Result<R> {
        use std::os::fd::AsRawFd;
        loop {
            let mut g = self.out.locked();
            if g.failed {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection failed earlier"));
            }
            if g.flushing || !g.buf.is_empty() {
                // Another thread is still writing frames queued before us.
                drop(g);
                std::thread::yield_now();
                continue;
            }
            let fd = match &self.stream {
                Stream::Unix(s) => s.as_raw_fd(),
                Stream::Tcp(s) => s.as_raw_fd(),
            };
            let r = f(fd);
            if r.is_err() {
                // Raw bytes may have been cut midway: as after a failed frame.
                self.break_off(&mut g);
            }
            return r;
        }
    }

    /// Writes the first `len` bytes of `file` raw (not framed) after what was queued before,
    /// with the kernel's file-to-socket copy where it has one.
    pub fn send_file(&self, file: &std::fs::File, len: u64) -> io::Result<()> {
        self.send_file_at(file, 0, len)
    }

    /// [`Conn::send_file`] of `len` bytes from offset `at` of `file`.
    pub fn send_file_at(&self, file: &std::fs::File, at: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // `sendfile`, in pieces: no copy through user space (`io::copy` from a `Take<&File>`
        // falls back to a small buffer, four times slower measured on 1 GiB).
        let end = at + len;
        self.with_raw_fd(|fd| {
            let mut off: libc::off_t = at as libc::off_t;
            while (off as u64) < end {
                let want = ((end - off as u64) as usize).min(64 << 20);
                // SAFETY: both descriptors are open for the call; `off` is ours.
                let n = unsafe { libc::sendfile(fd, file.as_raw_fd(), &mut off, want) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file is shorter than announced"));
                }
            }
            Ok(())
        })
    }

    /// Bounds how long a send may wait for the peer to read; past it the send fails and the
    /// connection is marked failed (a peer that stops reading cannot stall the sender).
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(d)
    }

    /// Closes both directions; the peer's reader sees end of stream, ours an error.
    pub fn shutdown(&self) {
        self.stream.shutdown();
    }
}

/// Why a connection could not be set up.
#[derive(Debug)]
pub enum ConnectError {
    Io(io::Error),
    /// The peer went once challenged: a client with another token (it found our proof
    /// wrong), a stranger collecting challenges, or a process that ended just then.
    LeftWhenChallenged,
    /// The peer refused us (wrong token, wrong version, ...).
    Refused(String),
    Protocol(FrameError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::LeftWhenChallenged => write!(f, "the peer left once challenged (a wrong token, or a scan)"),
            ConnectError::Refused(r) => write!(f, "refused by peer: {r}"),
            ConnectError::Protocol(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl ConnectError {
    /// Whether a refusal of a peer from `source` is worth a (rate-limited) line in a log: not
    /// a peer that simply went away, nor one of this user's own processes (the only ones a Unix
    /// socket reaches) that ended while it connected.
    pub fn worth_logging(&self, source: crate::listen::Source) -> bool {
        match self {
            ConnectError::LeftWhenChallenged => source != crate::listen::Source::Local,
            e => !e.peer_left(),
        }
    }

    /// The peer simply went away (closed before its hello, or while we answered): a probe, or
    /// a process that ended; nothing worth a line in a log.
    pub fn peer_left(&self) -> bool {
        let gone = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            )
        };
        match self {
            ConnectError::Io(e) | ConnectError::Protocol(FrameError::Io(e)) => gone(e),
            ConnectError::Protocol(FrameError::Closed) => true,
            _ => false,
        }
    }
}

/// How long a connecting process waits for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest handshake frame either side reads (a `Hello` or its answer is tiny: a
/// stranger cannot make us allocate more than this).
const MAX_HANDSHAKE_FRAME: u32 = 4096;

/// Reads from a stream with one deadline for every read together (a peer sending a byte a
/// second cannot stretch it).
struct Deadline<'a> {
    stream: &'a Stream,
    end: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake took too long"));
            }
            self.stream.set_read_timeout(Some(left))?;
            match (&mut &*self.stream).read(buf) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake took too long"))
                }
                // A read with a timeout is not restarted after a signal (signal(7)), even a
                // stop and continue: again, within the same deadline.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

/// Reads one handshake frame (not through a buffer, so nothing after it is consumed).
fn read_handshake<T: serde::de::DeserializeOwned + 'static>(stream: &Stream, end: Instant) -> Result<T, FrameError> {
    let mut r = Deadline { stream, end };
    let mut len = [0u8; 4];
    let n = r.read(&mut len[..1])?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    r.read_exact(&mut len[1..]).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Malformed("truncated length prefix".into()),
        _ => FrameError::Io(e),
    })?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HANDSHAKE_FRAME {
        return Err(FrameError::TooLarge { len, max: MAX_HANDSHAKE_FRAME });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Malformed("truncated frame".into()),
        _ => FrameError::Io(e),
    })?;
    decode_handshake(&buf)
}

/// Decodes a handshake frame. A `Hello` of another protocol version may be laid out
/// otherwise: its magic and version, which every version puts first, are read alone first, so
/// the peer is told why it is refused rather than that its bytes are wrong.
fn decode_handshake<T: serde::de::DeserializeOwned + 'static>(buf: &[u8]) -> Result<T, FrameError> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Hello>() {
        if let Ok(((magic, version), _)) = postcard::take_from_bytes::<([u8; 4], u32)>(buf) {
            if magic == MAGIC && version != PROTOCOL_VERSION {
                return Err(FrameError::Malformed(version_mismatch(version)));
            }
        }
    }
    crate::frame::decode(buf)
}

fn version_mismatch(version: u32) -> String {
    format!(
        "protocol version {version} is not supported (this peer speaks {PROTOCOL_VERSION}); run the same ferry \
         version everywhere"
    )
}

/// What a peer said, fit for a log or a terminal: control characters replaced, at most 512
/// characters (it comes from a peer that has not proved anything yet).
fn printable(s: &str) -> String {
    s.chars().take(512).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The address a connection reached, as both ends name it: the connecting side's peer
/// address, the accepting side's local one (`unix` for a Unix socket, which only this user
/// can reach).
fn endpoint(s: &Stream, local: bool) -> String {
    match s {
        Stream::Unix(_) => "unix".into(),
        Stream::Tcp(t) => {
            let a = if local { t.local_addr() } else { t.peer_addr() };
            a.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()).to_string()).unwrap_or_default()
        }
    }
}

/// Addresses that also name this node for the handshake's check of the dialed address
/// (`FERRY_ADDRESS_ALIASES`, comma-separated `ip:port`): those clients reach through NAT or a
/// port mapping.
fn aliases() -> Vec<String> {
    std::env::var("FERRY_ADDRESS_ALIASES")
        .map(|v| v.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect())
        .unwrap_or_default()
}

/// Connects to `addr` and runs the client side of the handshake, for a process of no node.
pub fn connect(
    addr: &Addr,
    token: &str,
    from: WorkerId,
    max_frame: u32,
) -> Result<(Conn, FrameReader<Stream>, NodeId), ConnectError> {
    connect_from(addr, token, from, NodeId::default(), max_frame)
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(token: &str, label: &[u8], a: &[u8; 32], b: &[u8; 32], bound: &str) -> HmacSha256 {
    use hmac::Mac;
    let mut m = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    m.update(label);
    m.update(a);
    m.update(b);
    m.update(bound.as_bytes());
    m
}

/// `HMAC-SHA256(token, label | a | b | bound)`: the proof of one side of the handshake.
fn proof(token: &str, label: &[u8], a: &[u8; 32], b: &[u8; 32], bound: &str) -> [u8; 32] {
    use hmac::Mac;
    mac(token, label, a, b, bound).finalize().into_bytes().into()
}

/// Checks a proof in constant time.
fn proof_ok(token: &str, label: &[u8], a: &[u8; 32], b: &[u8; 32], bound: &str, given: &[u8; 32]) -> bool {
    use hmac::Mac;
    mac(token, label, a, b, bound).verify_slice(given).is_ok()
}

/// The shortest token a node accepts: one challenge lets a stranger guess a token offline,
/// so it must be long enough not to be guessed (ferry's own are 32 random hex digits).
pub const MIN_TOKEN_LEN: usize = 32;

const ACCEPT_LABEL: &[u8] = b"ferry-accept";
const CONNECT_LABEL: &[u8] = b"ferry-connect";

fn nonce() -> [u8; 32] {
    crate::ids::random_bytes(32).try_into().expect("32 bytes")
}

/// The message a connecting process gets when the other side cannot prove it holds the token.
pub const WRONG_TOKEN: &str = "wrong or missing cluster token";

/// [`connect`] for a process of node `node`. Returns the peer's node.
///
/// The handshake (one deadline for all of it): the client sends [`Hello`] with a nonce; the
/// server answers with its nonce and its proof of the token over both; only if that proof is
/// right does the client send its own proof; the server then welcomes it. The token itself
/// never crosses the wire, and the client proves nothing to a server that proved nothing.
pub fn connect_from(
    addr: &Addr,
    token: &str,
    from: WorkerId,
    node: NodeId,
    max_frame: u32,
) -> Result<(Conn, FrameReader<Stream>, NodeId), ConnectError> {
    let end = Instant::now() + HANDSHAKE_TIMEOUT;
    let stream = Stream::connect_by(addr, end).map_err(ConnectError::Io)?;
    let dialed = endpoint(&stream, false);
    let rd = stream.try_clone().map_err(ConnectError::Io)?;
    // A peer that stops reading cannot hold us in the handshake either.
    let left = || end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left())).map_err(ConnectError::Io)?;
    let conn = Conn::new(stream);
    let mine = nonce();
    conn.send(&Hello { magic: MAGIC, version: PROTOCOL_VERSION, from, node, nonce: mine }).map_err(ConnectError::Io)?;
    let theirs = match read_handshake::<HelloReply>(&rd, end).map_err(ConnectError::Protocol)? {
        HelloReply::Challenge { nonce, proof } if proof_ok(token, ACCEPT_LABEL, &mine, &nonce, "", &proof) => nonce,
        HelloReply::Challenge { .. } => {
            conn.shutdown();
            return Err(ConnectError::Refused(format!(
                "{WRONG_TOKEN}: the peer at {addr} did not prove it holds this token (give the token `ferry start` \
                 printed; or this is not a node of your cluster)"
            )));
        }
        HelloReply::Refused { reason } => return Err(ConnectError::Refused(printable(&reason))),
        HelloReply::Welcome { .. } => {
            return Err(ConnectError::Protocol(FrameError::Malformed("welcomed before any proof".into())))
        }
    };
    conn.set_write_timeout(Some(left())).map_err(ConnectError::Io)?;
    let mine_proof = proof(token, CONNECT_LABEL, &theirs, &mine, &dialed);
    conn.send(&HelloProof { proof: mine_proof, dialed }).map_err(ConnectError::Io)?;
    let reply: HelloReply = read_handshake(&rd, end).map_err(ConnectError::Protocol)?;
    rd.set_read_timeout(None).map_err(ConnectError::Io)?;
    conn.set_write_timeout(None).map_err(ConnectError::Io)?;
    match reply {
        HelloReply::Welcome { node } => Ok((conn, FrameReader::new(rd, max_frame), node)),
        HelloReply::Refused { reason } => Err(ConnectError::Refused(printable(&reason))),
        HelloReply::Challenge { .. } => Err(ConnectError::Protocol(FrameError::Malformed("a second challenge".into()))),
    }
}

/// Runs the server side of the handshake on an accepted stream, within the deadline of its
/// [`Admission`] (see [`connect_from`]): checks magic and version, proves it holds the token,
/// checks the client's proof, and answers. A refused peer gets the reason before the
/// connection is closed. The returned [`ConnSlot`] counts the connection in its listener's
/// bound until it is dropped.
pub fn accept(
    stream: Stream,
    token: &str,
    node: NodeId,
    max_frame: u32,
    admission: Admission,
) -> Result<(Conn, FrameReader<Stream>, Hello, ConnSlot), ConnectError> {
    let end = admission.deadline();
    let rd = stream.try_clone().map_err(ConnectError::Io)?;
    stream
        .set_write_timeout(Some(end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
        .map_err(ConnectError::Io)?;
    let here = endpoint(&stream, true);
    let conn = Conn::new(stream);
    let refuse = |reason: String| {
        let _ = conn.send(&HelloReply::Refused { reason: reason.clone() });
        conn.shutdown();
        Err(ConnectError::Refused(reason))
    };
    let hello: Hello = match read_handshake(&rd, end) {
        Ok(h) => h,
        Err(FrameError::Malformed(m)) if m.starts_with("protocol version") => return refuse(m),
        Err(e) => return Err(ConnectError::Protocol(e)),
    };
    if hello.magic != MAGIC {
        return refuse("not a ferry peer (bad magic)".into());
    }
    if hello.version != PROTOCOL_VERSION {
        return refuse(version_mismatch(hello.version));
    }
    let mine = nonce();
    conn.send(&HelloReply::Challenge { nonce: mine, proof: proof(token, ACCEPT_LABEL, &hello.nonce, &mine, "") })
        .map_err(ConnectError::Io)?;
    let answer: HelloProof = match read_handshake(&rd, end) {
        Ok(a) => a,
        // Gone once challenged: a client with another token (it found our proof wrong), or a
        // stranger collecting challenges. Worth a (rate-limited) line, unlike a probe.
        Err(FrameError::Closed) => return Err(ConnectError::LeftWhenChallenged),
        Err(e) => return Err(ConnectError::Protocol(e)),
    };
    if !proof_ok(token, CONNECT_LABEL, &mine, &hello.nonce, &here, &answer.proof) {
        let other =
            answer.dialed != here && proof_ok(token, CONNECT_LABEL, &mine, &hello.nonce, &answer.dialed, &answer.proof);
        if other && aliases().contains(&answer.dialed) {
            // Reached through an address this node is told is its own (NAT, a port mapping).
        } else if other {
            return refuse(format!(
                "the connection was made to {} but arrived at {here}: a relay, or a NAT or port mapping \
                 (then list the outside address in FERRY_ADDRESS_ALIASES on this node)",
                printable(&answer.dialed)
            ));
        } else {
            return refuse(WRONG_TOKEN.into());
        }
    }
    let slot = match admission.promote() {
        Ok(s) => s,
        Err(reason) => return refuse(reason),
    };
    conn.send(&HelloReply::Welcome { node }).map_err(ConnectError::Io)?;
    rd.set_read_timeout(None).map_err(ConnectError::Io)?;
    conn.set_write_timeout(None).map_err(ConnectError::Io)?;
    Ok((conn, FrameReader::new(rd, max_frame), hello, slot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::{Gate, Limits, Source};
    use std::os::unix::net::{UnixListener, UnixStream};

    fn listener(tag: &str) -> (UnixListener, PathBuf) {
        let p = std::env::temp_dir().join(format!("ferry-conn-test-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        (UnixListener::bind(&p).unwrap(), p)
    }

    /// Accepts one connection with `token` and returns how its handshake ended.
    fn serve_one(l: UnixListener, token: &'static str) -> std::thread::JoinHandle<Result<WorkerId, String>> {
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let s = Stream::from(s);
            let gate = Gate::new("test", Limits::unix());
            let adm = gate.admit(&s, Source::Local).unwrap();
            accept(s, token, NodeId(9), 1 << 20, adm).map(|(_, _, h, _)| h.from).map_err(|e| e.to_string())
        })
    }

    #[test]
    fn both_sides_prove_the_token_without_sending_it() {
        let (l, p) = listener("ok");
        let server = serve_one(l, "s3cret-token");
        let (_, _, node) = connect(&Addr::Unix(p.clone()), "s3cret-token", WorkerId(5), 1 << 20).unwrap();
        assert_eq!(node, NodeId(9));
        assert_eq!(server.join().unwrap(), Ok(WorkerId(5)));

        // A wrong token: the client finds the server's proof wrong and sends no proof of its own.
        let (l, p2) = listener("wrong");
        let server = serve_one(l, "s3cret-token");
        let e = connect(&Addr::Unix(p2.clone()), "guessed", WorkerId(6), 1 << 20).err().unwrap().to_string();
        assert!(e.contains(WRONG_TOKEN), "{e}");
        assert!(server.join().unwrap().is_err());
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(p2);
    }

    /// A listener that is not a node of the cluster (planted on a free port, or a wrong
    /// address) learns nothing: the token is in no frame, and a client that gets a wrong proof
    /// sends no proof of its own.
    #[test]
    fn an_impostor_learns_nothing() {
        let (a, b) = UnixStream::pair().unwrap();
        let client = std::thread::spawn(move || {
            let (stream, rd) = (Stream::from(a.try_clone().unwrap()), Stream::from(a));
            let end = Instant::now() + Duration::from_secs(5);
            let conn = Conn::new(stream);
            let mine = nonce();
            conn.send(&Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                from: WorkerId(1),
                node: NodeId(1),
                nonce: mine,
            })
            .unwrap();
            // As `connect_from` does, with the token the impostor is after.
            match read_handshake::<HelloReply>(&rd, end).unwrap() {
                HelloReply::Challenge { nonce, proof } => {
                    proof_ok("the-real-token", ACCEPT_LABEL, &mine, &nonce, "", &proof)
                }
                _ => false,
            }
        });
        let imp = Stream::from(b);
        let hello: Hello = read_handshake(&imp, Instant::now() + Duration::from_secs(5)).unwrap();
        let fake = Conn::new(imp.try_clone().unwrap());
        fake.send(&HelloReply::Challenge { nonce: [7; 32], proof: [0; 32] }).unwrap();
        assert!(!client.join().unwrap(), "a made-up proof is not accepted");
        let _ = hello;
        // Through the real client: refused, and nothing more reaches the impostor.
        let (l, p) = listener("impostor");
        let imp = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let s = Stream::from(s);
            let mut seen = Vec::new();
            let _ = read_handshake::<Hello>(&s, Instant::now() + Duration::from_secs(5)).unwrap();
            Conn::new(s.try_clone().unwrap()).send(&HelloReply::Challenge { nonce: [1; 32], proof: [2; 32] }).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = (&s).read_to_end(&mut seen);
            seen
        });
        let e = connect(&Addr::Unix(p.clone()), "the-real-token-of-this-cluster!!", WorkerId(2), 1 << 20)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("did not prove it holds this token"), "{e}");
        assert!(imp.join().unwrap().is_empty(), "the client sent something after a wrong proof");
        let _ = std::fs::remove_file(p);
    }

    /// Copies bytes both ways between two streams until either closes.
    fn pipe(a: std::net::TcpStream, b: std::net::TcpStream) {
        let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let one = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Both);
            })
        };
        one(a, b2);
        one(b, a2);
    }

    /// A relay (a listener planted on a free port that passes the handshake on to a real node,
    /// byte for byte) cannot complete it: the client's proof names the address it reached.
    #[test]
    fn a_relay_cannot_complete_the_handshake() {
        const TOKEN: &str = "0123456789abcdef0123456789abcdef";
        let node = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let node_addr = node.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut out = Vec::new();
            for _ in 0..2 {
                let (s, _) = node.accept().unwrap();
                let s = Stream::from(s);
                let gate = Gate::new("test", Limits::tcp());
                let adm = gate.admit(&s, Source::Local).unwrap();
                out.push(accept(s, TOKEN, NodeId(9), 1 << 20, adm).map(|_| ()).map_err(|e| e.to_string()));
            }
            out
        });
        let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay.local_addr().unwrap();
        std::thread::spawn(move || {
            let (c, _) = relay.accept().unwrap();
            pipe(c, std::net::TcpStream::connect(node_addr).unwrap());
        });
        let e = connect(&Addr::Tcp(relay_addr.to_string()), TOKEN, WorkerId(1), 1 << 20).err().unwrap().to_string();
        assert!(e.contains(&format!("made to {relay_addr} but arrived at {node_addr}")), "{e}");
        // Straight to the node: welcome.
        assert!(connect(&Addr::Tcp(node_addr.to_string()), TOKEN, WorkerId(2), 1 << 20).is_ok());
        let ends = server.join().unwrap();
        assert!(ends[0].as_ref().is_err_and(|e| e.contains("arrived at")) && ends[1].is_ok(), "{ends:?}");
    }

    #[test]
    fn a_peer_of_another_version_is_told_so() {
        let (a, b) = UnixStream::pair().unwrap();
        let old = std::thread::spawn(move || {
            // Version 3's hello: magic, version, then the token in clear.
            let c = Conn::new(Stream::from(a.try_clone().unwrap()));
            c.send(&(MAGIC, 3u32, "old-token".to_string(), WorkerId(1), NodeId(1))).unwrap();
            read_handshake::<HelloReply>(&Stream::from(a), Instant::now() + Duration::from_secs(5))
        });
        let s = Stream::from(b);
        let gate = Gate::new("test", Limits::unix());
        let adm = gate.admit(&s, Source::Local).unwrap();
        let e = accept(s, "0123456789abcdef0123456789abcdef", NodeId(1), 1 << 20, adm).err().unwrap().to_string();
        assert!(e.contains("protocol version 3 is not supported"), "{e}");
        assert!(matches!(old.join().unwrap(), Ok(HelloReply::Refused { reason }) if reason.contains("version 3")));
    }

    /// A writer that gives up on a peer that stopped reading ends the connection: the peer,
    /// once it reads again, sees it closed rather than waiting for the frames that were lost.
    #[test]
    fn a_write_that_fails_ends_the_connection_for_both_sides() {
        let (a, b) = UnixStream::pair().unwrap();
        let conn = Conn::new(Stream::from(a));
        conn.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
        let big = vec![7u8; 64 << 10];
        let mut sent = 0;
        let err = loop {
            match conn.send(&big) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 10_000, "writes to a peer that never reads never failed");
        };
        assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err}");
        assert!(conn.send(&1u8).is_err(), "a failed connection stays failed");
        let peer = Stream::from(b);
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = FrameReader::new(peer, 1 << 20);
        let mut got = 0;
        let end = loop {
            match reader.read::<Vec<u8>>() {
                Ok(_) => got += 1,
                Err(e) => break e,
            }
        };
        assert!(got <= sent, "{got} frames read of {sent} sent");
        assert!(
            matches!(end, FrameError::Closed)
                || matches!(&end, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "the peer must see the connection end, not wait: {end:?}"
        );
    }

    #[test]
    fn proofs_are_bound_to_their_side_and_their_nonces() {
        let p = proof("tok", CONNECT_LABEL, &[1; 32], &[2; 32], "10.0.0.1:6380");
        assert!(proof_ok("tok", CONNECT_LABEL, &[1; 32], &[2; 32], "10.0.0.1:6380", &p));
        assert!(
            !proof_ok("tok", ACCEPT_LABEL, &[1; 32], &[2; 32], "10.0.0.1:6380", &p),
            "one side's is not the other's"
        );
        assert!(!proof_ok("tok", CONNECT_LABEL, &[2; 32], &[1; 32], "10.0.0.1:6380", &p), "nonces in their places");
        assert!(!proof_ok("tok", CONNECT_LABEL, &[1; 32], &[2; 32], "10.0.0.9:6380", &p), "bound to the address");
    }
}
