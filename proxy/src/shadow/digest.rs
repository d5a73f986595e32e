//! Result digests and the comparator. Each side's rows are hashed as they stream in, so a
//! large result costs a few words of memory, not the rows: the row count, two commutative
//! sums of normalized row hashes (the multiset), and a chained hash of the ORDER BY keys
//! (the order, with ties tolerated because tied rows share a key). A bounded list of row
//! hashes (and, on re-checks, row values) is kept to name the differing rows.
//!
//! Text sort keys are compared like any other: the databases may sort text under different
//! collations (or glibc/ICU versions), and an application paging through such a result
//! sees other rows after the cutover. That is reported as its own difference, `Collation`,
//! so an operator can tell it from lost or changed data and accept it per shape.

use super::analyze::{Shape, SortKey};
use super::normalize::{comparable_type, is_collatable, normalize};
use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

/// Second, independent hash of each row hash: two sums make an accidental multiset
/// collision (rows differing but sums equal) practically impossible.
const MIX_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Values kept for a sample, per side, in bytes.
const VALUE_BUDGET: usize = 1 << 20;

/// One result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// (table OID, attribute number) when the column is a table's, to look up its collation.
    pub source: Option<(u32, i16)>,
}

/// How rows are compared, decided from the statement's shape and the result columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No ORDER BY: any row order matches.
    Multiset,
    /// Top-level ORDER BY on output columns: the key sequence must match too. With a limit,
    /// the last group of tied keys may hold different rows (the cut falls inside a tie), so
    /// only its size is compared. `collatable`: a key is text, so an order that differs
    /// (or, under a limit, a cut that fell elsewhere) is a collation difference.
    Ordered {
        keys: Vec<usize>,
        limited: bool,
        collatable: bool,
    },
    /// LIMIT without ORDER BY: any subset is a valid answer, so only the count is compared.
    CountOnly,
}

/// Why an ORDER BY was not checked (the rows still were).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderUnchecked {
    /// A sort key is an expression, or names no output column.
    Expression,
}

impl OrderUnchecked {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderUnchecked::Expression => "expression",
        }
    }
}

/// Picks the comparison mode for a result with `columns`.
pub fn mode_for(shape: &Shape, columns: &[Column]) -> (Mode, Option<OrderUnchecked>) {
    if shape.order.is_empty() {
        let mode = if shape.limited {
            Mode::CountOnly
        } else {
            Mode::Multiset
        };
        return (mode, None);
    }
    let mut keys = Vec::with_capacity(shape.order.len());
    let mut collatable = false;
    for k in &shape.order {
        let idx = match k {
            SortKey::Position(p) => (*p >= 1 && *p <= columns.len()).then(|| p - 1),
            SortKey::Name(n) => columns.iter().position(|c| &c.name == n),
            SortKey::Expression => None,
        };
        match idx {
            Some(i) => {
                collatable |= is_collatable(columns[i].type_oid);
                keys.push(i);
            }
            None => return (unchecked_mode(shape), Some(OrderUnchecked::Expression)),
        }
    }
    (
        Mode::Ordered {
            keys,
            limited: shape.limited,
            collatable,
        },
        None,
    )
}

/// Without a usable key order: all rows as a multiset, or only the count under a limit
/// (which rows survive the cut depends on the order we cannot check).
fn unchecked_mode(shape: &Shape) -> Mode {
    if shape.limited {
        Mode::CountOnly
    } else {
        Mode::Multiset
    }
}

/// Tied rows at the end of a limited ordered result, not yet known to be complete.
#[derive(Debug, Clone, Default)]
struct Group {
    key: u64,
    sum: u64,
    mix: u64,
}

/// The running digest of one side's result.
#[derive(Debug, Clone)]
pub struct Digest {
    pub columns: Vec<Column>,
    pub mode: Mode,
    pub order_unchecked: Option<OrderUnchecked>,
    pub rows: u64,
    sum: u64,
    mix: u64,
    chain: u64,
    group: Option<Group>,
    /// Hashes of the first rows, for naming differing rows.
    pub kept: Vec<u64>,
    max_kept: usize,
    /// Normalized values of kept rows (re-checks only): (row hash, values).
    pub values: Option<Vec<(u64, Vec<Option<String>>)>>,
    value_bytes: usize,
}

