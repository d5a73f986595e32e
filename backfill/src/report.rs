//! The end of a run: a summary table for people, one JSON document, Prometheus text for
//! the metrics file, and the exit status.

use crate::chunk_table::{ChunkStatus, TableTotals};
use crate::plan::Skipped;
use serde::Serialize;
use std::fmt::Write;

/// Exit status: everything copied and verified.
pub const EXIT_OK: u8 = 0;
/// Finished, but chunks failed or stayed unverified, or tables were skipped or refused.
pub const EXIT_ATTENTION: u8 = 1;
/// Could not do the work.
pub const EXIT_ERROR: u8 = 2;

/// What a run did (totals come from the chunk table, so they include other processes'
/// and earlier runs' work on the same tables).
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub tables: Vec<TableTotals>,
    pub skipped: Vec<Skipped>,
    /// Tables without a primary key not copied, with the reason and the fix.
    pub refused: Vec<Skipped>,
    /// Indexes and constraints rebuilt after a deferred load.
    pub rebuilt: Vec<String>,
    /// Chunks this process finished.
    pub rows_this_run: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub error: Option<String>,
    /// `--schema copy`: whether new's schema was copied now or found there already.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<crate::schema_copy::Outcome>,
}

impl Summary {
    pub fn exit_code(&self) -> u8 {
        if self.error.is_some() {
            EXIT_ERROR
        } else if !self.skipped.is_empty()
            || !self.refused.is_empty()
            || self.tables.iter().any(|t| t.done != t.chunks)
        {
            EXIT_ATTENTION
        } else {
            EXIT_OK
        }
    }

    /// The table people read at the end.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let width = self
            .tables
            .iter()
            .map(|t| t.table.len())
            .chain(self.skipped.iter().map(|s| s.table.len()))
            .chain(self.refused.iter().map(|s| s.table.len()))
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "{:<width$}  {:>7} {:>7} {:>10} {:>6} {:>12} {:>12} {:>9} {:>8} {:>8}",
            "table",
            "chunks",
            "done",
            "unverified",
            "failed",
            "rows old",
            "rows new",
            "repaired",
            "copy s",
            "check s"
        );
        for t in &self.tables {
            let _ = writeln!(
                out,
                "{:<width$}  {:>7} {:>7} {:>10} {:>6} {:>12} {:>12} {:>9} {:>8.1} {:>8.1}",
                t.table,
                t.chunks,
                t.done,
                t.unverified,
                t.failed + t.open,
                t.rows_old,
                t.rows_new,
                t.rows_repaired,
                t.copy_seconds,
                t.verify_seconds
            );
        }
        for s in &self.skipped {
            let _ = writeln!(out, "{:<width$}  skipped: {}", s.table, s.reason);
        }
        for s in &self.refused {
            let _ = writeln!(out, "{:<width$}  refused: {}", s.table, s.reason);
        }
        match self.schema {
            Some(crate::schema_copy::Outcome::Copied) => {
                let _ = writeln!(out, "schema copied from old");
            }
            Some(crate::schema_copy::Outcome::AlreadyThere) => {
                let _ = writeln!(out, "schema: old's already on new, kept");
            }
            None => {}
        }
        for r in &self.rebuilt {
            let _ = writeln!(out, "rebuilt {r}");
        }
        let verdict = match self.exit_code() {
            EXIT_OK => "every chunk copied and verified equal",
            EXIT_ATTENTION => "finished; some chunks or tables need attention (see above)",
            _ => "failed",
        };
        let _ = write!(
            out,
            "{} rows in {:.1}s ({:.0} rows/s) by this process: {verdict}",
            self.rows_this_run, self.seconds, self.rows_per_second
        );
        out
    }

    pub fn json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("exit_code".into(), self.exit_code().into());
        }
        v.to_string()
    }

    /// Prometheus text: per-table chunk counts by status, rows and repairs; run figures.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP switchyard_backfill_chunks Chunks by table and status."
        );
        let _ = writeln!(out, "# TYPE switchyard_backfill_chunks gauge");
        for t in &self.tables {
            let l = label(&t.table);
            for (status, n) in [
                (ChunkStatus::Done.as_str(), t.done),
                (ChunkStatus::Unverified.as_str(), t.unverified),
                (ChunkStatus::Failed.as_str(), t.failed),
                // Not a state: pending, running, copied or verifying.
                ("open", t.open),
            ] {
                let _ = writeln!(
                    out,
                    "switchyard_backfill_chunks{{table=\"{l}\",status=\"{status}\"}} {n}"
                );
            }
        }
        for (name, help, get) in [
            (
                "switchyard_backfill_rows_copied",
                "Rows read from old by chunk copies.",
                (|t: &TableTotals| t.rows_copied) as fn(&TableTotals) -> i64,
            ),
            (
                "switchyard_backfill_rows_verified",
                "Rows in verified chunks on old.",
                |t: &TableTotals| t.rows_old,
            ),
            (
                "switchyard_backfill_rows_repaired",
                "Rows re-synced by chunk checks.",
                |t: &TableTotals| t.rows_repaired,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for t in &self.tables {
                let _ = writeln!(out, "{name}{{table=\"{}\"}} {}", label(&t.table), get(t));
            }
        }
        for (name, help, value) in [
            (
                "switchyard_backfill_tables_skipped",
                "Tables without a primary key.",
                self.skipped.len().to_string(),
            ),
            (
                "switchyard_backfill_tables_refused",
                "Tables without a primary key refused.",
                self.refused.len().to_string(),
            ),
            (
                "switchyard_backfill_seconds",
                "Wall time of this run.",
                format!("{:.3}", self.seconds),
            ),
            (
                "switchyard_backfill_rows_per_second",
                "Rows per second of this run.",
                format!("{:.1}", self.rows_per_second),
            ),
            (
                "switchyard_backfill_exit_code",
                "Exit status of this run.",
                self.exit_code().to_string(),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_chunks() {
        let mut s = Summary::default();
        s.tables.push(TableTotals {
            table: "\"public\".\"t\"".into(),
            chunks: 2,
            done: 2,
            ..TableTotals::default()
        });
        assert_eq!(s.exit_code(), EXIT_OK);
        assert!(s.prometheus().contains(
            "switchyard_backfill_chunks{table=\"\\\"public\\\".\\\"t\\\"\",status=\"done\"} 2"
        ));
        s.tables[0].done = 1;
        s.tables[0].unverified = 1;
        assert_eq!(s.exit_code(), EXIT_ATTENTION);
        s.tables[0].done = 2;
        s.tables[0].unverified = 0;
        s.refused.push(Skipped {
            table: "public.bag".into(),
            reason: "no primary key, and dual writes may be running".into(),
        });
        assert_eq!(
            s.exit_code(),
            EXIT_ATTENTION,
            "a refused table needs attention"
        );
        assert!(s.human().lines().any(|l| l.starts_with("public.bag ")
            && l.ends_with("refused: no primary key, and dual writes may be running")));
        assert!(s
            .prometheus()
            .contains("switchyard_backfill_tables_refused 1"));
        let doc: serde_json::Value = serde_json::from_str(&s.json()).expect("JSON");
        assert_eq!(doc["refused"][0]["table"], "public.bag");
        assert_eq!(doc["exit_code"], 1);
        s.error = Some("x".into());
        assert_eq!(s.exit_code(), EXIT_ERROR);
        assert!(s.json().contains("\"exit_code\":2"));
    }
}
