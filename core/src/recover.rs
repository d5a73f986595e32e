//! Resolving in-doubt two-phase transactions: a secondary transaction prepared by the proxy
//! whose COMMIT PREPARED or ROLLBACK PREPARED never came (the proxy died, the secondary
//! restarted). The primary decides: its transaction id is in the gid, and
//! `pg_xact_status()` says whether it committed.

use crate::retry::{xid_of_gid, GID_PREFIX};
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

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("listing prepared transactions on the secondary: {0}")]
    List(#[source] tokio_postgres::Error),
    #[error("asking the primary about transaction {xid}: {source}")]
    Status {
        xid: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("finishing {gid} on the secondary: {source}")]
    Finish {
        gid: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Commits or rolls back every Switchyard-prepared transaction on `secondary` at least
/// `min_age` old, as the primary's outcome says. Safe to run concurrently with the proxy
/// and with other recoverers: a transaction finished meanwhile is skipped.
pub async fn resolve_in_doubt(
    primary: &Client,
    secondary: &Client,
    min_age: Duration,
) -> Result<RecoverReport, RecoverError> {
    let rows = secondary
        .query(
            "SELECT gid FROM pg_prepared_xacts \
             WHERE database = current_database() AND starts_with(gid, $1) \
               AND prepared <= now() - make_interval(secs => $2) ORDER BY prepared",
            &[&GID_PREFIX, &min_age.as_secs_f64()],
        )
        .await
        .map_err(RecoverError::List)?;
    let mut report = RecoverReport::default();
    for row in rows {
        let gid: String = row.get(0);
        let Some(xid) = xid_of_gid(&gid) else {
            report.unknown.push(gid);
            continue;
        };
        let status: Option<String> = primary
            .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid])
            .await
            .map_err(|source| RecoverError::Status {
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
            Err(source) => return Err(RecoverError::Finish { gid, source }),
        }
        if commit {
            report.committed.push(gid);
        } else {
            report.rolled_back.push(gid);
        }
    }
    Ok(report)
}
