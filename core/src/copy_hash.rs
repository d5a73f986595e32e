//! Checksums of rows as binary `COPY` carries them, computed by the client: the count of
//! rows and the sum (as `i128`, order-independent, never XOR) of the 64-bit XXH3 hash of
//! each row's bytes (field count, each field's length and data).
//!
//! Why: a backfill already reads every row of old as a binary COPY stream, so hashing that
//! stream costs the source server nothing, where a checksum query on old scans the range
//! again and hashes each row in SQL (measured: about as much server time as the copy out
//! itself). The new side is then read back once as binary COPY and hashed the same way.
//!
//! Two servers send the same bytes for the same value only when the type's binary form
//! does not embed anything local to a cluster: arrays and composites carry their element
//! types' OIDs, which differ between clusters for user-defined types. [`stream_hashable`]
//! therefore accepts only built-in types (OID below 16384) that are not composites; other
//! tables are checksummed in SQL (`crate::checksum`).

use xxhash_rust::xxh3::xxh3_64;

/// First OID a cluster hands out to user objects (`FirstNormalObjectId`).
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// Built-in types whose binary form is cluster-local or that are not plain values:
/// `record`, the bootstrap catalogs' row types (`pg_type`, `pg_attribute`, `pg_proc`,
/// `pg_class`).
const NOT_HASHABLE: &[u32] = &[2249, 71, 75, 81, 83];

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// True when rows with columns of these types hash the same on any two clusters.
pub fn stream_hashable(type_oids: impl IntoIterator<Item = u32>) -> bool {
    type_oids
        .into_iter()
        .all(|oid| oid < FIRST_NORMAL_OBJECT_ID && !NOT_HASHABLE.contains(&oid))
}

/// The stream was not binary COPY data as PostgreSQL writes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed binary COPY data: {0}")]
pub struct CopyHashError(pub &'static str);

/// Rows and hash sum of a stream, as stored in the backfill's chunk table: `xxh3:<sum>`
/// (prefixed, so it is never compared with a SQL checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamSum {
    pub rows: i64,
    pub sum: i128,
}

impl StreamSum {
    pub fn add(&mut self, hash: u64) {
        self.rows += 1;
        self.sum += i128::from(hash);
    }

    /// Adds the rows and sum of another part of the same set.
    pub fn merge(&mut self, other: StreamSum) {
        self.rows += other.rows;
        self.sum += other.sum;
    }

    /// The text form (`xxh3:<sum>`).
    pub fn text(&self) -> String {
        format!("xxh3:{}", self.sum)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Rows,
    Done,
}

/// Incremental parser and hasher of one binary COPY stream, fed in pieces of any size.
#[derive(Debug)]
pub struct CopyHasher {
    stage: Stage,
    /// Bytes of an incomplete header or row carried over to the next piece.
    carry: Vec<u8>,
    /// Which field's bytes [`CopyHasher::feed_keyed`] passes on with each row's hash.
    key_field: usize,
    total: StreamSum,
    /// Length of the stream's header, once parsed.
    header_len: Option<usize>,
}

impl Default for CopyHasher {
    fn default() -> Self {
        Self::new(0)
    }
}

/// How far a parse got in a buffer.
enum Step {
    /// A whole row of this many bytes, with its key field (`None` for NULL).
    Row {
        len: usize,
        key: Option<(usize, usize)>,
    },
    /// The header, this many bytes.
    Header(usize),
    /// The end marker (2 bytes).
    Trailer,
    /// The buffer ends inside the next item.
    NeedMore,
}

impl CopyHasher {
    /// A hasher that hands out field `key_field` (0-based) of each row in
    /// [`CopyHasher::feed_keyed`].
    pub fn new(key_field: usize) -> Self {
        CopyHasher {
            stage: Stage::Header,
            carry: Vec::new(),
            key_field,
            total: StreamSum::default(),
            header_len: None,
        }
    }

    /// Rows and hash sum of everything fed so far.
    pub fn total(&self) -> StreamSum {
        self.total
    }

    /// Feeds the next piece of the stream.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), CopyHashError> {
        self.feed_keyed(data, |_, _| {})
    }

    /// Feeds the next piece; calls `on_row(hash, key field bytes or None for NULL)` for each
    /// complete row.
    pub fn feed_keyed(
        &mut self,
        data: &[u8],
        mut on_row: impl FnMut(u64, Option<&[u8]>),
    ) -> Result<(), CopyHashError> {
        if self.carry.is_empty() {
            let used = self.consume(data, &mut on_row)?;
            self.carry.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(data);
            let used = self.consume(&buf, &mut on_row)?;
            buf.drain(..used);
            self.carry = buf;
        }
        Ok(())
    }

