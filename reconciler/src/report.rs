//! What verify and repair found, and how it is shown: a summary per table for people,
//! one JSON document, and Prometheus text for a metrics file.

use serde::Serialize;
use std::fmt::Write as _;
use switchyard_core::diff::{DiffKind, RowDiff};
use switchyard_core::key::{DisplayKey, KeyText};

/// Keys printed per kind in the human summary (JSON lists all that were found).
const HUMAN_KEYS: usize = 20;

/// State of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Equal,
    Different,
    /// The definitions differ; no data was compared.
    SchemaDifferent,
    /// Rows differed and repair fixed them.
    Repaired,
    Error,
}

/// One listed differing row.
#[derive(Debug, Clone, Serialize)]
pub struct RowReport {
    pub kind: &'static str,
    pub key: KeyText,
}

fn kind_name(kind: DiffKind) -> &'static str {
    match kind {
        DiffKind::MissingInNew => "missing_in_new",
        DiffKind::ExtraInNew => "extra_in_new",
        DiffKind::Different => "different",
    }
}

impl From<&RowDiff> for RowReport {
    fn from(d: &RowDiff) -> Self {
        RowReport {
            kind: kind_name(d.kind),
            key: d.key.clone(),
        }
    }
}

/// What repair did (or, with `--dry-run`, would do) to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// `old` or `new`: the side whose rows were copied.
    pub source: &'static str,
    pub dry_run: bool,
    /// Rows written (dry run: to be written) on the target.
    pub upserted: u64,
    /// Rows deleted (dry run: to be deleted) on the target.
    pub deleted: u64,
    /// Listed keys that needed nothing when repaired (equal by then).
    pub unchanged: u64,
    /// Verify-and-repair rounds (more than one when more rows differed than are listed).
    pub passes: u32,
}

/// One table's result.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub status: Status,
    pub key_columns: Vec<String>,
    pub rows_old: u64,
    pub rows_new: u64,
    pub missing_in_new: u64,
    pub extra_in_new: u64,
    pub different: u64,
    /// Rows that differed at first but were equal when re-read (writes in flight).
    pub transient: u64,
    /// More rows differ than are listed in `rows`.
    pub truncated: bool,
    pub ranges_checked: u64,
    pub seconds: f64,
    pub schema_differences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub rows: Vec<RowReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairReport>,
}

impl TableReport {
    pub fn new(table: String, status: Status) -> Self {
        TableReport {
            table,
            status,
            key_columns: Vec::new(),
            rows_old: 0,
            rows_new: 0,
            missing_in_new: 0,
            extra_in_new: 0,
            different: 0,
            transient: 0,
            truncated: false,
            ranges_checked: 0,
            seconds: 0.0,
            schema_differences: Vec::new(),
            error: None,
            rows: Vec::new(),
            repair: None,
        }
    }

