//! Frames: `[u32 LE length][u8 version][postcard payload]`.
//!
//! The length counts the version byte and the payload. A frame longer than
//! the reader's limit, of an unknown version, or that fails to decode is an
//! error for that one connection; callers close it and keep serving.

use serde::{Serialize, de::DeserializeOwned};
use std::io::{Read, Write};

/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Default upper bound on one frame (length field), in bytes.
pub const MAX_FRAME: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error on the wire")]
    Io(#[source] std::io::Error),
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error("frame version {0} is not supported (this side speaks {FRAME_VERSION})")]
    Version(u8),
    #[error("frame does not decode")]
    Decode(#[source] postcard::Error),
    #[error("message does not encode")]
    Encode(#[source] postcard::Error),
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

impl From<std::io::Error> for ProtoError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            ProtoError::Io(e)
        }
    }
}

/// Encodes `msg` as one complete frame (header included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Encodes `msg` as one complete frame into `out`, replacing what it held.
/// The buffer is sized once, up front; a caller that keeps `out` between
/// frames reuses its memory.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let size = postcard::experimental::serialized_size(msg).map_err(ProtoError::Encode)?;
    let mut buf = std::mem::take(out);
    buf.clear();
    buf.reserve(5 + size);
    buf.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION]);
    let mut buf = postcard::to_extend(msg, buf).map_err(ProtoError::Encode)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    *out = buf;
    Ok(())
}

/// Checks a frame header and returns the body length (version byte excluded).
pub fn check_header(hdr: [u8; 4], max: u32) -> Result<usize, ProtoError> {
    let len = u32::from_le_bytes(hdr);
    if len == 0 {
        return Err(ProtoError::Empty);
    }
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    Ok(len as usize)
}

/// Decodes a frame body (version byte first).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    let (&v, payload) = body.split_first().ok_or(ProtoError::Empty)?;
    if v != FRAME_VERSION {
        return Err(ProtoError::Version(v));
    }
    postcard::from_bytes(payload).map_err(ProtoError::Decode)
}

/// Writes one frame to a blocking writer.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtoError> {
    let buf = encode(msg)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame from a blocking reader.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R, max: u32) -> Result<T, ProtoError> {
    let mut hdr = [0u8; 4];
    r.read_exact(&mut hdr)?;
    let len = check_header(hdr, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode_body(&body)
}

#[cfg(feature = "tokio")]
mod asynch {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Writes one frame to an async writer and flushes it.
    pub async fn write_frame_async<W: AsyncWrite + Unpin, T: Serialize>(
        w: &mut W,
        msg: &T,
    ) -> Result<(), ProtoError> {
        let buf = encode(msg)?;
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads one frame from an async reader.
    pub async fn read_frame_async<R: AsyncRead + Unpin, T: DeserializeOwned>(
        r: &mut R,
        max: u32,
    ) -> Result<T, ProtoError> {
        let mut hdr = [0u8; 4];
        r.read_exact(&mut hdr).await?;
        let len = check_header(hdr, max)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        decode_body(&body)
    }

    /// Reads one frame from an async reader into `buf` (replacing what it
    /// held) and decodes it. A caller that keeps `buf` between frames
    /// reuses its memory; the bytes are not zero-filled first.
    pub async fn read_frame_async_into<R: AsyncRead + Unpin, T: DeserializeOwned>(
        r: &mut R,
        max: u32,
        buf: &mut Vec<u8>,
    ) -> Result<T, ProtoError> {
        let mut hdr = [0u8; 4];
        r.read_exact(&mut hdr).await?;
        let len = check_header(hdr, max)?;
        buf.clear();
        buf.reserve(len);
        let mut body = (&mut *r).take(len as u64);
        while buf.len() < len {
            if body.read_buf(buf).await? == 0 {
                return Err(ProtoError::Closed);
            }
        }
        decode_body(buf)
    }
}
#[cfg(feature = "tokio")]
pub use asynch::{read_frame_async, read_frame_async_into, write_frame_async};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_oversized_unknown_version_and_garbage() {
        let mut big = Vec::new();
        big.extend_from_slice(&(MAX_FRAME + 1).to_le_bytes());
        let r: Result<String, _> = read_frame(&mut big.as_slice(), MAX_FRAME);
        assert!(matches!(r, Err(ProtoError::TooLarge { .. })));

        let mut f = encode(&"hi".to_string()).unwrap();
        f[4] = 9;
        let r: Result<String, _> = read_frame(&mut f.as_slice(), MAX_FRAME);
        assert!(matches!(r, Err(ProtoError::Version(9))));

        let garbage = [3u8, 0, 0, 0, FRAME_VERSION, 0xff, 0xff];
        let r: Result<String, _> = read_frame(&mut &garbage[..], MAX_FRAME);
        assert!(matches!(r, Err(ProtoError::Decode(_))));

        let r: Result<String, _> = read_frame(&mut &[1u8, 0][..], MAX_FRAME);
        assert!(matches!(r, Err(ProtoError::Closed)));
    }

    #[test]
    fn encode_into_reuses_its_buffer_and_matches_encode() {
        let mut out = Vec::new();
        let big = vec![7u8; 100_000];
        encode_into(&big, &mut out).unwrap();
        assert_eq!(out, encode(&big).unwrap());
        let cap = out.capacity();
        encode_into(&"hi".to_string(), &mut out).unwrap();
        assert_eq!(out, encode(&"hi".to_string()).unwrap());
        assert_eq!(out.capacity(), cap);
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn read_into_a_reused_buffer_gives_each_frame_and_then_closed() {
        let mut wire = encode(&vec![1u8; 70_000]).unwrap();
        wire.extend(encode(&vec![2u8; 3]).unwrap());
        wire.extend(&encode(&vec![3u8; 10]).unwrap()[..8]);
        let mut r = wire.as_slice();
        let mut buf = Vec::new();
        let a: Vec<u8> = read_frame_async_into(&mut r, MAX_FRAME, &mut buf)
            .await
            .unwrap();
        assert_eq!(a, vec![1u8; 70_000]);
        let b: Vec<u8> = read_frame_async_into(&mut r, MAX_FRAME, &mut buf)
            .await
            .unwrap();
        assert_eq!(b, vec![2u8; 3]);
        let c: Result<Vec<u8>, _> = read_frame_async_into(&mut r, MAX_FRAME, &mut buf).await;
        assert!(matches!(c, Err(ProtoError::Closed)), "{c:?}");
        let mut over = &(MAX_FRAME + 1).to_le_bytes()[..];
        let d: Result<Vec<u8>, _> = read_frame_async_into(&mut over, MAX_FRAME, &mut buf).await;
        assert!(matches!(d, Err(ProtoError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn roundtrip(v in proptest::collection::vec(any::<(u64, String, Vec<u8>)>(), 0..8)) {
            let f = encode(&v).unwrap();
            let back: Vec<(u64, String, Vec<u8>)> = read_frame(&mut f.as_slice(), MAX_FRAME).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _: Result<crate::shadow::ToShadow, _> = read_frame(&mut b.as_slice(), 1024);
            let _: Result<crate::cli::CliRequest, _> = read_frame(&mut b.as_slice(), 1024);
        }
    }
}
