//! Command-line flags, and how they combine with the config file and the environment.

use crate::config::ReconcilerConfig;
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use switchyard_core::cli_common::{RetryLogArgs, SourceArgs};
use switchyard_core::config_layer::{ConfigError, ConfigErrors, Layers};

/// Replays the retry log, resolves in-doubt two-phase commits, verifies tables and repairs
/// drift between the old and the new database.
///
/// Settings can also come from a TOML file (--config; the keys below `[reconciler]`) and
/// from SWITCHYARD_* environment variables (SWITCHYARD_OLD, SWITCHYARD_RECONCILER__JOBS,
/// ...); flags win over the environment, which wins over the file.
#[derive(Debug, Parser)]
#[command(name = "switchyard-reconciler", version = crate::failpoint::VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compare tables on old and new: exit 0 when equal, 1 on differences, 2 on error.
    Verify(VerifyArgs),
    /// Find differing rows like verify, then fix them from the source of truth. Writes
    /// with session_replication_role = replica (the target's triggers do not fire): the
    /// role needs a superuser, the managed service's admin role, or on PostgreSQL 15+
    /// GRANT SET ON PARAMETER session_replication_role on the target.
    Repair(RepairArgs),
    /// Drain the retry logs and change logs: re-sync queued keys from old to new, apply
    /// queued statements; and from new to old where new has them (the cutover's
    /// writes-new phase). Writes with session_replication_role = replica, as repair does.
    Replay(ReplayArgs),
    /// Finish prepared transactions a proxy left behind: on new as old's commit status
    /// says, and on old (writes-new phase) as new's says.
    Recover(RecoverArgs),
}

/// Flags of replay.
#[derive(Debug, Clone, ClapArgs)]
#[command(mut_arg("retry_log", |a| a.help(
    "Where the records are: \"embedded\" (the primary's table: old's, and new's once the \
     cutover moved the writes there) or \"kafka\" (the topic, as a consumer group, and the \
     embedded tables too, where statement records and fallbacks go) [default: embedded]"
)))]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Keep running and replay new records as they arrive.
    #[arg(long)]
    pub follow: bool,
    /// Records claimed per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: i64,
    /// Attempts before a record is dead-lettered.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: i32,
    /// Also write the run's figures as Prometheus text to this file (backlog, records
    /// applied / failed / dead-lettered, oldest record age, records per second).
    #[arg(long)]
    pub metrics_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Show progress on stderr even when it is not a terminal (a line every 10 s) or the
    /// output is JSON; without it, progress is drawn only on a terminal, for --format
    /// human.
    #[arg(long)]
    pub progress: bool,
    #[command(flatten)]
    pub retry_log: RetryLogArgs,
    /// Consumer group shared by the reconcilers [default: switchyard-reconciler]
    #[arg(long)]
    pub kafka_group: Option<String>,
    /// Static membership in the group (`group.instance.id`): restarted under the same id,
    /// a reconciler takes its partitions back at once
    #[arg(long)]
    pub kafka_instance_id: Option<String>,
}

impl ReplayArgs {
    /// File, environment (injected for tests) and flags merged into a checked config.
    pub fn load<I>(&self, env: I) -> Result<(ReconcilerConfig, Vec<ConfigError>), ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut layers = self.retry_log.apply(self.common.layers(env));
        layers = layers.flags(&[
            ("retry_log.kafka.group", &self.kafka_group),
            ("retry_log.kafka.instance_id", &self.kafka_instance_id),
        ]);
        layers.build_with_warnings()
    }
}

/// Flags of recover.
#[derive(Debug, Clone, ClapArgs)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Leave prepared transactions younger than this alone (a live proxy is finishing them).
    #[arg(long, default_value_t = 2.0)]
    pub min_age_secs: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// Output format of verify and repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// A summary per table for people.
    #[default]
    Human,
    /// One JSON document on stdout.
    Json,
}

/// `--row-hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RowHashArg {
    Record,
    Text,
}

/// Which database is right when they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum SourceSide {
    #[default]
    Old,
    New,
}

/// Flags every subcommand takes.
#[derive(Debug, Clone, ClapArgs)]
pub struct CommonArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Tables to handle, comma-separated (schema.table or table for public.table)
    /// [default: every user table on either side]
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
}

/// Flags of verify (and repair).
#[derive(Debug, Clone, ClapArgs)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Ranges checked at once (connections per database) [default: 4]
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Rows per range in the first pass [default: 10000]
    #[arg(long)]
    pub chunk_rows: Option<u64>,
    /// Compare row by row at or below this many rows per range [default: 10000]
    #[arg(long)]
    pub leaf_rows: Option<u64>,
    /// Pieces a mismatching range is cut into [default: 16]
    #[arg(long)]
    pub bisection_factor: Option<u64>,
    /// Differing keys listed per table; more are counted only [default: 10000]
    #[arg(long)]
    pub max_keys: Option<usize>,
    /// Times a differing row is re-read before it is reported [default: 2]
    #[arg(long)]
    pub rechecks: Option<u32>,
    /// Milliseconds to wait before each re-read [default: 200]
    #[arg(long)]
    pub recheck_delay_ms: Option<u64>,
    /// Row hashing: `record` (PostgreSQL 14+) or `text` (any version) [default: the
    /// fastest both servers support]. For tests and comparisons.
    #[arg(long, value_enum, hide = true)]
    pub row_hash: Option<RowHashArg>,
    /// Show progress on stderr even when it is not a terminal (a line every 10 s) or the
    /// output is JSON; without it, progress is drawn only on a terminal, for --format
    /// human.
    #[arg(long)]
    pub progress: bool,
    /// Leave sequences out (they are compared by default: one behind on the side that
    /// takes writes next is a difference).
    #[arg(long)]
    pub skip_sequences: bool,
    /// Also write the results in Prometheus text format to this file (for node_exporter's
    /// textfile collector).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
}