    pub fn differences(&self) -> u64 {
        self.missing_in_new + self.extra_in_new + self.different
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: &'static str,
    /// No differences and no errors.
    pub equal: bool,
    pub tables: Vec<TableReport>,
    /// An error that stopped the run before or between tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// 0 when equal, 1 when anything differs (rows or definitions), 2 on any error.
    pub fn exit_code(&self) -> u8 {
        if self.error.is_some() || self.tables.iter().any(|t| t.status == Status::Error) {
            2
        } else if self
            .tables
            .iter()
            .all(|t| matches!(t.status, Status::Equal | Status::Repaired))
        {
            0
        } else {
            1
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The closing summary line of the human format.
    pub fn summary(&self) -> String {
        let differing = self
            .tables
            .iter()
            .filter(|t| matches!(t.status, Status::Different | Status::SchemaDifferent))
            .count();
        let errors = self
            .tables
            .iter()
            .filter(|t| t.status == Status::Error)
            .count();
        let mut s = format!(
            "{}: {} table(s), {} equal (or repaired), {} differ",
            self.command,
            self.tables.len(),
            self.tables
                .iter()
                .filter(|t| matches!(t.status, Status::Equal | Status::Repaired))
                .count(),
            differing
        );
        if errors > 0 {
            let _ = write!(s, ", {errors} failed");
        }
        if let Some(e) = &self.error {
            let _ = write!(s, "; error: {e}");
        }
        s
    }

    /// Prometheus text format: rows and differences per table, duration, exit code.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let cmd = self.command;
        let _ = writeln!(
            s,
            "# HELP switchyard_reconciler_rows Rows seen per table and side in the last {cmd}."
        );
        let _ = writeln!(s, "# TYPE switchyard_reconciler_rows gauge");
        for t in &self.tables {
            let table = label(&t.table);
            let _ = writeln!(
                s,
                "switchyard_reconciler_rows{{command=\"{cmd}\",table=\"{table}\",side=\"old\"}} {}",
                t.rows_old
            );
            let _ = writeln!(
                s,
                "switchyard_reconciler_rows{{command=\"{cmd}\",table=\"{table}\",side=\"new\"}} {}",
                t.rows_new
            );
        }
        let _ = writeln!(s, "# HELP switchyard_reconciler_differences Differing rows per table and kind in the last {cmd}.");
        let _ = writeln!(s, "# TYPE switchyard_reconciler_differences gauge");
        for t in &self.tables {
            let table = label(&t.table);
            for (kind, n) in [
                ("missing_in_new", t.missing_in_new),
                ("extra_in_new", t.extra_in_new),
                ("different", t.different),
            ] {
                let _ = writeln!(s, "switchyard_reconciler_differences{{command=\"{cmd}\",table=\"{table}\",kind=\"{kind}\"}} {n}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP switchyard_reconciler_table_seconds Time spent per table in the last {cmd}."
        );
        let _ = writeln!(s, "# TYPE switchyard_reconciler_table_seconds gauge");
        for t in &self.tables {
            let _ = writeln!(
                s,
                "switchyard_reconciler_table_seconds{{command=\"{cmd}\",table=\"{}\"}} {:.3}",
                label(&t.table),
                t.seconds
            );
        }
        let _ = writeln!(s, "# HELP switchyard_reconciler_exit_code Exit code of the last {cmd} (0 equal, 1 differences, 2 error).");
        let _ = writeln!(s, "# TYPE switchyard_reconciler_exit_code gauge");
        let _ = writeln!(
            s,
            "switchyard_reconciler_exit_code{{command=\"{cmd}\"}} {}",
            self.exit_code()
        );
        s
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The human lines for the schema check (printed before any data is read).
pub fn human_schema(t: &TableReport) -> String {
    let mut s = format!("{}: schema differs, data not compared", t.table);
    for p in &t.schema_differences {
        let _ = write!(s, "\n  - {p}");
    }
    s
}

/// The human lines for one table.
pub fn human_table(t: &TableReport) -> String {
    let mut s = String::new();
    match t.status {
        Status::SchemaDifferent => return human_schema(t),
        Status::Error => {
            let _ = write!(
                s,
                "{}: ERROR: {}",
                t.table,
                t.error.as_deref().unwrap_or("unknown")
            );
            return s;
        }
        Status::Equal => {
            let _ = write!(
                s,
                "{}: equal, {} rows compared ({:.2} s)",
                t.table, t.rows_old, t.seconds
            );
        }
        Status::Different | Status::Repaired => {
            let _ = write!(
                s,
                "{}: DIFFERENT: {} missing in new, {} extra in new, {} different (rows: old {}, new {}; {:.2} s)",
                t.table, t.missing_in_new, t.extra_in_new, t.different, t.rows_old, t.rows_new, t.seconds
            );
        }
    }
    if t.transient > 0 {
        let _ = write!(
            s,
            "\n  {} row(s) differed at first and were equal when re-read (writes in flight)",
            t.transient
        );
    }
    for (kind, label) in [
        ("missing_in_new", "missing in new"),
        ("extra_in_new", "extra in new"),
        ("different", "different"),
    ] {
        let keys: Vec<&RowReport> = t.rows.iter().filter(|r| r.kind == kind).collect();
        if keys.is_empty() {
            continue;
        }
        let shown: Vec<String> = keys
            .iter()
            .take(HUMAN_KEYS)
            .map(|r| DisplayKey(&r.key).to_string())
            .collect();
        let _ = write!(
            s,
            "\n  {label} ({}): {}",
            t.key_columns.join(", "),
            shown.join("; ")
        );
        if keys.len() > HUMAN_KEYS {
            let _ = write!(
                s,
                "; ... {} more (see --format json)",
                keys.len() - HUMAN_KEYS
            );
        }
    }
    if t.truncated {
        let _ = write!(
            s,
            "\n  (more rows differ than are listed: raise --max-keys to list them)"
        );
    }
    if let Some(r) = &t.repair {
        let verb = if r.dry_run {
            "would upsert"
        } else {
            "upserted"
        };
        let verb2 = if r.dry_run { "would delete" } else { "deleted" };
        let _ = write!(
            s,
            "\n  repair from {}: {verb} {}, {verb2} {}, unchanged {}{}",
            r.source,
            r.upserted,
            r.deleted,
            r.unchanged,
            if r.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        );
    }
    s
}
