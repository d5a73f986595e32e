//! Which chunk an integer key belongs to, for the rows of a whole-table read (the
//! verification pass on new, the scan of old) that are summed per chunk.

use anyhow::{Context, Result};
use switchyard_core::key::KeyRange;

/// A chunk's bounds as integers (`None`: unbounded).
struct Bounds {
    lo: Option<i64>,
    hi: Option<i64>,
}

fn bounds(range: &KeyRange) -> Result<Bounds> {
    let one = |k: &Option<Vec<Option<String>>>| -> Result<Option<i64>> {
        match k.as_deref() {
            None => Ok(None),
            Some([Some(v)]) => v
                .parse()
                .map(Some)
                .with_context(|| format!("chunk bound {v:?} is not an integer")),
            Some(other) => anyhow::bail!("chunk bound {other:?} is not one integer"),
        }
    };
    Ok(Bounds {
        lo: one(&range.lo)?,
        hi: one(&range.hi)?,
    })
}

/// The chunks of one table with a single integer key, by lower bound.
pub struct ChunkIndex {
    /// Bounds and the chunk's position in the list the index was built from.
    order: Vec<(Bounds, usize)>,
}

impl ChunkIndex {
    /// Indexes `ranges` (disjoint, as a table's chunks are); positions refer to their order.
    pub fn new<'a>(ranges: impl IntoIterator<Item = &'a KeyRange>) -> Result<ChunkIndex> {
        let mut order: Vec<(Bounds, usize)> = ranges
            .into_iter()
            .enumerate()
            .map(|(i, r)| bounds(r).map(|b| (b, i)))
            .collect::<Result<_>>()?;
        order.sort_by_key(|(b, _)| b.lo.unwrap_or(i64::MIN));
        Ok(ChunkIndex { order })
    }

    /// The position of the chunk holding `key`, if any does: the last chunk starting at
    /// or below it, if it is below that chunk's upper bound.
    pub fn slot(&self, key: i64) -> Option<usize> {
        let at = self
            .order
            .partition_point(|(b, _)| b.lo.is_none_or(|lo| lo <= key));
        let (b, i) = self.order.get(at.checked_sub(1)?)?;
        b.hi.is_none_or(|hi| key < hi).then_some(*i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(lo: Option<i64>, hi: Option<i64>) -> KeyRange {
        let k = |v: Option<i64>| v.map(|v| vec![Some(v.to_string())]);
        KeyRange {
            lo: k(lo),
            hi: k(hi),
        }
    }

    #[test]
    fn keys_fall_into_their_half_open_chunk() {
        let ranges = [
            range(Some(100), Some(200)),
            range(None, Some(100)),
            range(Some(300), None),
        ];
        let index = ChunkIndex::new(&ranges).expect("integer bounds");
        assert_eq!(index.slot(i64::MIN), Some(1));
        assert_eq!(index.slot(99), Some(1));
        assert_eq!(index.slot(100), Some(0));
        assert_eq!(index.slot(199), Some(0));
        assert_eq!(index.slot(200), None, "a gap between chunks");
        assert_eq!(index.slot(300), Some(2));
        assert_eq!(index.slot(i64::MAX), Some(2));
    }

    #[test]
    fn bounds_that_are_not_one_integer_are_refused() {
        let text = KeyRange {
            lo: Some(vec![Some("abc".into())]),
            hi: None,
        };
        assert!(ChunkIndex::new([&text]).is_err());
        let two = KeyRange {
            lo: Some(vec![Some("1".into()), Some("2".into())]),
            hi: None,
        };
        assert!(ChunkIndex::new([&two]).is_err());
    }
}
