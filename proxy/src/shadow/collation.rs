//! Collation surprises per query shape: a text sort that orders (or, under a limit, cuts)
//! differently on the two databases. An application paging through such a result sees
//! other rows after the cutover, so these are confirmed mismatches of their own kind
//! (`collation`) until the operator accepts the shape (`shadow.accept_collation`).

use super::stats::FingerprintStats;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// The label of the difference, in `differences`, samples and metrics.
pub const COLLATION: &str = "collation";

/// One shape with a collation difference, or accepted for one, for `/api/mismatches`.
#[derive(Debug, Clone, Serialize)]
pub struct CollationShape {
    pub fingerprint: String,
    /// The statement with constants replaced by `$n`; empty for an accepted shape not
    /// sampled yet.
    pub query: String,
    /// Collation differences confirmed as mismatches.
    pub confirmed: u64,
    /// Collation differences counted as accepted.
    pub accepted: u64,
    /// Listed in `shadow.accept_collation`.
    pub accepted_by_setting: bool,
}

/// The shapes that saw a collation difference or are accepted, most confirmed first.
pub fn shapes(
    fingerprints: &BTreeMap<String, FingerprintStats>,
    accepted: &HashSet<u64>,
) -> Vec<CollationShape> {
    let mut out: Vec<CollationShape> = fingerprints
        .iter()
        .filter_map(|(fp, e)| {
            let confirmed = e.differences.get(COLLATION).copied().unwrap_or(0);
            let acc = e.accepted_differences.get(COLLATION).copied().unwrap_or(0);
            let by_setting = u64::from_str_radix(fp, 16).is_ok_and(|f| accepted.contains(&f));
            (confirmed > 0 || acc > 0 || by_setting).then(|| CollationShape {
                fingerprint: fp.clone(),
                query: e.query.clone(),
                confirmed,
                accepted: acc,
                accepted_by_setting: by_setting,
            })
        })
        .collect();
    let seen: HashSet<&str> = out.iter().map(|s| s.fingerprint.as_str()).collect();
    let mut unseen: Vec<CollationShape> = accepted
        .iter()
        .map(|f| format!("{f:016x}"))
        .filter(|f| !seen.contains(f.as_str()))
        .map(|fingerprint| CollationShape {
            fingerprint,
            query: String::new(),
            confirmed: 0,
            accepted: 0,
            accepted_by_setting: true,
        })
        .collect();
    unseen.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    out.sort_by(|a, b| {
        b.confirmed
            .cmp(&a.confirmed)
            .then(b.accepted.cmp(&a.accepted))
    });
    out.extend(unseen);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_confirmed_accepted_and_configured_shapes() {
        let mut f = BTreeMap::new();
        let mut confirmed = FingerprintStats {
            query: "SELECT name FROM t ORDER BY name".into(),
            ..Default::default()
        };
        confirmed.differences.insert(COLLATION, 2);
        f.insert(format!("{:016x}", 1), confirmed);
        let mut rows_only = FingerprintStats::default();
        rows_only.differences.insert("rows", 1);
        f.insert(format!("{:016x}", 2), rows_only);
        let mut accepted = FingerprintStats::default();
        accepted.accepted_differences.insert(COLLATION, 3);
        f.insert(format!("{:016x}", 3), accepted);
        let list = shapes(&f, &HashSet::from([3, 4]));
        let got: Vec<_> = list
            .iter()
            .map(|s| {
                (
                    s.fingerprint.as_str(),
                    s.confirmed,
                    s.accepted,
                    s.accepted_by_setting,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("0000000000000001", 2, 0, false),
                ("0000000000000003", 0, 3, true),
                ("0000000000000004", 0, 0, true),
            ]
        );
    }
}
