//! What verify and repair found, and how it is shown: a summary per table for people,
//! one JSON document, and Prometheus text for a metrics file.

use serde::Serialize;
use std::fmt::Write as _;
use switchyard_core::diff::{DiffKind, RowDiff};
use switchyard_core::key::{DisplayKey, KeyText};
use switchyard_core::multiset_diff::MultisetRow;

/// How repair runs; `None` for a plain verify.
#[derive(Debug, Clone, Copy)]
pub struct RepairMode {
    pub source: crate::cli::SourceSide,
    pub dry_run: bool,
}

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

/// One listed differing row: by key, or in a table without a primary key by its image
/// (`row`) and how many copies each side holds.
#[derive(Debug, Clone, Serialize)]
pub struct RowReport {
    pub kind: &'static str,
    pub key: KeyText,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies_old: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies_new: Option<i64>,
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
            row: None,
            copies_old: None,
            copies_new: None,
        }
    }
}

impl From<&MultisetRow> for RowReport {
    fn from(d: &MultisetRow) -> Self {
        RowReport {
            kind: kind_name(if d.old_copies > d.new_copies {
                DiffKind::MissingInNew
            } else {
                DiffKind::ExtraInNew
            }),
            key: Vec::new(),
            row: Some(d.image.text.clone()),
            copies_old: Some(d.old_copies),
            copies_new: Some(d.new_copies),
        }
    }
}

/// A sequence on the side that takes writes next (new until the cutover's `writes-new`,
/// old during it: where writes go on a rollback) whose next value comes before the other
/// side's: its first `nextval` there would hand out a value already used.
#[derive(Debug, Clone, Serialize)]
pub struct SequenceReport {
    /// `schema.name` on the side ahead.
    pub name: String,
    /// `old` or `new`: the side behind.
    pub behind: &'static str,
    /// What `nextval` returns next on each side (null: used up).
    pub next_old: Option<i64>,
    pub next_new: Option<i64>,
    /// Counts the other way on the side behind: no value can fix it, the definition must.
    pub opposite_direction: bool,
    pub status: Status,
    /// After repair: what `nextval` returns next on the side that was behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired_next: Option<i64>,
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
    /// Sequences behind on the side that takes writes next (empty: none, or not checked).
    pub sequences: Vec<SequenceReport>,
    /// Why sequences were not compared, when they were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequences_skipped: Option<String>,
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
            .map(|t| t.status)
            .chain(self.sequences.iter().map(|s| s.status))
            .all(|s| matches!(s, Status::Equal | Status::Repaired))
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
        let behind = self
            .sequences
            .iter()
            .filter(|q| q.status == Status::Different)
            .count();
        if behind > 0 {
            let _ = write!(s, "; {behind} sequence(s) behind");
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
            .map(|r| match (&r.row, r.copies_old, r.copies_new) {
                (Some(row), Some(o), Some(n)) => format!("{row} (copies: old {o}, new {n})"),
                _ => DisplayKey(&r.key).to_string(),
            })
            .collect();
        let by = if t.key_columns.is_empty() {
            "no primary key: whole rows".to_string()
        } else {
            t.key_columns.join(", ")
        };
        let _ = write!(s, "\n  {label} ({by}): {}", shown.join("; "));
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

/// The human line for one sequence found behind.
pub fn human_sequence(q: &SequenceReport) -> String {
    let show = |v: Option<i64>| v.map_or("nothing (used up)".to_string(), |v| v.to_string());
    let (behind, ahead) = if q.behind == "new" {
        (q.next_new, q.next_old)
    } else {
        (q.next_old, q.next_new)
    };
    let other = if q.behind == "new" { "old" } else { "new" };
    let mut s = format!(
        "sequence {}: BEHIND on {}: hands out {} next, {other} {}",
        q.name,
        q.behind,
        show(behind),
        show(ahead)
    );
    if q.opposite_direction {
        s.push_str(" (it counts the other way there: fix its INCREMENT)");
    }
    match (q.status, q.repaired_next) {
        (Status::Repaired, Some(v)) => {
            let _ = write!(s, "\n  repaired: hands out {v} next");
        }
        _ => s.push_str("\n  (repair advances it; the cutover's write flip does too)"),
    }
    s
}
