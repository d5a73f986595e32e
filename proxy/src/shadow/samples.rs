//! The ring buffer of confirmed mismatches behind `/api/mismatches`: the normalized
//! statement, both sides' columns and row counts, and the first differing rows. Values are
//! shown as keyed hashes (HMAC-SHA-256 under a per-process key) unless `redact = false`: equal
//! values give equal hashes within one proxy run, so an operator can still see which
//! column differs without the data leaving the database.

use super::digest::{Column, Digest};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::collections::VecDeque;
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize)]
pub struct ColumnView {
    pub name: String,
    pub type_oid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideView {
    pub rows: u64,
    pub columns: Vec<ColumnView>,
    /// Rows only this side returned (first few), each value redacted unless configured.
    pub only_here: Vec<Vec<Option<String>>>,
    /// For an order or collation difference: this side's first rows in the order it
    /// returned them, so the two orders can be read side by side.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_rows: Vec<Vec<Option<String>>>,
    /// For a collation difference: each text sort column's collation on this side
    /// (`name: C (libc)`), where it is a table's column.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sort_collations: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MismatchSample {
    pub at_unix_ms: u64,
    pub fingerprint: String,
    /// "shadow" (old against new) or "baseline" (old against old).
    pub kind: &'static str,
    pub query: String,
    pub difference: &'static str,
    pub old: SideView,
    /// The other side: the new database, or old again for a baseline.
    pub other: SideView,
    /// Values shown as keyed hashes.
    pub redacted: bool,
    /// False when the results were larger than the rows tracked: the digests differ but the
    /// rows could not be named.
    pub rows_listed: bool,
}

/// Renders values: keyed hashes or plain.
pub struct Redactor {
    key: [u8; 32],
    redact: bool,
}

impl Redactor {
    pub fn new(key: [u8; 32], redact: bool) -> Self {
        Redactor { key, redact }
    }

    pub fn redacts(&self) -> bool {
        self.redact
    }

    pub fn show(&self, v: &str) -> String {
        if !self.redact {
            return v.to_string();
        }
        match <Hmac<Sha256> as Mac>::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(v.as_bytes());
                let tag = mac.finalize().into_bytes();
                let hex: String = tag[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("hmac:{hex}")
            }
            Err(_) => "<redacted>".to_string(),
        }
    }
}

/// Builds one side's view: its rows among `hashes`, and its first `first` rows in result
/// order, as rendered values.
pub fn side_view(d: &Digest, hashes: &[u64], first: usize, redactor: &Redactor) -> SideView {
    let render = |row: &[Option<String>]| -> Vec<Option<String>> {
        row.iter()
            .map(|v| v.as_deref().map(|s| redactor.show(s)))
            .collect()
    };
    let mut only_here = Vec::new();
    let mut first_rows = Vec::new();
    if let Some(values) = &d.values {
        for h in hashes {
            if let Some((_, row)) = values.iter().find(|(x, _)| x == h) {
                only_here.push(render(row));
            }
        }
        first_rows = values.iter().take(first).map(|(_, r)| render(r)).collect();
    }
    SideView {
        rows: d.rows,
        columns: d.columns.iter().map(view).collect(),
        only_here,
        first_rows,
        sort_collations: Vec::new(),
    }
}

fn view(c: &Column) -> ColumnView {
    ColumnView {
        name: c.name.clone(),
        type_oid: c.type_oid,
    }
}

/// Bounded: the oldest sample goes when a new one arrives at capacity.
pub struct Samples {
    ring: Mutex<VecDeque<MismatchSample>>,
    capacity: usize,
}

impl Samples {
    pub fn new(capacity: usize) -> Self {
        Samples {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
        }
    }

    pub fn push(&self, s: MismatchSample) {
        if let Ok(mut r) = self.ring.lock() {
            while r.len() >= self.capacity {
                r.pop_front();
            }
            r.push_back(s);
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<MismatchSample> {
        self.ring
            .lock()
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_is_keyed_and_stable() {
        let a = Redactor::new([1; 32], true);
        let b = Redactor::new([2; 32], true);
        assert_eq!(a.show("secret"), a.show("secret"));
        assert_ne!(a.show("secret"), b.show("secret"));
        assert!(!a.show("secret").contains("secret"));
        assert_eq!(Redactor::new([1; 32], false).show("secret"), "secret");
    }

    #[test]
    fn ring_is_bounded_newest_first() {
        let s = Samples::new(2);
        for i in 0..3 {
            s.push(MismatchSample {
                at_unix_ms: i,
                fingerprint: String::new(),
                kind: "shadow",
                query: String::new(),
                difference: "rows",
                old: SideView {
                    rows: 0,
                    columns: vec![],
                    only_here: vec![],
                    first_rows: vec![],
                    sort_collations: vec![],
                },
                other: SideView {
                    rows: 0,
                    columns: vec![],
                    only_here: vec![],
                    first_rows: vec![],
                    sort_collations: vec![],
                },
                redacted: true,
                rows_listed: true,
            });
        }
        let l = s.list();
        assert_eq!(
            l.iter().map(|s| s.at_unix_ms).collect::<Vec<_>>(),
            vec![2, 1]
        );
    }
}
