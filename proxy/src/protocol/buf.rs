//! Cursor over a message body and a builder for outgoing messages.

use super::ProtocolError;
use bytes::{BufMut, Bytes, BytesMut};

/// Reads fields from a message body, failing with the message's name on truncation.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes, what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn err(&self, detail: &'static str) -> ProtocolError {
        ProtocolError::malformed(self.what, detail)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        let s = self
            .buf
            .get(self.pos..self.pos + 2)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += 2;
        Ok(i16::from_be_bytes([s[0], s[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        let s = self
            .buf
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += 4;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// A count that must not be negative.
    pub(crate) fn count16(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.i16()?).map_err(|_| self.err("negative count"))
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<String, ProtocolError> {
        let rest = self
            .buf
            .get(self.pos..)
            .ok_or_else(|| self.err("truncated"))?;
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("string not terminated"))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.err("invalid UTF-8"))?
            .to_string();
        self.pos += nul + 1;
        Ok(s)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        if self.pos + n > self.buf.len() {
            return Err(self.err("truncated"));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// A length-prefixed value where -1 means NULL.
    pub(crate) fn nullable(&mut self) -> Result<Option<Bytes>, ProtocolError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| self.err("negative value length"))?;
        self.bytes(n).map(Some)
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos.min(self.buf.len())..);
        self.pos = self.buf.len();
        b
    }

    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

/// Builds one tagged message; the length is filled in by `finish`.
pub(crate) struct Writer<'a> {
    out: &'a mut BytesMut,
    start: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn tagged(out: &'a mut BytesMut, tag: u8) -> Self {
        out.put_u8(tag);
        let start = out.len();
        out.put_i32(0);
        Writer { out, start }
    }

    /// An untagged message (startup family): length first.
    pub(crate) fn untagged(out: &'a mut BytesMut) -> Self {
        let start = out.len();
        out.put_i32(0);
        Writer { out, start }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.out.put_u8(v);
        self
    }
    pub(crate) fn i16(&mut self, v: i16) -> &mut Self {
        self.out.put_i16(v);
        self
    }
    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.out.put_i32(v);
        self
    }
    pub(crate) fn cstr(&mut self, s: &str) -> &mut Self {
        self.out.put_slice(s.as_bytes());
        self.out.put_u8(0);
        self
    }
    pub(crate) fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.out.put_slice(b);
        self
    }
    pub(crate) fn nullable(&mut self, v: &Option<Bytes>) -> &mut Self {
        match v {
            None => self.out.put_i32(-1),
            Some(b) => {
                self.out.put_i32(b.len() as i32);
                self.out.put_slice(b);
            }
        }
        self
    }

    pub(crate) fn finish(&mut self) {
        let len = (self.out.len() - self.start) as i32;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }
}