    /// Bytes at the end of what was fed that do not complete a header, row or end marker
    /// yet: everything before them can be cut off as whole rows.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Length of the stream's header (signature, flags and extension), once it is parsed.
    pub fn header_len(&self) -> Option<usize> {
        self.header_len
    }

    /// True once the end marker (the last two bytes of the stream) is parsed.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Checks that the stream ended with its end marker and nothing is left over.
    pub fn finish(&self) -> Result<StreamSum, CopyHashError> {
        if self.stage != Stage::Done {
            return Err(CopyHashError("the stream ended before its end marker"));
        }
        Ok(self.total)
    }

    fn consume(
        &mut self,
        buf: &[u8],
        on_row: &mut impl FnMut(u64, Option<&[u8]>),
    ) -> Result<usize, CopyHashError> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match self.step(rest)? {
                Step::NeedMore => return Ok(at),
                Step::Header(n) => {
                    self.stage = Stage::Rows;
                    self.header_len = Some(n);
                    at += n;
                }
                Step::Trailer => {
                    self.stage = Stage::Done;
                    at += 2;
                    if at != buf.len() {
                        return Err(CopyHashError("data after the end marker"));
                    }
                    return Ok(at);
                }
                Step::Row { len, key } => {
                    let hash = xxh3_64(&rest[..len]);
                    self.total.add(hash);
                    on_row(hash, key.map(|(s, e)| &rest[s..e]));
                    at += len;
                }
            }
        }
    }

    fn step(&self, b: &[u8]) -> Result<Step, CopyHashError> {
        match self.stage {
            Stage::Done => {
                if b.is_empty() {
                    Ok(Step::NeedMore)
                } else {
                    Err(CopyHashError("data after the end marker"))
                }
            }
            Stage::Header => {
                if b.len() < SIGNATURE.len() + 8 {
                    return if SIGNATURE.starts_with(&b[..b.len().min(SIGNATURE.len())]) {
                        Ok(Step::NeedMore)
                    } else {
                        Err(CopyHashError("no binary COPY signature"))
                    };
                }
                if &b[..SIGNATURE.len()] != SIGNATURE {
                    return Err(CopyHashError("no binary COPY signature"));
                }
                let ext = i32_at(b, SIGNATURE.len() + 4);
                let Ok(ext) = usize::try_from(ext) else {
                    return Err(CopyHashError("negative header extension length"));
                };
                let n = SIGNATURE.len() + 8 + ext;
                Ok(if b.len() < n {
                    Step::NeedMore
                } else {
                    Step::Header(n)
                })
            }
            Stage::Rows => {
                if b.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                let fields = i16::from_be_bytes([b[0], b[1]]);
                if fields == -1 {
                    return Ok(Step::Trailer);
                }
                if fields < 0 {
                    return Err(CopyHashError("negative field count"));
                }
                let mut at = 2;
                let mut key = None;
                for f in 0..fields as usize {
                    if b.len() < at + 4 {
                        return Ok(Step::NeedMore);
                    }
                    let len = i32_at(b, at);
                    at += 4;
                    if len == -1 {
                        continue;
                    }
                    let Ok(len) = usize::try_from(len) else {
                        return Err(CopyHashError("negative field length"));
                    };
                    if b.len() < at + len {
                        return Ok(Step::NeedMore);
                    }
                    if f == self.key_field {
                        key = Some((at, at + len));
                    }
                    at += len;
                }
                Ok(Step::Row { len: at, key })
            }
        }
    }
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes an integer key field (`int2`, `int4`, `int8` in binary form).
pub fn int_key(field: &[u8]) -> Option<i64> {
    match field.len() {
        2 => Some(i64::from(i16::from_be_bytes([field[0], field[1]]))),
        4 => Some(i64::from(i32::from_be_bytes([
            field[0], field[1], field[2], field[3],
        ]))),
        8 => Some(i64::from_be_bytes(field.try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for r in rows {
            out.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(v);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn rows() -> Vec<Vec<Option<&'static [u8]>>> {
        vec![
            vec![Some(&[0, 0, 0, 1]), Some(b"alpha"), None],
            vec![Some(&[0, 0, 0, 2]), Some(b""), Some(b"x")],
            vec![Some(&[0, 0, 0, 3]), None, Some(b"")],
        ]
    }

    #[test]
    fn pending_bytes_mark_where_whole_rows_end() {
        let data = stream(&rows());
        let header = SIGNATURE.len() + 8 + 4;
        // Cut the stream at every point; what lies before the pending tail, with the
        // header and end marker removed, must be whole rows, in order.
        for cut in 0..=data.len() {
            let mut h = CopyHasher::default();
            h.feed(&data[..cut]).expect("valid prefix");
            let whole = cut - h.pending();
            let mut body = data[..whole].to_vec();
            if whole > 0 {
                assert_eq!(h.header_len(), Some(header), "cut {cut}");
                body.drain(..header);
            } else {
                assert_eq!(h.header_len(), None, "cut {cut}");
            }
            if h.is_done() {
                assert_eq!(cut, data.len());
                body.truncate(body.len() - 2);
            }
            let mut again = CopyHasher::default();
            let mut rebuilt = data[..header].to_vec();
            rebuilt.extend_from_slice(&body);
            rebuilt.extend_from_slice(&(-1i16).to_be_bytes());
            again.feed(&rebuilt).expect("whole rows re-framed");
            assert_eq!(
                again.finish().expect("ended").rows,
                h.total().rows,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn any_split_gives_the_same_sum_and_keys() {
        let data = stream(&rows());
        let mut whole = CopyHasher::new(0);
        let mut keys = Vec::new();
        whole
            .feed_keyed(&data, |_, k| keys.push(k.and_then(int_key)))
            .unwrap();
        let expected = whole.finish().unwrap();
        assert_eq!(expected.rows, 3);
        assert_eq!(keys, vec![Some(1), Some(2), Some(3)]);
        for size in 1..data.len() {
            let mut h = CopyHasher::new(0);
            let mut keys = Vec::new();
            for piece in data.chunks(size) {
                h.feed_keyed(piece, |_, k| keys.push(k.and_then(int_key)))
                    .unwrap();
            }
            assert_eq!(h.finish().unwrap(), expected, "pieces of {size}");
            assert_eq!(keys, vec![Some(1), Some(2), Some(3)]);
        }
    }

    #[test]
    fn order_does_not_matter_but_content_does() {
        let mut r = rows();
        let a = {
            let mut h = CopyHasher::default();
            h.feed(&stream(&r)).unwrap();
            h.finish().unwrap()
        };
        r.reverse();
        let b = {
            let mut h = CopyHasher::default();
            h.feed(&stream(&r)).unwrap();
            h.finish().unwrap()
        };
        assert_eq!(a, b);
        // NULL and the empty value differ; a duplicated row does not cancel out.
        r[0][1] = Some(b"");
        let mut h = CopyHasher::default();
        h.feed(&stream(&r)).unwrap();
        assert_ne!(h.finish().unwrap(), a);
        let mut twice = rows();
        twice.push(twice[0].clone());
        twice.push(twice[0].clone());
        let mut h = CopyHasher::default();
        h.feed(&stream(&twice)).unwrap();
        let t = h.finish().unwrap();
        assert_eq!(t.rows, 5);
        assert_ne!(t.sum, a.sum);
    }

    #[test]
    fn malformed_streams_are_refused() {
        let mut h = CopyHasher::default();
        assert_eq!(
            h.feed(b"PGCOPX\n\xff\r\n\0\0\0\0\0\0\0\0\0"),
            Err(CopyHashError("no binary COPY signature"))
        );
        let mut h = CopyHasher::default();
        assert!(h.feed(b"text,rows\n").is_err());
        let data = stream(&rows());
        let mut h = CopyHasher::default();
        h.feed(&data[..data.len() - 2]).unwrap();
        assert_eq!(
            h.finish(),
            Err(CopyHashError("the stream ended before its end marker"))
        );
        let mut h = CopyHasher::default();
        let mut extra = data.clone();
        extra.push(0);
        assert_eq!(
            h.feed(&extra),
            Err(CopyHashError("data after the end marker"))
        );
        let mut bad = data[..19].to_vec();
        bad.extend_from_slice(b"ext!");
        bad.extend_from_slice(&1i16.to_be_bytes());
        bad.extend_from_slice(&(-7i32).to_be_bytes());
        let mut h = CopyHasher::default();
        assert_eq!(h.feed(&bad), Err(CopyHashError("negative field length")));
    }

    #[test]
    fn only_built_in_plain_types_are_hashable() {
        assert!(stream_hashable([23, 25, 1700, 3802, 1184, 1007]));
        assert!(!stream_hashable([23, 16385]));
        assert!(!stream_hashable([2249]));
        assert_eq!(int_key(&[0xff, 0xfe]), Some(-2));
        assert_eq!(int_key(&7i64.to_be_bytes()), Some(7));
        assert_eq!(int_key(&[1, 2, 3]), None);
    }
}
