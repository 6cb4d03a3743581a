//! Property-based fuzzing of the wire format (runs in the suite with the `arbitrary` feature,
//! which the workspace's tests enable): every message type is generated at random (every
//! variant, every field), encoded, read back through a [`FrameReader`], then mutated (bytes
//! flipped, set, inserted, removed, cut, repeated) and decoded as *every* message type; raw
//! random byte streams are read as frames. Nothing may panic, a frame must round-trip
//! exactly, and a reader never holds much more memory than the bytes it was given.
//!
//! `FERRY_FUZZ_CASES` sets the cases per property (default 20,000, a quarter of it for
//! `FromNode`, whose values are the largest to generate: 165,000 in all).

use crate::frame::{decode, encode_frame, FrameError, FrameReader};
use crate::msg::{FromNode, FromWorker, Hello, HelloProof, HelloReply, ToNode, ToWorker};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn cases() -> u32 {
    std::env::var("FERRY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

/// Encodes `m` as a frame, reads it back, and checks that it encodes to the same bytes.
fn round_trip<T: Serialize + DeserializeOwned>(m: &T) -> Result<Vec<u8>, TestCaseError> {
    let mut out = Vec::new();
    encode_frame(&mut out, m).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut r = FrameReader::new(&out[..], u32::MAX);
    let back: T = r.read().map_err(|e| TestCaseError::fail(format!("a valid frame did not read back: {e}")))?;
    prop_assert!(matches!(r.read::<T>(), Err(FrameError::Closed)), "one frame, one message");
    let mut again = Vec::new();
    encode_frame(&mut again, &back).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&out, &again, "the message changed on its way");
    Ok(out)
}

/// Decodes `bytes` as every message type: each gives a value or an error.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<Hello>(bytes);
    let _ = decode::<HelloReply>(bytes);
    let _ = decode::<HelloProof>(bytes);
    let _ = decode::<ToNode>(bytes);
    let _ = decode::<FromNode>(bytes);
    let _ = decode::<ToWorker>(bytes);
    let _ = decode::<FromWorker>(bytes);
}

/// Reads `stream` as frames of every type in turn until it ends or errs; the reader's buffer
/// stays within what it was given (plus one growth step).
fn read_stream(stream: &[u8]) -> Result<(), TestCaseError> {
    for max in [64u32 << 20, 4096] {
        let mut r = FrameReader::new(stream, max);
        for i in 0.. {
            let ok = match i % 4 {
                0 => r.read::<ToNode>().map(|_| ()),
                1 => r.read::<FromNode>().map(|_| ()),
                2 => r.read::<ToWorker>().map(|_| ()),
                _ => r.read::<FromWorker>().map(|_| ()),
            };
            prop_assert!(
                r.buffer_capacity() <= 2 * stream.len() + (256 << 10),
                "a reader given {} bytes holds {}",
                stream.len(),
                r.buffer_capacity()
            );
            match ok {
                Ok(()) | Err(FrameError::Malformed(_)) => continue,
                Err(_) => break,
            }
        }
    }
    Ok(())
}

/// One mutation: what, where (taken modulo the length), with what byte.
type Op = (u8, usize, u8);

fn mutate(bytes: &[u8], ops: &[Op]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(kind, at, v) in ops {
        let at = if b.is_empty() { 0 } else { at % b.len() };
        match kind % 6 {
            0 if !b.is_empty() => b[at] ^= 1 << (v % 8),
            1 if !b.is_empty() => b[at] = v,
            2 => b.insert(at, v),
            3 if !b.is_empty() => {
                b.remove(at);
            }
            4 => b.truncate(at),
            _ => {
                let end = (at + v as usize).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
        }
    }
    b
}

/// The whole check for one generated message.
fn fuzz_one<T: Serialize + DeserializeOwned>(m: &T, ops: &[Op]) -> Result<(), TestCaseError> {
    let frame = round_trip(m)?;
    let payload = &frame[4..];
    decode_all(payload);
    let mutated = mutate(payload, ops);
    decode_all(&mutated);
    // As a stream: the frame with a mutated body, and the mutated frame with its prefix.
    let mut stream = (mutated.len() as u32).to_le_bytes().to_vec();
    stream.extend_from_slice(&mutated);
    stream.extend_from_slice(&mutate(&frame, ops));
    read_stream(&stream)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hello(m: Hello, ops: Vec<Op>) { fuzz_one(&m, &ops)?; }

    #[test]
    fn hello_reply(m: HelloReply, ops: Vec<Op>) { fuzz_one(&m, &ops)?; }

    #[test]
    fn hello_proof(m: HelloProof, ops: Vec<Op>) { fuzz_one(&m, &ops)?; }

    #[test]
    fn to_node(m: ToNode, ops: Vec<Op>) { fuzz_one(&m, &ops)?; }

    #[test]
    fn to_worker(m: ToWorker, ops: Vec<Op>) { fuzz_one(&m, &ops)?; }

    #[test]
    fn from_worker(m: FromWorker, ops: Vec<Op>) { fuzz_one(&m, &ops)?; }

    #[test]
    fn raw_bytes(bytes: Vec<u8>) {
        decode_all(&bytes);
        read_stream(&bytes)?;
    }

    /// Length prefixes that announce anything at all, followed by few bytes.
    #[test]
    fn announced_lengths(len: u32, tail: Vec<u8>) {
        let mut stream = len.to_le_bytes().to_vec();
        stream.extend_from_slice(&tail);
        read_stream(&stream)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 4, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn from_node(m: FromNode, ops: Vec<Op>) { fuzz_one(&m, &ops)?; }
}
