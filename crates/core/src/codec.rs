//! How values become bytes: postcard, with a copy-only fast path for byte vectors.
//!
//! postcard encodes a `Vec<u8>` as a varint length followed by the raw bytes, but it does so
//! one element at a time through serde. For `Vec<u8>` we write (and read) exactly the same
//! layout with one `memcpy`, so both paths are interchangeable: a value written by either
//! decodes with either. This matters for the large buffers the store is for.

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use ferry_store::ObjectView;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::{Any, TypeId};
use std::sync::Arc;

/// What the bytes being decoded live in, so a [`Bytes`] can be a view of them.
pub(crate) enum Backing<'a> {
    None,
    Inline(&'a Arc<Vec<u8>>),
    Mapped(&'a ObjectView),
}

/// An encoded value, possibly in two parts (header + borrowed body) so that large byte
/// vectors are not copied before they reach the store.
pub(crate) enum Encoded<'a> {
    Owned(Vec<u8>),
    Bytes {
        header: Vec<u8>,
        body: &'a [u8],
    },
    /// Already encoded in the store (a frozen `BytesMut`): make it the object, do not copy.
    Staged {
        src: crate::bytes::StagedSrc<'a>,
        all: &'a [u8],
    },
}

impl Encoded<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Encoded::Owned(v) => v.len(),
            Encoded::Bytes { header, body } => header.len() + body.len(),
            Encoded::Staged { all, .. } => all.len(),
        }
    }
    pub(crate) fn parts(&self) -> Vec<&[u8]> {
        match self {
            Encoded::Owned(v) => vec![v],
            Encoded::Bytes { header, body } => vec![header, body],
            Encoded::Staged { all, .. } => vec![all],
        }
    }
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Encoded::Owned(v) => v,
            Encoded::Bytes { mut header, body } => {
                header.extend_from_slice(body);
                header
            }
            Encoded::Staged { all, .. } => all.to_vec(),
        }
    }
}

fn ser_err<T: ?Sized>(e: postcard::Error) -> Error {
    Error::Serialization {
        detail: format!(
            "cannot encode a {}: {e} (ferry encodes with postcard: every sequence and map must know its \
             length, and types that need a self-describing format, such as #[serde(untagged)] or \
             #[serde(flatten)], cannot be used)",
            std::any::type_name::<T>()
        ),
    }
}

/// [`ser_err`], or the value's own message when its `Serialize` refused it (postcard drops it).
fn encode_err<T: Serialize + ?Sized>(v: &T, e: postcard::Error) -> Error {
    match (e, crate::why::encode_message(v)) {
        (postcard::Error::SerdeSerCustom, Some(why)) => {
            Error::Serialization { detail: format!("cannot encode a {}: {why}", std::any::type_name::<T>()) }
        }
        (e, _) => ser_err::<T>(e),
    }
}

/// The error of decoding `bytes` as a `T`: in the words of the code that refused them (a
/// `Deserialize` impl's own message, which postcard drops) when there are such words.
fn decode_failed<T: DeserializeOwned>(bytes: &[u8], e: postcard::Error) -> Error {
    match (e, crate::why::decode_message::<T>(bytes)) {
        (postcard::Error::SerdeDeCustom, Some(why)) => Error::Serialization {
            detail: format!(
                "cannot decode a {}: {why} (its Deserialize refused the value)",
                std::any::type_name::<T>()
            ),
        },
        (e, _) => decode_err::<T>(e),
    }
}

fn decode_err<T>(e: impl std::fmt::Display) -> Error {
    Error::Serialization {
        detail: format!(
            "cannot decode a {}: {e}; the bytes were made from another type (a driver and workers built from \
             different code?)",
            std::any::type_name::<T>()
        ),
    }
}

/// Encodes `v`.
pub(crate) fn encode<T: Serialize + 'static>(v: &T) -> Result<Encoded<'_>> {
    if let Some(bytes) = (v as &dyn Any).downcast_ref::<Vec<u8>>() {
        let header = postcard::to_allocvec(&bytes.len()).map_err(ser_err::<T>)?;
        return Ok(Encoded::Bytes { header, body: bytes });
    }
    if let Some(bytes) = (v as &dyn Any).downcast_ref::<Bytes>() {
        if let Some((src, all)) = bytes.staged() {
            return Ok(Encoded::Staged { src, all });
        }
        let header = postcard::to_allocvec(&bytes.len()).map_err(ser_err::<T>)?;
        return Ok(Encoded::Bytes { header, body: bytes });
    }
    postcard::to_allocvec(v).map(Encoded::Owned).map_err(|e| encode_err(v, e))
}

