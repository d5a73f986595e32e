//! RowDescription and DataRow surgery for dual writes: the proxy's capture columns come
//! first in every result row of a rewritten statement and are cut off before the client
//! sees the row.

use super::ProtocolError;
use bytes::{BufMut, BytesMut};

pub(crate) fn field_count(body: &[u8], what: &'static str) -> Result<usize, ProtocolError> {
    let n = body
        .get(..2)
        .ok_or(ProtocolError::malformed(what, "truncated"))?;
    usize::try_from(i16::from_be_bytes([n[0], n[1]]))
        .map_err(|_| ProtocolError::malformed(what, "negative field count"))
}

/// Appends RowDescription `body` minus its first `skip` fields to `out`; returns how many
/// fields are left (zero means the client asked for no columns).
pub fn strip_row_description(
    body: &[u8],
    skip: usize,
    out: &mut BytesMut,
) -> Result<usize, ProtocolError> {
    const W: &str = "RowDescription";
    let total = field_count(body, W)?;
    let left = total.checked_sub(skip).ok_or(ProtocolError::malformed(
        W,
        "fewer fields than the proxy added",
    ))?;
    let mut at = 2;
    for _ in 0..skip {
        let nul = body[at..]
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::malformed(W, "unterminated name"))?;
        at += nul + 1 + 18;
    }
    if at > body.len() {
        return Err(ProtocolError::malformed(W, "truncated"));
    }
    if left > 0 {
        out.put_u8(b'T');
        out.put_i32((4 + 2 + body.len() - at) as i32);
        out.put_i16(left as i16);
        out.put_slice(&body[at..]);
    }
    Ok(left)
}

/// The DataRow value at `*at` (None for NULL); moves `*at` past it.
pub(crate) fn next_value<'a>(
    body: &'a [u8],
    at: &mut usize,
    what: &'static str,
) -> Result<Option<&'a [u8]>, ProtocolError> {
    let len = body
        .get(*at..*at + 4)
        .ok_or(ProtocolError::malformed(what, "truncated"))?;
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    *at += 4;
    if len < 0 {
        return Ok(None);
    }
    let end = at
        .checked_add(len as usize)
        .ok_or(ProtocolError::malformed(what, "bad length"))?;
    let v = body
        .get(*at..end)
        .ok_or(ProtocolError::malformed(what, "truncated value"))?;
    *at = end;
    Ok(Some(v))
}

/// Splits a DataRow: the first `n` values (None for NULL) and, if `client` is set, the row
/// of the remaining values encoded into `out`.
pub fn split_data_row<'a>(
    body: &'a [u8],
    n: usize,
    client: Option<&mut BytesMut>,
) -> Result<Vec<Option<&'a [u8]>>, ProtocolError> {
    const W: &str = "DataRow";
    let total = field_count(body, W)?;
    let left = total.checked_sub(n).ok_or(ProtocolError::malformed(
        W,
        "fewer values than the proxy added",
    ))?;
    let mut at = 2;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(next_value(body, &mut at, W)?);
    }
    if let Some(out) = client {
        out.put_u8(b'D');
        out.put_i32((4 + 2 + body.len() - at) as i32);
        out.put_i16(left as i16);
        out.put_slice(&body[at..]);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn data_row_split() {
        let body = row(&[Some(b"16384"), None, Some(b"{}"), Some(b"x")]);
        let mut out = BytesMut::new();
        let v = split_data_row(&body, 3, Some(&mut out)).expect("valid");
        assert_eq!(v, vec![Some(&b"16384"[..]), None, Some(&b"{}"[..])]);
        let mut want = BytesMut::new();
        want.put_u8(b'D');
        let rest = row(&[Some(b"x")]);
        want.put_i32(4 + rest.len() as i32);
        want.put_slice(&rest);
        assert_eq!(out, want);
        assert!(split_data_row(&body[..5], 3, None).is_err());
        assert!(split_data_row(&row(&[Some(b"1")]), 3, None).is_err());
    }

    #[test]
    fn row_description_strip() {
        let mut body = Vec::new();
        body.extend_from_slice(&3i16.to_be_bytes());
        for name in ["a", "b", "c"] {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&[0u8; 18]);
        }
        let mut out = BytesMut::new();
        assert_eq!(strip_row_description(&body, 2, &mut out).expect("valid"), 1);
        assert_eq!(&out[7..9], b"c\0");
        let mut out = BytesMut::new();
        assert_eq!(strip_row_description(&body, 3, &mut out).expect("valid"), 0);
        assert!(out.is_empty());
        assert!(strip_row_description(&body, 4, &mut out).is_err());
    }
}
