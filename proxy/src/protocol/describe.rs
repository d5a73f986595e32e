//! Reading result metadata and rows: RowDescription fields (name, type and source column)
//! and the values of a DataRow. Used by the shadow executor, which reads results instead of forwarding them.

use super::ProtocolError;

/// One RowDescription field, as far as comparing results needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    /// The table the column comes from and its attribute number; 0 for an expression.
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub format: i16,
}

/// Decodes a RowDescription body.
pub fn row_description(body: &[u8]) -> Result<Vec<FieldDescription>, ProtocolError> {
    const W: &str = "RowDescription";
    let n = count(body, W)?;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let rest = body
            .get(at..)
            .ok_or(ProtocolError::malformed(W, "truncated"))?;
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::malformed(W, "unterminated name"))?;
        let name = std::str::from_utf8(&rest[..nul])
            .map_err(|_| ProtocolError::malformed(W, "name is not UTF-8"))?
            .to_string();
        let fixed = rest
            .get(nul + 1..nul + 19)
            .ok_or(ProtocolError::malformed(W, "truncated"))?;
        let table_oid = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        let column = i16::from_be_bytes([fixed[4], fixed[5]]);
        let type_oid = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
        let format = i16::from_be_bytes([fixed[16], fixed[17]]);
        out.push(FieldDescription {
            name,
            table_oid,
            column,
            type_oid,
            format,
        });
        at += nul + 19;
    }
    Ok(out)
}

/// The values of a DataRow body (None for NULL), borrowed from it.
pub fn data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    const W: &str = "DataRow";
    let n = count(body, W)?;
    let mut at = 2;
    (0..n).map(|_| next_value(body, &mut at, W)).collect()
}

fn count(body: &[u8], what: &'static str) -> Result<usize, ProtocolError> {
    let n = body
        .get(..2)
        .ok_or(ProtocolError::malformed(what, "truncated"))?;
    usize::try_from(i16::from_be_bytes([n[0], n[1]]))
        .map_err(|_| ProtocolError::malformed(what, "negative field count"))
}

/// The value at `at` (None for NULL), moving `at` past it.
fn next_value<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_description_fields() {
        let mut body = Vec::new();
        body.extend_from_slice(&2i16.to_be_bytes());
        for (name, oid) in [("id", 23u32), ("doc", 3802)] {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&16384i32.to_be_bytes());
            body.extend_from_slice(&2i16.to_be_bytes());
            body.extend_from_slice(&oid.to_be_bytes());
            body.extend_from_slice(&4i16.to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
        }
        let f = row_description(&body).expect("valid");
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[1].name.as_str(), f[1].type_oid, f[1].format),
            ("doc", 3802, 0)
        );
        assert_eq!((f[1].table_oid, f[1].column), (16384, 2));
        assert!(row_description(&body[..body.len() - 1]).is_err());
    }

    #[test]
    fn data_row_values() {
        let mut body = Vec::new();
        body.extend_from_slice(&3i16.to_be_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.push(b'x');
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        let v = data_row(&body).expect("valid");
        assert_eq!(v, vec![Some(&b"x"[..]), None, Some(&b""[..])]);
        assert!(data_row(&body[..6]).is_err());
        let mut huge = Vec::new();
        huge.extend_from_slice(&1i16.to_be_bytes());
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(data_row(&huge).is_err());
    }
}