impl Digest {
    pub fn new(columns: Vec<Column>, shape: &Shape, max_kept: usize, keep_values: bool) -> Self {
        let (mode, order_unchecked) = mode_for(shape, &columns);
        Digest {
            columns,
            mode,
            order_unchecked,
            rows: 0,
            sum: 0,
            mix: 0,
            chain: 0,
            group: None,
            kept: Vec::new(),
            max_kept,
            values: keep_values.then(Vec::new),
            value_bytes: 0,
        }
    }

    /// The text columns among the sort keys (whose collation decides the order).
    pub fn text_sort_columns(&self) -> Vec<&Column> {
        match &self.mode {
            Mode::Ordered { keys, .. } => keys
                .iter()
                .filter_map(|&k| self.columns.get(k))
                .filter(|c| is_collatable(c.type_oid))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Adds one row (None for NULL); values beyond the described columns are ignored.
    pub fn row(&mut self, values: &[Option<&[u8]>]) {
        self.rows += 1;
        let mut row_hasher = Xxh3::new();
        let mut normalized: Vec<Option<String>> = Vec::new();
        let keep_values = self.values.is_some()
            && self.kept.len() < self.max_kept
            && self.value_bytes < VALUE_BUDGET;
        for (i, v) in values.iter().enumerate() {
            let oid = self.columns.get(i).map_or(0, |c| c.type_oid);
            match v {
                None => {
                    row_hasher.update(&[0xff]);
                    if keep_values {
                        normalized.push(None);
                    }
                }
                Some(raw) => {
                    let n = normalize(oid, raw);
                    row_hasher.update(&[1]);
                    row_hasher.update(&(n.len() as u32).to_le_bytes());
                    row_hasher.update(&n);
                    if keep_values {
                        self.value_bytes += n.len();
                        normalized.push(Some(String::from_utf8_lossy(&n).into_owned()));
                    }
                }
            }
        }
        let h = row_hasher.digest();
        let m = xxh3_64_with_seed(&h.to_le_bytes(), MIX_SEED);
        if self.kept.len() < self.max_kept {
            self.kept.push(h);
            if keep_values {
                if let Some(vals) = self.values.as_mut() {
                    vals.push((h, normalized));
                }
            }
        }
        match &self.mode {
            Mode::Ordered { keys, limited, .. } => {
                let mut kh = Xxh3::new();
                for &k in keys {
                    match values.get(k).copied().flatten() {
                        None => kh.update(&[0xff]),
                        Some(raw) => {
                            let n = normalize(self.columns[k].type_oid, raw);
                            kh.update(&[1]);
                            kh.update(&(n.len() as u32).to_le_bytes());
                            kh.update(&n);
                        }
                    }
                }
                let key = kh.digest();
                let mut link = [0u8; 16];
                link[..8].copy_from_slice(&self.chain.to_le_bytes());
                link[8..].copy_from_slice(&key.to_le_bytes());
                self.chain = xxh3_64_with_seed(&link, 0);
                if *limited {
                    let g = self.group.get_or_insert_with(|| Group {
                        key,
                        ..Default::default()
                    });
                    if g.key != key {
                        // The previous tie group is complete: it counts in full.
                        self.sum = self.sum.wrapping_add(g.sum);
                        self.mix = self.mix.wrapping_add(g.mix);
                        *g = Group {
                            key,
                            ..Default::default()
                        };
                    }
                    g.sum = g.sum.wrapping_add(h);
                    g.mix = g.mix.wrapping_add(m);
                    return;
                }
                self.sum = self.sum.wrapping_add(h);
                self.mix = self.mix.wrapping_add(m);
            }
            Mode::Multiset | Mode::CountOnly => {
                self.sum = self.sum.wrapping_add(h);
                self.mix = self.mix.wrapping_add(m);
            }
        }
    }
}

/// What differs between two results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    Columns,
    Types,
    RowCount,
    Rows,
    Order,
    /// Under a text sort: the same rows in another order, or (with a limit) other rows
    /// where the key sequence differs too. The databases sort text differently.
    Collation,
}

impl Difference {
    pub fn as_str(self) -> &'static str {
        match self {
            Difference::Columns => "columns",
            Difference::Types => "types",
            Difference::RowCount => "row_count",
            Difference::Rows => "rows",
            Difference::Order => "order",
            Difference::Collation => "collation",
        }
    }
}

