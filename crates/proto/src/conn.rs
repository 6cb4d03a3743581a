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
use crate::msg::{Hello, HelloReply};
use crate::{MAGIC, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
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

/// A connected byte stream.
#[derive(Debug)]
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub fn connect(addr: &Addr) -> io::Result<Stream> {
        match addr {
            Addr::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
            Addr::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
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

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tcp(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&*s).write(buf),
            Stream::Tcp(s) => (&*s).write(buf),
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
        let mut g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if g.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection failed earlier"));
        }
        encode_frame(&mut g.buf, msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if g.flushing {
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
            g = self.out.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = r {
                g.failed = true;
                g.flushing = false;
                g.buf.clear();
                return Err(e);
            }
            if g.buf.is_empty() {
                g.buf = spare;
                g.flushing = false;
                return Ok(());
            }
        }
    }

    /// Sends raw bytes without framing them. Only for tests that send garbage on purpose.
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let _g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        (&self.stream).write_all(bytes)
    }

    /// Runs `f` on the socket's descriptor with every other sender held off, once everything
    /// queued before is written: for raw bytes after a frame (an object's contents written
    /// with `sendfile`, for instance).
    pub fn with_raw_fd<R>(&self, f: impl FnOnce(std::os::fd::RawFd) -> io::Result<R>) -> io::Result<R> {
        use std::os::fd::AsRawFd;
        loop {
            let g = self.out.lock().unwrap_or_else(|e| e.into_inner());
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
            drop(g);
            return r;
        }
    }

    /// Writes the first `len` bytes of `file` raw (not framed) after what was queued before,
    /// with the kernel's file-to-socket copy where it has one.
    pub fn send_file(&self, file: &std::fs::File, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // `sendfile`, in pieces: no copy through user space (`io::copy` from a `Take<&File>`
        // falls back to a small buffer, four times slower measured on 1 GiB).
        self.with_raw_fd(|fd| {
            let mut off: libc::off_t = 0;
            while (off as u64) < len {
                let want = ((len - off as u64) as usize).min(64 << 20);
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
    /// The peer refused us (wrong token, wrong version, ...).
    Refused(String),
    Protocol(FrameError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Refused(r) => write!(f, "refused by peer: {r}"),
            ConnectError::Protocol(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl ConnectError {
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
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake took too long"));
        }
        self.stream.set_read_timeout(Some(left))?;
        match (&mut &*self.stream).read(buf) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake took too long"))
            }
            r => r,
        }
    }
}

/// Reads one handshake frame (not through a buffer, so nothing after it is consumed).
fn read_handshake<T: serde::de::DeserializeOwned>(stream: &Stream, end: Instant) -> Result<T, FrameError> {
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
    crate::frame::decode(&buf)
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

/// [`connect`] for a process of node `node`. Returns the peer's node.
pub fn connect_from(
    addr: &Addr,
    token: &str,
    from: WorkerId,
    node: NodeId,
    max_frame: u32,
) -> Result<(Conn, FrameReader<Stream>, NodeId), ConnectError> {
    let end = Instant::now() + HANDSHAKE_TIMEOUT;
    let stream = Stream::connect(addr).map_err(ConnectError::Io)?;
    let rd = stream.try_clone().map_err(ConnectError::Io)?;
    // A peer that stops reading cannot hold us in the hello either.
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(ConnectError::Io)?;
    let conn = Conn::new(stream);
    conn.send(&Hello { magic: MAGIC, version: PROTOCOL_VERSION, token: token.to_string(), from, node })
        .map_err(ConnectError::Io)?;
    let reply: HelloReply = read_handshake(&rd, end).map_err(ConnectError::Protocol)?;
    rd.set_read_timeout(None).map_err(ConnectError::Io)?;
    conn.set_write_timeout(None).map_err(ConnectError::Io)?;
    match reply {
        HelloReply::Welcome { node } => Ok((conn, FrameReader::new(rd, max_frame), node)),
        HelloReply::Refused { reason } => Err(ConnectError::Refused(reason)),
    }
}

/// Runs the server side of the handshake on an accepted stream, within the deadline of its
/// [`Admission`]: checks magic, version and token, and answers. A refused peer gets the
/// reason before the connection is closed. The returned [`ConnSlot`] counts the connection
/// in its listener's bound until it is dropped.
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
    let conn = Conn::new(stream);
    let hello: Hello = read_handshake(&rd, end).map_err(ConnectError::Protocol)?;
    let refuse = |reason: String| {
        let _ = conn.send(&HelloReply::Refused { reason: reason.clone() });
        conn.shutdown();
        Err(ConnectError::Refused(reason))
    };
    if hello.magic != MAGIC {
        return refuse("not a ferry peer (bad magic)".into());
    }
    if hello.version != PROTOCOL_VERSION {
        return refuse(format!(
            "protocol version {} is not supported (this peer speaks {PROTOCOL_VERSION}); run the same ferry version everywhere",
            hello.version
        ));
    }
    if !constant_time_eq(hello.token.as_bytes(), token.as_bytes()) {
        return refuse("wrong or missing cluster token".into());
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
/// Compares tokens without leaking through timing how long a matching prefix is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
