//! Resolving in-doubt two-phase transactions: a secondary transaction prepared by the proxy
//! whose COMMIT PREPARED or ROLLBACK PREPARED never came (the proxy died, the secondary
//! restarted). The primary decides: its transaction id is in the gid, and
//! `pg_xact_status()` says whether it committed.
//!
//! Each direction has its own gids and its own pair of databases ([`Direction`]): forward
//! gids (`switchyard:<old xid>`) are prepared on new and decided by old, reverse gids
//! (`switchyard:n:<new xid>`) are prepared on old and decided by new. A transaction id is
//! only meaningful on the database that handed it out, so a gid is only ever looked up on
//! the primary of its own direction: the same number on the other database is another
//! transaction.

use crate::db::Db;
use crate::direction::Direction;
use serde::Serialize;
use std::time::Duration;
use tokio_postgres::Client;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RecoverReport {
    pub committed: Vec<String>,
    pub rolled_back: Vec<String>,
    /// Still running on the primary, or younger than the minimum age.
    pub pending: Vec<String>,
    /// The primary no longer knows the transaction (too old): left for an operator.
    pub unknown: Vec<String>,
}

impl RecoverReport {
    /// Nothing committed or rolled back.
    pub fn is_idle(&self) -> bool {
        self.committed.is_empty() && self.rolled_back.is_empty()
    }

    fn extend(&mut self, o: &RecoverReport) {
        self.committed.extend_from_slice(&o.committed);
        self.rolled_back.extend_from_slice(&o.rolled_back);
        self.pending.extend_from_slice(&o.pending);
        self.unknown.extend_from_slice(&o.unknown);
    }
}

/// What recovery did in each direction.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct BothDirections {
    /// Prepared on new, decided by old.
    pub old_to_new: RecoverReport,
    /// Prepared on old, decided by new.
    pub new_to_old: RecoverReport,
}

impl BothDirections {
    pub fn get(&self, d: Direction) -> &RecoverReport {
        match d {
            Direction::OldToNew => &self.old_to_new,
            Direction::NewToOld => &self.new_to_old,
        }
    }

    /// Logs what was committed or rolled back, per direction (nothing when idle).
    pub fn log_resolved(&self) {
        for d in Direction::BOTH {
            let one = self.get(d);
            if !one.is_idle() {
                tracing::info!(
                    direction = %d,
                    committed = one.committed.len(),
                    rolled_back = one.rolled_back.len(),
                    "Resolved in-doubt transactions."
                );
            }
        }
    }

