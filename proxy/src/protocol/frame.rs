//! Splitting a byte stream into tagged messages without copying them.

use super::ProtocolError;
use bytes::{Bytes, BytesMut};

/// One complete tagged message as it arrived, header included, so it can be forwarded
/// byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl Frame {
    pub const HEADER: usize = 5;

    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body after the tag and length.
    pub fn body(&self) -> Bytes {
        self.raw.slice(Self::HEADER..)
    }

    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Wraps bytes known to hold exactly one well-formed message (e.g. ones we encoded).
    pub fn from_encoded(raw: Bytes) -> Self {
        debug_assert!(raw.len() >= Self::HEADER);
        Frame { raw }
    }

    /// Takes one message off the front of `buf`. `Ok(None)` means more bytes are needed.
    /// Lengths below 4 or above `max` are rejected before anything is buffered, so a length
    /// field of 2^31 never makes the proxy allocate.
    pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
        let Some(header) = buf.get(..Self::HEADER) else {
            return Ok(None);
        };
        let tag = header[0];
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len < 4 {
            return Err(ProtocolError::BadLength {
                tag: tag as char,
                len: i64::from(len),
            });
        }
        let total = len as usize + 1;
        if total > max {
            return Err(ProtocolError::TooLarge { len: total, max });
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        Ok(Some(Frame {
            raw: buf.split_to(total).freeze(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_more_bytes_until_complete() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x09SEL"[..]);
        assert_eq!(Frame::parse(&mut b, 1024), Ok(None));
        b.extend_from_slice(b"E\0");
        let f = Frame::parse(&mut b, 1024)
            .expect("valid")
            .expect("complete");
        assert_eq!(f.tag(), b'Q');
        assert_eq!(&f.body()[..], b"SELE\0");
        assert!(b.is_empty());
    }

    #[test]
    fn rejects_short_and_huge_lengths() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert!(matches!(
            Frame::parse(&mut b, 1024),
            Err(ProtocolError::BadLength { len: 3, .. })
        ));
        let mut b = BytesMut::from(&b"Q\x80\0\0\0"[..]);
        assert!(matches!(
            Frame::parse(&mut b, 1024),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut b = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            Frame::parse(&mut b, 1 << 20),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert!(
            b.capacity() < 1 << 20,
            "must not allocate for a bogus length"
        );
    }
}
