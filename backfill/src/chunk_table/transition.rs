//! Every change of a chunk's status goes through [`transition`], one `UPDATE` that names
//! the states the chunk may be in: a chunk another worker took over, or that was
//! finished meanwhile, is not matched, so no writer records over another's result.

use super::status::{sql_set, ChunkStatus};
use super::{err, ChunkTableError};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

/// One change of status of the chunks an `UPDATE` of the chunk table (as `c`) matches.
pub(super) struct Transition<'a> {
    /// The states a chunk must be in to change.
    pub from: &'a [ChunkStatus],
    pub to: ChunkStatus,
    /// `WITH` queries choosing the chunks; empty for none.
    pub with: &'a str,
    /// Assignments besides the status.
    pub set: &'a str,
    /// `FROM` items the conditions join to `c`; empty for none.
    pub join: &'a str,
    /// Conditions besides the state (parenthesised: an `OR` in them cannot widen it).
    pub filter: &'a str,
    /// What each changed chunk returns (callers that only count return the key).
    pub returning: &'a str,
}

impl<'a> Transition<'a> {
    /// A change of the chunks `filter` picks in the chunk table alone, returning their
    /// numbers (callers count them to learn whether the chunks were still theirs).
    pub fn of_chunks(
        from: &'a [ChunkStatus],
        to: ChunkStatus,
        set: &'a str,
        filter: &'a str,
    ) -> Self {
        Transition {
            from,
            to,
            with: "",
            set,
            join: "",
            filter,
            returning: "c.chunk_no",
        }
    }

    fn sql(&self) -> String {
        let with = if self.with.is_empty() {
            String::new()
        } else {
            format!("WITH {}\n", self.with)
        };
        let join = if self.join.is_empty() {
            String::new()
        } else {
            format!("FROM {}\n", self.join)
        };
        format!(
            "{with}UPDATE _switchyard.backfill_chunks c SET status = {to}, {set}\n\
             {join}WHERE c.status IN {from} AND ({filter})\n\
             RETURNING {returning}",
            to = self.to.sql(),
            set = self.set,
            from = sql_set(self.from),
            filter = self.filter,
            returning = self.returning,
        )
    }
}

/// Applies `t`, whose clauses refer to `params` as `$1`, `$2`…; returns the changed
/// chunks' `RETURNING` rows. `what` names the change in errors.
pub(super) async fn transition(
    client: &impl GenericClient,
    t: &Transition<'_>,
    params: &[&(dyn ToSql + Sync)],
    what: &'static str,
) -> Result<Vec<Row>, ChunkTableError> {
    client.query(&t.sql(), params).await.map_err(err(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_checks_the_state_it_changes_from() {
        let t = Transition::of_chunks(
            &[ChunkStatus::Running],
            ChunkStatus::Failed,
            "lease_until = NULL",
            "c.chunk_no = $1",
        );
        assert_eq!(
            t.sql(),
            "UPDATE _switchyard.backfill_chunks c SET status = 'failed', lease_until = NULL\n\
             WHERE c.status IN ('running') AND (c.chunk_no = $1)\n\
             RETURNING c.chunk_no"
        );
    }
}
