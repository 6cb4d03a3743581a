//! Length-delimited frames: `u32` little-endian length, then a postcard message.
//!
//! The reader checks the length against its maximum before it allocates, so a peer cannot
//! make us reserve gigabytes with four bytes; decoding errors are values, never panics.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::io::{self, BufReader, Read};

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    Closed,
    Io(io::Error),
    /// The length prefix exceeds the maximum frame size.
    TooLarge {
        len: u32,
        max: u32,
    },
    /// The payload is not a valid message.
    Malformed(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed"),
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max} bytes")
            }
            FrameError::Malformed(d) => write!(f, "malformed frame: {d}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A read inside a frame that failed. The end of the stream there is a connection broken
/// (its peer died or left mid-write), not bytes that are wrong: reported as such, not as
/// malformed (which daemons log as a warning).
fn cut_short(e: io::Error) -> FrameError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection in the middle of a frame",
        )),
        _ => FrameError::Io(e),
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    }
}

/// Appends one frame holding `msg` to `out`. On error `out` is left as it was.
pub fn encode_frame<T: Serialize>(out: &mut Vec<u8>, msg: &T) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let taken = std::mem::take(out);
    match postcard::to_extend(msg, taken) {
        Ok(v) => {
            *out = v;
            let len = (out.len() - start - 4) as u32;
            out[start..start + 4].copy_from_slice(&len.to_le_bytes());
            Ok(())
        }
        Err(e) => {
            // postcard consumed the buffer; this only happens for types serde cannot
            // encode, which the protocol does not contain.
            out.truncate(start);
            Err(FrameError::Malformed(e.to_string()))
        }
    }
}

/// The first step of a frame's buffer, and how far it grows at most beyond the bytes read.
const GROW_STEP: usize = 64 << 10;
/// A buffer larger than this is dropped before a small frame is read into it.
const KEEP_BUFFER: usize = 16 << 20;

/// Reads frames from a byte stream, reusing one buffer.
pub struct FrameReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    max: u32,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R, max: u32) -> Self {
        FrameReader { inner: BufReader::with_capacity(64 << 10, inner), buf: Vec::new(), max }
    }

    /// Reads the next frame's payload.
    pub fn read_raw(&mut self) -> Result<&[u8], FrameError> {
        let mut len = [0u8; 4];
        // A clean close before the first byte of a frame is `Closed`; in the middle, an error.
        let n = loop {
            match self.inner.read(&mut len[..1]) {
                // A signal handled in this process (a Ctrl-C a tool catches) is no error.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Err(FrameError::Closed);
        }
        self.inner.read_exact(&mut len[1..]).map_err(cut_short)?;
        let len = u32::from_le_bytes(len);
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let len = len as usize;
        if self.buf.capacity() > KEEP_BUFFER && len <= GROW_STEP {
            // A very large frame once does not keep its memory for the connection's life.
            self.buf = Vec::new();
        }
        self.buf.clear();
        // The buffer grows as bytes arrive, never ahead of them by more than it holds: a
        // peer that announces a large frame and sends one byte costs one step, not the
        // whole frame. Memory already held is used at once (a connection that carries large
        // frames often reads them in one step, as before).
        while self.buf.len() < len {
            let have = self.buf.len();
            let step = (len - have).min(have.max(GROW_STEP).max(self.buf.capacity() - have));
            self.buf.resize(have + step, 0);
            self.inner.read_exact(&mut self.buf[have..]).map_err(cut_short)?;
        }
        Ok(&self.buf)
    }

    /// How much memory the reader holds for frames now (for tests of the bound above).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Reads and decodes the next frame.
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        let raw = self.read_raw()?;
        decode(raw)
    }

    /// Reads exactly `buf.len()` raw bytes that follow a frame (not framed themselves).
    pub fn read_exact_raw(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)
    }

    /// How many bytes are read ahead and buffered (raw bytes after a frame may be among them).
    pub fn buffered(&self) -> usize {
        self.inner.buffer().len()
    }

    /// Whether a frame's bytes are already buffered (so a read will not block for long).
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }
}