/// Flags of repair.
#[derive(Debug, Clone, ClapArgs)]
pub struct RepairArgs {
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// The database whose rows are right; the other one is changed.
    #[arg(long, value_enum, default_value_t = SourceSide::Old)]
    pub source: SourceSide,
    /// List what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl CommonArgs {
    fn layers<I>(&self, env: I) -> Layers
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut layers = self.source.layers(env);
        if let Some(v) = &self.tables {
            layers = layers.flag("reconciler.tables", v.clone());
        }
        layers
    }

    /// File, environment (injected for tests) and these flags merged into a checked config.
    pub fn load<I>(&self, env: I) -> Result<(ReconcilerConfig, Vec<ConfigError>), ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        self.layers(env).build_with_warnings()
    }
}

impl VerifyArgs {
    /// File, environment (injected for tests) and flags merged into a checked config.
    pub fn load<I>(&self, env: I) -> Result<(ReconcilerConfig, Vec<ConfigError>), ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut layers = self.common.layers(env);
        macro_rules! flag {
            ($field:ident) => {
                if let Some(v) = self.$field {
                    layers = layers.flag(concat!("reconciler.", stringify!($field)), v as i64);
                }
            };
        }
        flag!(jobs);
        flag!(chunk_rows);
        flag!(leaf_rows);
        flag!(bisection_factor);
        flag!(max_keys);
        flag!(rechecks);
        flag!(recheck_delay_ms);
        layers.build_with_warnings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify_args(list: &[&str]) -> VerifyArgs {
        let cli = Cli::try_parse_from(
            ["switchyard-reconciler", "verify"]
                .into_iter()
                .chain(list.iter().copied()),
        )
        .expect("valid flags");
        match cli.command {
            Command::Verify(v) => v,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn flags_alone_are_enough() {
        let (cfg, _) = verify_args(&[
            "--old",
            "postgres://u@h/db",
            "--new",
            "postgres://u@h2/db",
            "--tables",
            "a,app.b",
            "--jobs",
            "3",
        ])
        .load(Vec::new())
        .expect("valid");
        assert_eq!(cfg.reconciler.tables, vec!["a", "app.b"]);
        assert_eq!(cfg.reconciler.jobs, 3);
        assert_eq!(cfg.reconciler.leaf_rows, 10_000);
    }

    #[test]
    fn flags_win_over_env_and_bad_values_are_all_reported() {
        let (cfg, warnings) = verify_args(&[
            "--old",
            "postgres://u@h/db",
            "--new",
            "postgres://u@h2/db",
            "--jobs",
            "2",
        ])
        .load(vec![
            ("SWITCHYARD_RECONCILER__JOBS".into(), "9".into()),
            ("SWITCHYARD_RECONCILER__MAX_KEYS".into(), "5".into()),
            ("SWITCHYARD_LISTEN".into(), "127.0.0.1:1".into()),
        ])
        .expect("valid");
        assert_eq!(cfg.reconciler.jobs, 2);
        assert_eq!(cfg.reconciler.max_keys, 5);
        assert!(warnings.is_empty(), "{warnings:?}");

        let err = verify_args(&[
            "--old",
            "mysql://x",
            "--new",
            "postgres://u@h/db",
            "--jobs",
            "0",
        ])
        .load(Vec::new())
        .expect_err("invalid");
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["old", "reconciler.jobs"], "{err}");
    }

    #[test]
    fn config_file_is_read_and_flags_win() {
        let path = std::env::temp_dir().join(format!(
            "switchyard-reconciler-test-{}.toml",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "old = \"postgres://u@file-old/db\"\nnew = \"postgres://u@file-new/db\"\n\
             listen = \"127.0.0.1:6432\"\n[reconciler]\njobs = 7\ntables = [\"a\", \"b\"]\n",
        )
        .expect("write temp config");
        let path_arg = path.to_str().expect("utf-8 path").to_string();
        let loaded = verify_args(&["--config", &path_arg, "--tables", "c"]).load(Vec::new());
        let bad = {
            std::fs::write(&path, "old = \"postgres://u@h/db\"\nnew = \"postgres://u@h/db\"\n[reconciler]\njbos = 1\n")
                .expect("write temp config");
            verify_args(&["--config", &path_arg]).load(Vec::new())
        };
        let _ = std::fs::remove_file(&path);
        let (cfg, _) = loaded.expect("valid");
        assert_eq!(cfg.old, "postgres://u@file-old/db");
        assert_eq!(cfg.reconciler.jobs, 7);
        assert_eq!(cfg.reconciler.tables, vec!["c"]);
        let err = bad.expect_err("unknown key in [reconciler]");
        assert!(err.to_string().contains("jbos"), "{err}");
    }

    #[test]
    fn repair_takes_source_and_dry_run() {
        let cli = Cli::try_parse_from([
            "switchyard-reconciler",
            "repair",
            "--old",
            "postgres://u@h/db",
            "--new",
            "postgres://u@h/db",
            "--source",
            "new",
            "--dry-run",
            "--format",
            "json",
        ])
        .expect("valid");
        let Command::Repair(r) = cli.command else {
            panic!("not repair")
        };
        assert_eq!(r.source, SourceSide::New);
        assert!(r.dry_run);
        assert_eq!(r.verify.format, Format::Json);
    }
}