/// Encodes `v` into one buffer.
pub fn encode_vec<T: Serialize + 'static>(v: &T) -> Result<Vec<u8>> {
    encode(v).map(Encoded::into_vec)
}

/// Decodes a `T` from `bytes`.
pub fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T> {
    decode_backed(bytes, Backing::None)
}

/// Decodes a `T` from `bytes`, which live in `backing`: a [`Bytes`] becomes a view of it.
pub(crate) fn decode_backed<T: DeserializeOwned + 'static>(bytes: &[u8], backing: Backing<'_>) -> Result<T> {
    if TypeId::of::<T>() == TypeId::of::<Bytes>() {
        let body = bytes_body(bytes)?;
        let start = bytes.len() - body.len();
        let b = match backing {
            Backing::Mapped(view) if view.len() == bytes.len() => Bytes::mapped(view.clone(), start),
            Backing::Inline(buf) if buf.len() == bytes.len() => Bytes::inline(buf.clone(), start),
            _ => Bytes::from(body.to_vec()),
        };
        let boxed: Box<dyn Any> = Box::new(b);
        return Ok(*boxed.downcast::<T>().expect("T is Bytes"));
    }
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let body = bytes_body(bytes)?;
        let boxed: Box<dyn Any> = Box::new(crate::bytes::copy_out(body));
        return Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"));
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(decode_err::<T>(format!("{} bytes left over", rest.len()))),
        Err(e) => Err(decode_failed::<T>(bytes, e)),
    }
}

/// The raw bytes inside an encoded `Vec<u8>` (skipping the length prefix).
pub(crate) fn bytes_body(bytes: &[u8]) -> Result<&[u8]> {
    let (len, rest) = postcard::take_from_bytes::<usize>(bytes).map_err(decode_err::<Vec<u8>>)?;
    if rest.len() != len {
        return Err(decode_err::<Vec<u8>>(format!("it says {len} bytes but {} follow", rest.len())));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_matches_postcard_layout() {
        for n in [0usize, 1, 127, 128, 300, 70_000] {
            let v: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let fast = encode_vec(&v).unwrap();
            let slow = postcard::to_allocvec(&v).unwrap();
            assert_eq!(fast, slow, "n={n}");
            assert_eq!(decode::<Vec<u8>>(&slow).unwrap(), v);
            let via_serde: Vec<u8> = postcard::from_bytes(&fast).unwrap();
            assert_eq!(via_serde, v);
        }
    }

    #[test]
    fn large_vectors_decode_whole_through_the_hugepage_copy() {
        for n in [(4 << 20) - 1, 4 << 20, (9 << 20) + 123] {
            let v: Vec<u8> = (0..n).map(|i| (i % 249) as u8).collect();
            let enc = encode_vec(&v).unwrap();
            let back: Vec<u8> = decode_backed(&enc, Backing::Inline(&Arc::new(enc.clone()))).unwrap();
            assert!(back == v, "{n} bytes");
            assert!(Bytes::from(v.clone()).to_vec() == v);
        }
    }

    #[test]
    fn bytes_and_vec_share_an_encoding() {
        let v: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let b = Bytes::from(v.clone());
        let enc = encode_vec(&b).unwrap();
        assert_eq!(enc, encode_vec(&v).unwrap());
        assert_eq!(decode::<Bytes>(&enc).unwrap(), b);
        assert_eq!(decode::<Vec<u8>>(&enc).unwrap(), v);
        // Through plain serde (inside a struct), too.
        let pair = postcard::to_allocvec(&(1u8, b.clone())).unwrap();
        let (one, back): (u8, Bytes) = postcard::from_bytes(&pair).unwrap();
        assert_eq!((one, back), (1, b));
        let buf = Arc::new(enc);
        let view: Bytes = decode_backed(&buf, Backing::Inline(&buf)).unwrap();
        assert_eq!(view.as_ptr(), buf[buf.len() - 200..].as_ptr(), "a view, not a copy");
    }

    #[test]
    fn type_mismatch_is_an_error() {
        let b = encode_vec(&"hello".to_string()).unwrap();
        assert!(matches!(decode::<u64>(&b), Err(Error::Serialization { .. })));
        assert!(decode::<Vec<u8>>(&[5, 1]).is_err());
        assert_eq!(decode::<(i64, String)>(&encode_vec(&(3i64, "x".to_string())).unwrap()).unwrap(), (3, "x".into()));
    }
}
