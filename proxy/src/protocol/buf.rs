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

    /// The whole of `buf`, read by `read`; bytes it leaves are an error.
    pub(crate) fn all<T>(
        buf: &'a Bytes,
        what: &'static str,
        read: impl FnOnce(&mut Self) -> Result<T, ProtocolError>,
    ) -> Result<T, ProtocolError> {
        let mut r = Reader::new(buf, what);
        let v = read(&mut r)?;
        r.finish()?;
        Ok(v)
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let s = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += N;
        let mut a = [0; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        self.array().map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        self.array().map(i32::from_be_bytes)
    }

    /// A count that must not be negative.
    pub(crate) fn count16(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.i16()?).map_err(|_| self.err("negative count"))
    }

    /// A list of `count16` items, each read by `item`.
    pub(crate) fn list16<T>(
        &mut self,
        item: impl Fn(&mut Self) -> Result<T, ProtocolError>,
    ) -> Result<Vec<T>, ProtocolError> {
        let n = self.count16()?;
        // The count comes off the wire: reserve no more than a sane message needs up front.
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
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
    /// An i16 count, then each item written by `item`.
    pub(crate) fn list16<T>(
        &mut self,
        items: &[T],
        item: impl for<'w> Fn(&'w mut Self, &T) -> &'w mut Self,
    ) -> &mut Self {
        self.i16(items.len() as i16);
        for x in items {
            item(self, x);
        }
        self
    }

    pub(crate) fn finish(&mut self) {
        let len = (self.out.len() - self.start) as i32;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }
}