    /// Both directions in one report (forward first).
    pub fn total(&self) -> RecoverReport {
        let mut t = self.old_to_new.clone();
        t.extend(&self.new_to_old);
        t
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("listing prepared transactions on the {db} database: {source}")]
    List {
        db: Db,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("asking the {db} database about transaction {xid}: {source}")]
    Status {
        db: Db,
        xid: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("finishing {gid} on the {db} database: {source}")]
    Finish {
        db: Db,
        gid: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The gids of `direction` among a secondary's prepared transactions, as a condition on
/// `gid` with the parameters `$1` (prefix) and `$2` (prefix excluded, or NULL). Forward gids
/// share the reverse gids' prefix, so the forward filter leaves the reverse tag out.
const GIDS_OF: &str = "database = current_database() AND starts_with(gid, $1) \
                       AND ($2::text IS NULL OR NOT starts_with(gid, $2))";

fn gid_prefixes(direction: Direction) -> (String, Option<String>) {
    match direction {
        Direction::OldToNew => (
            Direction::OldToNew.gid(""),
            Some(Direction::NewToOld.gid("")),
        ),
        Direction::NewToOld => (Direction::NewToOld.gid(""), None),
    }
}

/// Commits or rolls back every Switchyard-prepared transaction of the forward direction on
/// `secondary` (new) at least `min_age` old, as `primary`'s (old's) outcome says. Kept for
/// callers that only know the forward direction; see [`resolve_in_doubt_dir`].
pub async fn resolve_in_doubt(
    primary: &Client,
    secondary: &Client,
    min_age: Duration,
) -> Result<RecoverReport, RecoverError> {
    resolve_in_doubt_dir(Direction::OldToNew, primary, secondary, min_age).await
}

/// Both directions: forward gids prepared on `new` by `old`'s status, reverse gids prepared
/// on `old` by `new`'s status.
pub async fn resolve_in_doubt_both(
    old: &Client,
    new: &Client,
    min_age: Duration,
) -> Result<BothDirections, RecoverError> {
    Ok(BothDirections {
        old_to_new: resolve_in_doubt_dir(Direction::OldToNew, old, new, min_age).await?,
        new_to_old: resolve_in_doubt_dir(Direction::NewToOld, new, old, min_age).await?,
    })
}

/// Commits or rolls back every prepared transaction of `direction` on `secondary` (the
/// direction's secondary) at least `min_age` old, as `primary`'s outcome says. Gids of the
/// other direction are left alone. Safe to run concurrently with the proxy and with other
/// recoverers: a transaction finished meanwhile is skipped.
pub async fn resolve_in_doubt_dir(
    direction: Direction,
    primary: &Client,
    secondary: &Client,
    min_age: Duration,
) -> Result<RecoverReport, RecoverError> {
    let (prefix, exclude) = gid_prefixes(direction);
    let rows = secondary
        .query(
            &format!(
                "SELECT gid FROM pg_prepared_xacts WHERE {GIDS_OF} \
                 AND prepared <= now() - make_interval(secs => $3) ORDER BY prepared"
            ),
            &[&prefix, &exclude, &min_age.as_secs_f64()],
        )
        .await
        .map_err(|source| RecoverError::List {
            db: direction.secondary(),
            source,
        })?;
    let mut report = RecoverReport::default();
    for row in rows {
        let gid: String = row.get(0);
        let Some(xid) = direction.xid_of_gid(&gid) else {
            report.unknown.push(gid);
            continue;
        };
        let status: Option<String> = primary
            .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid])
            .await
            .map_err(|source| RecoverError::Status {
                db: direction.primary(),
                xid: xid.to_string(),
                source,
            })?
            .get(0);
        let commit = match status.as_deref() {
            Some("committed") => true,
            Some("aborted") => false,
            Some(_) => {
                report.pending.push(gid);
                continue;
            }
            None => {
                report.unknown.push(gid);
                continue;
            }
        };
        let sql = format!(
            "{} PREPARED '{}'",
            if commit { "COMMIT" } else { "ROLLBACK" },
            gid.replace('\'', "''")
        );
        match secondary.batch_execute(&sql).await {
            Ok(()) => {}
            // Finished by someone else in the meantime.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                continue
            }
            Err(source) => {
                return Err(RecoverError::Finish {
                    db: direction.secondary(),
                    gid,
                    source,
                })
            }
        }
        if commit {
            report.committed.push(gid);
        } else {
            report.rolled_back.push(gid);
        }
    }
    Ok(report)
}

/// Prepared transactions of `direction` on `secondary` (the direction's secondary) older
/// than `older_than`: in doubt unless a proxy finishes them in the next moment. For the
/// cutover's pre-flight.
pub async fn count_in_doubt(
    secondary: &Client,
    direction: Direction,
    older_than: Duration,
) -> Result<i64, tokio_postgres::Error> {
    let (prefix, exclude) = gid_prefixes(direction);
    Ok(secondary
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_prepared_xacts WHERE {GIDS_OF} \
                 AND prepared < now() - make_interval(secs => $3)"
            ),
            &[&prefix, &exclude, &older_than.as_secs_f64()],
        )
        .await?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every gid of a direction starts with its prefix and not with the excluded one; the
    /// other direction's gids fail one of the two.
    #[test]
    fn each_direction_lists_only_its_own_gids() {
        let matches = |d: Direction, gid: &str| {
            let (prefix, exclude) = gid_prefixes(d);
            gid.starts_with(&prefix) && exclude.is_none_or(|x| !gid.starts_with(&x))
        };
        for d in Direction::BOTH {
            for other in Direction::BOTH {
                assert_eq!(matches(d, &other.gid("42")), d == other, "{d} vs {other}");
            }
        }
        assert!(!matches(Direction::OldToNew, "other:1"));
    }

    #[test]
    fn totals_keep_forward_first() {
        let both = BothDirections {
            old_to_new: RecoverReport {
                committed: vec!["switchyard:1".into()],
                ..Default::default()
            },
            new_to_old: RecoverReport {
                committed: vec!["switchyard:n:1".into()],
                unknown: vec!["switchyard:n:x".into()],
                ..Default::default()
            },
        };
        let t = both.total();
        assert_eq!(t.committed, vec!["switchyard:1", "switchyard:n:1"]);
        assert_eq!(t.unknown.len(), 1);
        assert!(!both.get(Direction::NewToOld).is_idle());
    }
}
