//! Command-line flags, and how they combine with the config file and the environment.

use crate::config::BackfillConfig;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use switchyard_core::cli_common::SourceArgs;
use switchyard_core::config_layer::{ConfigError, ConfigErrors, Layers};

/// Copies the existing rows of the old database into the new one in primary-key chunks,
/// checksums every chunk on both sides and repairs what differs; parallel, resumable
/// (state in `_switchyard.backfill_chunks` on new), throttled, and safe while the proxy
/// is dual-writing.
///
/// Settings can also come from a TOML file (--config; the keys below `[backfill]`) and
/// from SWITCHYARD_* environment variables (SWITCHYARD_OLD, SWITCHYARD_BACKFILL__JOBS,
/// ...); flags win over the environment, which wins over the file.
///
/// Exit status: 0 every chunk copied and verified equal; 1 finished, but something needs
/// attention (chunks failed or left unverified, tables without a primary key refused);
/// 2 error (bad settings, a database unreachable, the plan impossible).
#[derive(Debug, Parser)]
#[command(
    name = "switchyard-backfill",
    version = crate::failpoint::VERSION,
    mut_arg("old", |a| a.help(
        "URL of the old database (the source): postgres://user:password@host:port/dbname"
    )),
    mut_arg("new", |a| a.help(
        "URL of the new database (the target; it also holds the chunk table)."
    )),
)]
pub struct Cli {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Tables to copy, comma-separated (schema.table or table for public.table)
    /// [default: every user table of the old database]
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Tables to leave out, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude: Option<Vec<String>>,
    /// Chunks copied at once by this process [default: 4]
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Threads relaying the rows (1: all jobs on one thread, best when the databases
    /// share this machine) [default: 1]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Rows per chunk when a table is first planned [default: 50000]
    #[arg(long)]
    pub chunk_rows: Option<u64>,
    /// Whether the proxy may be dual-writing meanwhile: `on` always loads through the
    /// conflict-safe path; `off` copies straight into chunks whose target range is empty
    /// [default: on]
    #[arg(long, value_enum)]
    pub dual_writes: Option<OnOff>,
    /// Rows per second for this process, 0 for no limit [default: 0]
    #[arg(long)]
    pub max_rows_per_sec: Option<u64>,
    /// Slow down while the probe query on old takes longer than this many milliseconds,
    /// 0 to turn the brake off [default: 200]
    #[arg(long)]
    pub brake_latency_ms: Option<u64>,
    /// statement_timeout on old in milliseconds, 0 for none [default: 600000]
    #[arg(long)]
    pub source_statement_timeout_ms: Option<u64>,
    /// Seconds a claimed chunk is leased (renewed while it is worked on) [default: 60]
    #[arg(long)]
    pub lease_secs: Option<u64>,
    /// Attempts per chunk before it is left failed [default: 5]
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// Drop non-key indexes and constraints on new before loading, rebuild them after.
    #[arg(long)]
    pub defer_indexes: bool,
    /// Bulk mode, for tables still empty on new: drop the primary key and every other
    /// index too, COPY the chunks bare, rebuild the indexes once, then verify every chunk
    /// (see docs/backfill.md, "Bulk mode"). Needs `--dual-writes off`; `--bulk` alone
    /// means `on` [default: on with --dual-writes off]
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "on")]
    pub bulk: Option<OnOff>,
    /// Bulk mode: read each table on old in one sequential scan (one snapshot, through
    /// old's small ring of buffers) instead of key range by key range. Less work for old
    /// and its buffer pool stays as it was; but old's vacuum horizon is held while a
    /// table is read, the scan is not bounded by --source-statement-timeout-ms, and a
    /// run stopped during a table's scan copies that table again from the start (see
    /// docs/backfill.md, "Scanning old") [default: off]
    #[arg(long)]
    pub scan_old: bool,
    /// How foreign keys on new are respected: `order` (referenced tables first) or
    /// `replica` (no load order, for tables in reference cycles: the loading sessions do
    /// not check foreign keys) [default: order]
    #[arg(long, value_enum)]
    pub fk_mode: Option<FkModeArg>,
    /// Let new's own triggers and foreign-key checks and actions fire while loading. By
    /// default the loading sessions run with session_replication_role = replica, so
    /// they do not fire (what old's triggers did arrives with old's rows; firing new's
    /// copies again would do it twice); that needs a superuser, the managed service's
    /// admin role, or `GRANT SET ON PARAMETER session_replication_role` (PostgreSQL 15+)
    /// on new. For triggers only new has that must act on the loaded rows, or a role
    /// without that right loading a database without triggers.
    #[arg(long)]
    pub fire_new_triggers: bool,
    /// Seconds between progress lines when stderr is not a terminal [default: 10]
    #[arg(long)]
    pub progress_interval_secs: Option<u64>,
    /// maintenance_work_mem in MiB for the sessions rebuilding indexes and keys on new
    /// (up to --jobs at once, each may use this much), used only when above the
    /// server's; 0 keeps the server's [default: 1024]
    #[arg(long)]
    pub rebuild_memory_mb: Option<u64>,
    /// Copy tables without a primary key even while the proxy may be dual-writing them,
    /// holding LOCK TABLE ... IN SHARE MODE on old for each one's copy and verification:
    /// writers to that table wait meanwhile (reads go on). Without it such tables are
    /// refused (exit 1) and everything else is copied.
    #[arg(long)]
    pub lock_keyless: bool,
    /// Where new's schema comes from: `existing` (made beforehand, e.g. with
    /// `pg_dump --schema-only | psql`) or `copy` (the backfill copies old's with
    /// pg_dump/pg_restore: tables, sequences, types, functions and views before the
    /// load, indexes and constraints built after it; refused when new already holds a
    /// different schema) [default: existing]
    #[arg(long, value_enum)]
    pub schema: Option<SchemaArg>,
    /// Copy old's schema into new (as `--schema copy` does, refusing a new database that
    /// holds another schema) and stop, copying no rows: the step before the proxy starts
    /// dual-writing, which needs the schema on new. The backfill then runs with
    /// `--schema copy`, finds it and builds the indexes after the load.
    #[arg(long, conflicts_with_all = ["dry_run", "pause", "resume"])]
    pub schema_only: bool,
    /// Directory holding pg_dump and pg_restore for `--schema copy` [default: the PATH]
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
    /// Print the plan (tables, key types, chunks) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Pause every running backfill on this pair (through the control row) and exit.
    #[arg(long, conflicts_with_all = ["resume", "dry_run"])]
    pub pause: bool,
    /// Resume paused backfills and exit.
    #[arg(long, conflicts_with = "dry_run")]
    pub resume: bool,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Also write the run's figures in Prometheus text format to this file.
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `--fk-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FkModeArg {
    Order,
    Replica,
}

/// `--schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaArg {
    Existing,
    Copy,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// A table per run for people.
    #[default]
    Human,
    /// One JSON document on stdout.
    Json,
}

