//! Progress of the other parts, for the dashboard: a backfill keeps its chunk table on the
//! new database (`_switchyard.backfill_chunks`), verify and repair a progress table
//! (`_switchyard.verify_progress`); every few seconds the proxy summarises them per table
//! (the latest verify or repair run only). Nothing is read from a table that does not
//! exist (that part has not run).

use serde::Serialize;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use switchyard_core::dsn::Dsn;
use tokio_postgres::Row;

/// One job's progress on one table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProgressEntry {
    /// `backfill`, `verify` or `repair`.
    pub job: String,
    pub table: String,
    /// Chunks finished and verified.
    pub done: i64,
    pub total: i64,
    /// Rows copied by the finished chunks.
    pub rows: i64,
    /// `running` / `done` / `failed (N)`.
    pub state: String,
    pub failed: bool,
}

/// The latest summary, shown in `/api/status` as `progress`, and when it was read.
#[derive(Default)]
pub struct Progress {
    entries: RwLock<(Vec<ProgressEntry>, Option<Instant>)>,
}

impl Progress {
    pub fn get(&self) -> Vec<ProgressEntry> {
        self.entries.read().map(|e| e.0.clone()).unwrap_or_default()
    }

    /// Rows the backfill copied (all tables) and when that was read; None while no
    /// backfill reported progress.
    pub fn backfill_rows(&self) -> Option<(i64, Instant)> {
        let e = self.entries.read().ok()?;
        let read_at = e.1?;
        let mut backfill = e.0.iter().filter(|p| p.job == "backfill").peekable();
        backfill.peek()?;
        Some((backfill.map(|p| p.rows).sum(), read_at))
    }

    fn set(&self, v: Vec<ProgressEntry>) {
        if let Ok(mut e) = self.entries.write() {
            *e = (v, Some(Instant::now()));
        }
    }
}

const BACKFILL_SQL: &str = "
SELECT table_name,
       count(*) FILTER (WHERE status = 'done')::int8,
       count(*)::int8,
       coalesce(sum(rows_copied) FILTER (WHERE status = 'done'), 0)::int8,
       count(*) FILTER (WHERE status = 'failed')::int8,
       count(*) FILTER (WHERE status = 'running')::int8
FROM _switchyard.backfill_chunks GROUP BY table_name ORDER BY table_name";

const VERIFY_SQL: &str = "
SELECT command, table_name, state, coalesce(rows_old, 0)::int8, coalesce(differing, 0)::int8,
       finished_at IS NOT NULL
FROM _switchyard.verify_progress
WHERE run_id = (SELECT run_id FROM _switchyard.verify_progress ORDER BY started_at DESC LIMIT 1)
ORDER BY table_name LIMIT 200";

/// Refreshes the summary every `every` while the proxy runs.
/// Re-reads the progress tables on `new` every `every`.
pub async fn run(progress: Arc<Progress>, new: Dsn, connect_timeout: Duration, every: Duration) {
    loop {
        match read(&new, connect_timeout).await {
            Ok(entries) => progress.set(entries),
            Err(e) => tracing::debug!(error = %e, "Reading backfill and verify progress failed."),
        }
        tokio::time::sleep(every).await;
    }
}

async fn read(new: &Dsn, connect_timeout: Duration) -> Result<Vec<ProgressEntry>, String> {
    let client = crate::mirror::control::connect(
        switchyard_core::db::Db::New,
        new,
        "switchyard-progress",
        None,
        connect_timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT to_regclass('_switchyard.backfill_chunks') IS NOT NULL, \
                    to_regclass('_switchyard.verify_progress') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if row.get::<_, bool>(0) {
        out.extend(read_entries(&client, BACKFILL_SQL, backfill_entry).await?);
    }
    if row.get::<_, bool>(1) {
        out.extend(read_entries(&client, VERIFY_SQL, verify_entry).await?);
    }
    Ok(out)
}

async fn read_entries(
    client: &tokio_postgres::Client,
    sql: &str,
    entry: fn(&Row) -> ProgressEntry,
) -> Result<Vec<ProgressEntry>, String> {
    let rows = client.query(sql, &[]).await.map_err(|e| e.to_string())?;
    Ok(rows.iter().map(entry).collect())
}

/// A row of `VERIFY_SQL`.
fn verify_entry(r: &Row) -> ProgressEntry {
    let (state, differing, finished): (String, i64, bool) = (r.get(2), r.get(4), r.get(5));
    ProgressEntry {
        job: r.get(0),
        table: r.get(1),
        done: i64::from(finished),
        total: 1,
        rows: r.get(3),
        failed: state == "error" || state == "different",
        state: if differing > 0 {
            format!("{state} ({differing} rows)")
        } else {
            state
        },
    }
}

/// A row of `BACKFILL_SQL`.
fn backfill_entry(r: &Row) -> ProgressEntry {
    let (done, total, failed, running): (i64, i64, i64, i64) =
        (r.get(1), r.get(2), r.get(4), r.get(5));
    ProgressEntry {
        job: "backfill".into(),
        table: r.get(0),
        done,
        total,
        rows: r.get(3),
        state: if failed > 0 {
            format!("failed ({failed})")
        } else if done == total {
            "done".into()
        } else if running > 0 {
            "running".into()
        } else {
            "waiting".into()
        },
        failed: failed > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job: &str, table: &str, rows: i64) -> ProgressEntry {
        ProgressEntry {
            job: job.into(),
            table: table.into(),
            done: 1,
            total: 1,
            rows,
            state: "done".into(),
            failed: false,
        }
    }

    #[test]
    fn backfill_rows_sum_the_backfill_tables_only() {
        let p = Progress::default();
        assert_eq!(p.backfill_rows(), None, "nothing read yet");
        p.set(vec![entry("verify", "a", 500)]);
        assert_eq!(p.backfill_rows(), None, "no backfill ran");
        let before = Instant::now();
        p.set(vec![
            entry("backfill", "a", 100),
            entry("backfill", "b", 20),
            entry("verify", "a", 500),
        ]);
        let (rows, read_at) = p.backfill_rows().expect("a backfill");
        assert_eq!(rows, 120);
        assert!(read_at >= before);
    }
}