/// Decodes one message; trailing bytes are an error, so a frame means exactly one message.
pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(raw) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(FrameError::Malformed(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

impl<R> FrameReader<R> {
    /// Changes the maximum frame size (raised after a peer has proved it holds the token).
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Arg, ToWorker};

    #[test]
    fn roundtrip_several_frames() {
        let mut out = Vec::new();
        encode_frame(&mut out, &ToWorker::Cancel { task: Default::default(), force: false, recursive: false }).unwrap();
        encode_frame(&mut out, &ToWorker::Push(vec![])).unwrap();
        let mut r = FrameReader::new(&out[..], 1024);
        assert!(matches!(r.read::<ToWorker>().unwrap(), ToWorker::Cancel { .. }));
        assert!(matches!(r.read::<ToWorker>().unwrap(), ToWorker::Push(v) if v.is_empty()));
        assert!(matches!(r.read::<ToWorker>(), Err(FrameError::Closed)));
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let bytes = u32::MAX.to_le_bytes();
        let mut r = FrameReader::new(&bytes[..], 1024);
        assert!(matches!(r.read_raw(), Err(FrameError::TooLarge { len: u32::MAX, max: 1024 })));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // Every prefix of every small byte pattern must decode to a value or an error.
        for seed in 0u32..2000 {
            let mut bytes = vec![];
            let mut x = seed.wrapping_mul(2654435761);
            for _ in 0..(seed % 40) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                bytes.push(x as u8);
            }
            let _ = decode::<ToWorker>(&bytes);
            let _ = decode::<crate::msg::FromNode>(&bytes);
            let _ = decode::<crate::msg::ToNode>(&bytes);
        }
        let mut out = Vec::new();
        encode_frame(&mut out, &ToWorker::Push(vec![])).unwrap();
        out[4] = 0xff; // bad enum tag
        let mut r = FrameReader::new(&out[..], 1024);
        assert!(matches!(r.read::<ToWorker>(), Err(FrameError::Malformed(_))));
        let _ = Arg::Inline(vec![]);
    }

    #[test]
    fn a_large_announced_frame_costs_memory_only_as_its_bytes_arrive() {
        // 64 MiB announced, 10 bytes sent: the reader holds one step, not 64 MiB.
        let mut bytes = (64u32 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        let mut r = FrameReader::new(&bytes[..], 64 << 20);
        assert!(matches!(r.read_raw(), Err(FrameError::Io(_))));
        assert!(r.buffer_capacity() <= 2 * GROW_STEP, "{}", r.buffer_capacity());
        // A whole large frame still arrives intact, and its memory is let go afterwards.
        let payload: Vec<u8> = (0..(3 << 20) as u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        encode_frame(&mut out, &serde_bytes::ByteBuf::from(payload.clone())).unwrap();
        encode_frame(&mut out, &ToWorker::Push(vec![])).unwrap();
        let mut r = FrameReader::new(&out[..], 64 << 20);
        assert_eq!(r.read::<serde_bytes::ByteBuf>().unwrap().into_vec(), payload);
        assert!(matches!(r.read::<ToWorker>().unwrap(), ToWorker::Push(v) if v.is_empty()));
        assert!(r.buffer_capacity() <= KEEP_BUFFER);
    }

    #[test]
    fn a_frame_cut_short_is_a_broken_connection_not_a_malformed_one() {
        let mut out = Vec::new();
        encode_frame(&mut out, &ToWorker::Cancel { task: Default::default(), force: false, recursive: false }).unwrap();
        out.pop();
        let mut r = FrameReader::new(&out[..], 1024);
        assert!(matches!(r.read::<ToWorker>(), Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
        let mut r = FrameReader::new(&out[..2], 1024);
        assert!(matches!(r.read::<ToWorker>(), Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }
}