impl Cli {
    fn layers<I>(&self, env: I) -> Layers
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut layers = self.source.layers(env);
        if let Some(v) = &self.tables {
            layers = layers.flag("backfill.tables", v.clone());
        }
        if let Some(v) = &self.exclude {
            layers = layers.flag("backfill.exclude", v.clone());
        }
        macro_rules! flag {
            ($field:ident) => {
                if let Some(v) = self.$field {
                    layers = layers.flag(concat!("backfill.", stringify!($field)), v as i64);
                }
            };
        }
        flag!(jobs);
        flag!(threads);
        flag!(chunk_rows);
        flag!(max_rows_per_sec);
        flag!(brake_latency_ms);
        flag!(source_statement_timeout_ms);
        flag!(lease_secs);
        flag!(max_attempts);
        flag!(progress_interval_secs);
        flag!(rebuild_memory_mb);
        if let Some(v) = self.dual_writes {
            layers = layers.flag("backfill.dual_writes", v == OnOff::On);
        }
        if self.defer_indexes {
            layers = layers.flag("backfill.defer_indexes", true);
        }
        if let Some(v) = self.bulk {
            layers = layers.flag("backfill.bulk", v == OnOff::On);
        }
        if self.scan_old {
            layers = layers.flag("backfill.scan_old", true);
        }
        if self.fire_new_triggers {
            layers = layers.flag("backfill.fire_new_triggers", true);
        }
        if self.lock_keyless {
            layers = layers.flag("backfill.lock_keyless", true);
        }
        if let Some(v) = self.schema {
            let text = match v {
                SchemaArg::Existing => "existing",
                SchemaArg::Copy => "copy",
            };
            layers = layers.flag("backfill.schema", text);
        }
        if let Some(dir) = &self.pg_bin {
            layers = layers.flag("backfill.pg_bin", dir.to_string_lossy().into_owned());
        }
        if let Some(v) = self.fk_mode {
            let text = match v {
                FkModeArg::Order => "order",
                FkModeArg::Replica => "replica",
            };
            layers = layers.flag("backfill.fk_mode", text);
        }
        layers
    }

    /// File, environment (injected for tests) and flags merged into a checked config.
    pub fn load<I>(&self, env: I) -> Result<(BackfillConfig, Vec<ConfigError>), ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        self.layers(env).build_with_warnings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FkMode;

    fn cli(list: &[&str]) -> Cli {
        Cli::try_parse_from(
            ["switchyard-backfill"]
                .into_iter()
                .chain(list.iter().copied()),
        )
        .expect("valid flags")
    }

    #[test]
    fn flags_alone_are_enough() {
        let (cfg, _) = cli(&[
            "--old",
            "postgres://u@h/db",
            "--new",
            "postgres://u@h2/db",
            "--tables",
            "a,app.b",
            "--jobs",
            "3",
            "--threads",
            "2",
            "--dual-writes",
            "off",
            "--fk-mode",
            "replica",
            "--defer-indexes",
            "--bulk",
        ])
        .load(Vec::new())
        .expect("valid");
        assert_eq!(cfg.backfill.tables, vec!["a", "app.b"]);
        assert_eq!(cfg.backfill.jobs, 3);
        assert_eq!(cfg.backfill.threads, 2);
        assert!(!cfg.backfill.dual_writes);
        assert!(cfg.backfill.defer_indexes);
        assert_eq!(cfg.backfill.bulk, Some(true));
        assert_eq!(cfg.backfill.fk_mode, FkMode::Replica);
        assert_eq!(cfg.backfill.chunk_rows, 50_000);
        let (defaults, _) = cli(&["--old", "postgres://u@h/db", "--new", "postgres://u@h2/db"])
            .load(Vec::new())
            .expect("valid");
        assert_eq!(defaults.backfill.threads, 1, "one relay thread by default");
        assert_eq!(defaults.backfill.rebuild_memory_mb, 1024, "pgcopydb's 1 GB");
        assert!(
            !defaults.backfill.bulk_mode(),
            "never bulk with dual writes on"
        );
    }

    #[test]
    fn bulk_mode_follows_dual_writes_unless_set() {
        let urls = ["--old", "postgres://u@h/db", "--new", "postgres://u@h2/db"];
        let mode = |extra: &[&str]| {
            let flags: Vec<&str> = urls.iter().chain(extra).copied().collect();
            let (cfg, _) = cli(&flags).load(Vec::new()).expect("valid");
            (cfg.backfill.bulk, cfg.backfill.bulk_mode())
        };
        assert_eq!(mode(&["--dual-writes", "off"]), (None, true));
        assert_eq!(
            mode(&["--dual-writes", "off", "--bulk", "off"]),
            (Some(false), false)
        );
        assert_eq!(
            mode(&["--dual-writes", "off", "--bulk"]),
            (Some(true), true)
        );
        assert_eq!(mode(&["--bulk", "on"]), (Some(true), false));
        assert_eq!(mode(&[]), (None, false));
        let (cfg, _) = cli(&urls)
            .load(vec![("SWITCHYARD_BACKFILL__BULK".into(), "false".into())])
            .expect("valid");
        assert_eq!(cfg.backfill.bulk, Some(false));
    }

    #[test]
    fn flags_win_over_env_and_bad_values_are_all_reported() {
        let (cfg, _) = cli(&[
            "--old",
            "postgres://u@h/db",
            "--new",
            "postgres://u@h2/db",
            "--chunk-rows",
            "7",
        ])
        .load(vec![
            ("SWITCHYARD_BACKFILL__CHUNK_ROWS".into(), "9".into()),
            ("SWITCHYARD_BACKFILL__MAX_ROWS_PER_SEC".into(), "100".into()),
        ])
        .expect("valid");
        assert_eq!(cfg.backfill.chunk_rows, 7);
        assert_eq!(cfg.backfill.max_rows_per_sec, 100);

        let err = cli(&[
            "--old",
            "mysql://x",
            "--new",
            "postgres://u@h/db",
            "--jobs",
            "0",
            "--threads",
            "0",
            "--rebuild-memory-mb",
            "4000000",
        ])
        .load(Vec::new())
        .expect_err("invalid");
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "old",
                "backfill.threads",
                "backfill.jobs",
                "backfill.rebuild_memory_mb"
            ],
            "{err}"
        );
        assert!(err.to_string().contains("maintenance_work_mem"), "{err}");
    }

    #[test]
    fn loading_sessions_are_replica_unless_new_triggers_should_fire() {
        use switchyard_core::connect::WriteMode;
        let urls = ["--old", "postgres://u@h/db", "--new", "postgres://u@h2/db"];
        let load = |extra: &[&str]| {
            let flags: Vec<&str> = urls.iter().chain(extra).copied().collect();
            cli(&flags).load(Vec::new())
        };
        let (defaults, _) = load(&[]).expect("valid");
        assert_eq!(defaults.backfill.write_mode(), WriteMode::Replica);
        let (cfg, _) = load(&["--fire-new-triggers"]).expect("valid");
        assert_eq!(cfg.backfill.write_mode(), WriteMode::FireTriggers);
        let err = load(&["--fire-new-triggers", "--fk-mode", "replica"]).expect_err("invalid");
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["backfill.fire_new_triggers"], "{err}");
    }

    #[test]
    fn lock_keyless_comes_from_the_flag_or_the_environment() {
        let urls = ["--old", "postgres://u@h/db", "--new", "postgres://u@h2/db"];
        let (defaults, _) = cli(&urls).load(Vec::new()).expect("valid");
        assert!(!defaults.backfill.lock_keyless, "refusing is the default");
        let flags: Vec<&str> = urls.iter().copied().chain(["--lock-keyless"]).collect();
        let (cfg, _) = cli(&flags).load(Vec::new()).expect("valid");
        assert!(cfg.backfill.lock_keyless);
        let (cfg, _) = cli(&urls)
            .load(vec![(
                "SWITCHYARD_BACKFILL__LOCK_KEYLESS".into(),
                "true".into(),
            )])
            .expect("valid");
        assert!(cfg.backfill.lock_keyless);
    }

    #[test]
    fn schema_is_existing_unless_copy_is_asked_for() {
        use crate::config::SchemaMode;
        let urls = ["--old", "postgres://u@h/db", "--new", "postgres://u@h2/db"];
        let (defaults, _) = cli(&urls).load(Vec::new()).expect("valid");
        assert_eq!(defaults.backfill.schema, SchemaMode::Existing);
        assert!(!defaults.backfill.defers_indexes());
        let flags: Vec<&str> = urls
            .iter()
            .copied()
            .chain(["--schema", "copy", "--pg-bin", "/opt/pg/bin"])
            .collect();
        let (cfg, _) = cli(&flags).load(Vec::new()).expect("valid");
        assert_eq!(cfg.backfill.schema, SchemaMode::Copy);
        assert!(cfg.backfill.defers_indexes(), "indexes after the load");
        assert_eq!(
            cfg.backfill.pg_bin.as_deref(),
            Some(std::path::Path::new("/opt/pg/bin"))
        );
        let (cfg, _) = cli(&urls)
            .load(vec![("SWITCHYARD_BACKFILL__SCHEMA".into(), "copy".into())])
            .expect("valid");
        assert_eq!(cfg.backfill.schema, SchemaMode::Copy);
        let err = cli(&urls)
            .load(vec![("SWITCHYARD_BACKFILL__SCHEMA".into(), "clone".into())])
            .expect_err("invalid");
        assert!(err.to_string().contains("schema"), "{err}");
    }

    #[test]
    fn pause_and_dry_run_exclude_each_other() {
        assert!(Cli::try_parse_from(["switchyard-backfill", "--pause", "--dry-run"]).is_err());
        assert!(
            Cli::try_parse_from(["switchyard-backfill", "--schema-only", "--dry-run"]).is_err()
        );
    }
}
