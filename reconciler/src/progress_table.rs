//! Progress of a verify or repair run, kept in `_switchyard.verify_progress` on the new
//! database so that the proxy's dashboard (and anyone with psql) can watch it: one row per
//! table of the run, queued → running → equal / different / repaired / error. Best effort:
//! a run whose user cannot write there goes on without it.

use crate::connect::{connect, Db};
use crate::report::{Status, TableReport};
use tokio_postgres::Client;

const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS _switchyard;
CREATE TABLE IF NOT EXISTS _switchyard.verify_progress (
    run_id text NOT NULL,
    command text NOT NULL,
    table_name text NOT NULL,
    state text NOT NULL,
    rows_old bigint,
    differing bigint,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    PRIMARY KEY (run_id, table_name)
);
-- Keep a week of runs.
DELETE FROM _switchyard.verify_progress WHERE started_at < clock_timestamp() - interval '7 days';
";

pub struct ProgressTable {
    client: Option<Client>,
    run_id: String,
    command: &'static str,
}

impl ProgressTable {
    /// Opens its own connection to new; `None` inside when that or the table fails.
    pub async fn open(new_url: &str, command: &'static str) -> ProgressTable {
        let run_id = format!(
            "{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            std::process::id()
        );
        let client = match connect(Db::New, new_url).await {
            Ok(c) => match c.batch_execute(SCHEMA_SQL).await {
                Ok(()) => Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "No progress table on the new database.");
                    None
                }
            },
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "No progress table on the new database.");
                None
            }
        };
        ProgressTable {
            client,
            run_id,
            command,
        }
    }

    async fn write(
        &mut self,
        sql: &str,
        table: &str,
        state: &str,
        rows: Option<i64>,
        differing: Option<i64>,
    ) {
        let Some(c) = &self.client else {
            return;
        };
        if let Err(e) = c
            .execute(
                sql,
                &[
                    &self.run_id,
                    &self.command,
                    &table,
                    &state,
                    &rows,
                    &differing,
                ],
            )
            .await
        {
            tracing::debug!(error = %e, "Writing verify progress failed; going on without it.");
            self.client = None;
        }
    }

    /// A table the run will compare.
    pub async fn queued(&mut self, table: &str) {
        self.write(
            "INSERT INTO _switchyard.verify_progress (run_id, command, table_name, state, rows_old, differing) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, table_name) DO UPDATE SET state = EXCLUDED.state",
            table, "queued", None, None,
        )
        .await
    }

    /// The table's comparison started.
    pub async fn running(&mut self, table: &str) {
        self.write(
            "UPDATE _switchyard.verify_progress SET state = $4, started_at = clock_timestamp(), \
             rows_old = $5, differing = $6 WHERE run_id = $1 AND command = $2 AND table_name = $3",
            table,
            "running",
            None,
            None,
        )
        .await
    }

    /// The table's outcome.
    pub async fn finished(&mut self, t: &TableReport) {
        let state = match t.status {
            Status::Equal => "equal",
            Status::Different => "different",
            Status::SchemaDifferent => "schema differs",
            Status::Repaired => "repaired",
            Status::Error => "error",
        };
        let differing = (t.missing_in_new + t.extra_in_new + t.different) as i64;
        self.write(
            "INSERT INTO _switchyard.verify_progress (run_id, command, table_name, state, rows_old, differing, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp()) ON CONFLICT (run_id, table_name) DO UPDATE \
             SET state = EXCLUDED.state, rows_old = EXCLUDED.rows_old, differing = EXCLUDED.differing, \
             finished_at = EXCLUDED.finished_at",
            &t.table.clone(), state, Some(t.rows_old as i64), Some(differing),
        )
        .await
    }
}