/// Compares two finished digests; None when they match.
pub fn compare(a: &Digest, b: &Digest) -> Option<Difference> {
    if a.columns.len() != b.columns.len()
        || a.columns
            .iter()
            .zip(&b.columns)
            .any(|(x, y)| x.name != y.name)
    {
        return Some(Difference::Columns);
    }
    if a.columns
        .iter()
        .zip(&b.columns)
        .any(|(x, y)| comparable_type(x.type_oid) != comparable_type(y.type_oid))
    {
        return Some(Difference::Types);
    }
    if a.rows != b.rows {
        return Some(Difference::RowCount);
    }
    if a.mode == Mode::CountOnly || b.mode == Mode::CountOnly {
        return None;
    }
    let rows_differ = a.sum != b.sum || a.mix != b.mix;
    let Mode::Ordered {
        limited,
        collatable,
        ..
    } = a.mode
    else {
        return rows_differ.then_some(Difference::Rows);
    };
    let order_differs = a.chain != b.chain;
    match (rows_differ, order_differs) {
        (false, false) => None,
        (false, true) if collatable => Some(Difference::Collation),
        (false, true) => Some(Difference::Order),
        // Under a limit the rows kept depend on where the sort put the cut: other rows with
        // another key sequence is what a different text sort gives. Other rows under the
        // same key sequence are not the sort's doing (a non-key column differs).
        (true, true) if limited && collatable => Some(Difference::Collation),
        (true, _) => Some(Difference::Rows),
    }
}

/// Whether both results hold the same rows as multisets (under a limit, outside the last
/// tie group), whatever their order.
pub fn same_rows(a: &Digest, b: &Digest) -> bool {
    a.sum == b.sum && a.mix == b.mix
}

/// What exactly differs, as one number: equal for two comparisons that found the same rows
/// missing or extra (and the same columns, counts and order), whatever else changed on both
/// sides in between. A re-check confirms a mismatch only when this is unchanged: rows that
/// are being written differ by different amounts at each look, a lasting divergence by the
/// same amount.
pub fn signature(a: &Digest, b: &Digest) -> u64 {
    let mut h = Xxh3::new();
    for c in a.columns.iter().chain(&b.columns) {
        h.update(c.name.as_bytes());
        h.update(&[0]);
        h.update(&comparable_type(c.type_oid).to_le_bytes());
    }
    h.update(&a.rows.wrapping_sub(b.rows).to_le_bytes());
    h.update(&a.sum.wrapping_sub(b.sum).to_le_bytes());
    h.update(&a.mix.wrapping_sub(b.mix).to_le_bytes());
    if a.chain != b.chain {
        h.update(&a.chain.to_le_bytes());
        h.update(&b.chain.to_le_bytes());
    }
    h.digest()
}

/// Row hashes kept on one side but not the other (as multisets), at most `limit` each.
pub fn differing_rows(a: &Digest, b: &Digest, limit: usize) -> (Vec<u64>, Vec<u64>) {
    let mut x = a.kept.clone();
    let mut y = b.kept.clone();
    x.sort_unstable();
    y.sort_unstable();
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < x.len() || j < y.len() {
        match (x.get(i), y.get(j)) {
            (Some(p), Some(q)) if p == q => {
                i += 1;
                j += 1;
            }
            (Some(p), Some(q)) if p < q => {
                only_a.push(*p);
                i += 1;
            }
            (Some(p), None) => {
                only_a.push(*p);
                i += 1;
            }
            (_, Some(q)) => {
                only_b.push(*q);
                j += 1;
            }
            (None, None) => break,
        }
    }
    // Keep result order for readability: the first differing rows as they streamed in.
    let first = |d: &Digest, set: Vec<u64>| -> Vec<u64> {
        let mut left = set;
        let mut out = Vec::new();
        for h in &d.kept {
            if out.len() >= limit {
                break;
            }
            if let Some(p) = left.iter().position(|x| x == h) {
                left.swap_remove(p);
                out.push(*h);
            }
        }
        out
    };
    (first(a, only_a), first(b, only_b))
}

#[cfg(test)]
#[path = "digest_tests.rs"]
mod tests;
