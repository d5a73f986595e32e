//! Has a retry record's origin transaction ended on the old database, and how?
//!
//! The proxy confirms a Kafka record before it sends COMMIT to old (a commit must never
//! happen without its record), so a record can be read while the rows it names are still
//! invisible on old. Re-syncing then would read them as absent and delete them on new. The
//! record carries old's transaction id (`pg_current_xact_id()`), and `pg_xact_status()`
//! says whether that transaction committed, rolled back or is still running.

use std::collections::HashMap;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// One query for every transaction id of a batch.
const STATUS_SQL: &str = "SELECT x, pg_xact_status(x::xid8) FROM unnest($1::text[]) x";

/// The end of a record's origin transaction, as the old database knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XactStatus {
    Committed,
    /// Rolled back, or lost in a crash: its changes never happened on old.
    Aborted,
    InProgress,
    /// `pg_xact_status` is NULL: the transaction is older than the commit log old keeps.
    /// Long over, so its rows are as visible as they will ever be.
    Forgotten,
    /// Newer than any transaction old has started: the record is not from this database
    /// (old was restored or replaced).
    Unknown,
}

impl XactStatus {
    fn parse(status: Option<&str>) -> Option<XactStatus> {
        Some(match status {
            None => XactStatus::Forgotten,
            Some("committed") => XactStatus::Committed,
            Some("aborted") => XactStatus::Aborted,
            Some("in progress") => XactStatus::InProgress,
            Some(_) => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("asking the old database for the status of {count} origin transaction(s): {source}")]
    Query {
        count: usize,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the old database answered {status:?} for the status of transaction {xid}")]
    Unexpected { xid: String, status: String },
}

/// True for a transaction id as `pg_current_xact_id()::text` writes it (a 64-bit
/// unsigned number); anything else could not come from the proxy.
pub fn is_xid(x: &str) -> bool {
    !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()) && x.parse::<u64>().is_ok()
}

/// The status of each of `xids` (which must pass [`is_xid`]) on the old database.
pub async fn statuses(
    old: &Client,
    xids: &[String],
) -> Result<HashMap<String, XactStatus>, OriginError> {
    match query(old, xids).await {
        Err(OriginError::Query { source, .. }) if is_future_xid(&source) && xids.len() > 1 => {
            // One id from another database fails the whole query: ask one by one so the
            // others are still answered.
            let mut out = HashMap::with_capacity(xids.len());
            for x in xids {
                out.extend(one(old, x).await?);
            }
            Ok(out)
        }
        Err(OriginError::Query { source, .. }) if is_future_xid(&source) => {
            one(old, &xids[0]).await
        }
        other => other,
    }
}

async fn one(old: &Client, xid: &str) -> Result<HashMap<String, XactStatus>, OriginError> {
    let xids = [xid.to_string()];
    match query(old, &xids).await {
        Err(OriginError::Query { source, .. }) if is_future_xid(&source) => {
            Ok(HashMap::from([(xid.to_string(), XactStatus::Unknown)]))
        }
        other => other,
    }
}

async fn query(old: &Client, xids: &[String]) -> Result<HashMap<String, XactStatus>, OriginError> {
    let rows = old
        .query(STATUS_SQL, &[&xids])
        .await
        .map_err(|source| OriginError::Query {
            count: xids.len(),
            source,
        })?;
    rows.iter()
        .map(|r| {
            let xid: String = r.get(0);
            let status: Option<String> = r.get(1);
            match XactStatus::parse(status.as_deref()) {
                Some(s) => Ok((xid, s)),
                None => Err(OriginError::Unexpected {
                    xid,
                    status: status.unwrap_or_default(),
                }),
            }
        })
        .collect()
}

/// `pg_xact_status` refuses an id old has not handed out yet ("transaction ID ... is in the
/// future") with invalid_parameter_value.
fn is_future_xid(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.code() == &SqlState::INVALID_PARAMETER_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_and_null_means_forgotten() {
        assert_eq!(
            XactStatus::parse(Some("committed")),
            Some(XactStatus::Committed)
        );
        assert_eq!(
            XactStatus::parse(Some("aborted")),
            Some(XactStatus::Aborted)
        );
        assert_eq!(
            XactStatus::parse(Some("in progress")),
            Some(XactStatus::InProgress)
        );
        assert_eq!(XactStatus::parse(None), Some(XactStatus::Forgotten));
        assert_eq!(XactStatus::parse(Some("maybe")), None);
    }

    #[test]
    fn only_unsigned_64_bit_numbers_are_xids() {
        assert!(is_xid("742"));
        assert!(is_xid("18446744073709551615"));
        assert!(!is_xid("18446744073709551616"));
        assert!(!is_xid(""));
        assert!(!is_xid("-1"));
        assert!(!is_xid("7;select"));
    }
}
