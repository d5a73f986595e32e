//! The backfill's configuration: the two database URLs (top-level keys, shared with the
//! proxy's and the reconciler's file) and its own settings under `[backfill]`.

use serde::Deserialize;
use std::time::Duration;
use switchyard_core::config_layer::{ConfigError, Origin, Validate};
use switchyard_core::connect::WriteMode;
use switchyard_core::ident::QualifiedName;

/// Everything the backfill reads at start. Top-level keys other than `old` and `new`
/// belong to the other binaries and are ignored here; `[backfill]` is checked strictly.
#[derive(Debug, Clone, Deserialize)]
pub struct BackfillConfig {
    /// URL of the old database (the source), e.g. `postgres://u:p@host:5432/db`.
    pub old: String,
    /// URL of the new database (the target; it holds the chunk table).
    pub new: String,
    #[serde(default)]
    pub backfill: BackfillSettings,
}

/// How foreign keys on the new database are respected while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FkMode {
    /// A table's chunks are claimed only once every table it references is done
    /// (tables in a reference cycle are loaded together).
    #[default]
    Order,
    /// No load order: every table's chunks are claimable at once, tables in reference
    /// cycles too. Sound because the loading sessions do not check foreign keys
    /// (`session_replication_role = replica`, the default; refused with
    /// `fire_new_triggers`).
    Replica,
}

/// Where new's schema comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SchemaMode {
    /// Made by the user before the backfill (e.g. `pg_dump --schema-only | psql`).
    #[default]
    Existing,
    /// Copied from old by the backfill with PostgreSQL's `pg_dump` and `pg_restore`
    /// (see [`crate::schema_copy`]).
    Copy,
}

/// `[backfill]`: what is copied and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSettings {
    /// Tables to copy (`schema.table`, or `table` for `public.table`); empty means every
    /// user table of the old database.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Tables left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Chunks copied at once by this process; each uses one connection to each database.
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// Rows per chunk (planned once per table; a resumed run keeps the first plan).
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u64,
    /// Whether the proxy may be dual-writing while the backfill runs. `true` (the safe
    /// default) always loads through the conflict-safe path; `false` lets a chunk whose
    /// target range is empty be loaded by a plain COPY (the fast path).
    #[serde(default = "default_true")]
    pub dual_writes: bool,
    /// Rows per second for this process (0: no limit). The control row can change it
    /// while running.
    #[serde(default)]
    pub max_rows_per_sec: u64,
    /// The adaptive brake slows the copy while the source's probe query takes longer
    /// than this (milliseconds; 0 turns the brake off).
    #[serde(default = "default_brake_latency_ms")]
    pub brake_latency_ms: u64,
    /// The probe query the brake times on the old database.
    #[serde(default = "default_brake_probe")]
    pub brake_probe: String,
    /// `statement_timeout` of the backfill's sessions on the old database (milliseconds;
    /// 0: none). A chunk that takes longer fails and is retried.
    #[serde(default = "default_source_statement_timeout_ms")]
    pub source_statement_timeout_ms: u64,
    /// Seconds a claimed chunk is leased; a worker renews its lease while it works, so a
    /// chunk whose lease ran out belongs to a worker that hung or vanished.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Attempts per chunk before it is left failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i32,
    /// Drop non-key indexes and constraints on new before loading; rebuild them after.
    #[serde(default)]
    pub defer_indexes: bool,
    /// Bulk mode (only with `dual_writes = false`, for a table that is empty on new when
    /// first loaded): the primary key and every other index are dropped too, chunks are
    /// COPYed bare, the indexes are rebuilt once, then every chunk is verified. Unset:
    /// on when `dual_writes = false` (see [`BackfillSettings::bulk_mode`]).
    #[serde(default)]
    pub bulk: Option<bool>,
    /// Bulk mode: a table whose chunks are all unclaimed is read from old in one
    /// sequential scan and its rows spread over `jobs` sessions on new, all chunks
    /// recorded copied at once (see docs/backfill.md, "Scanning old").
    #[serde(default)]
    pub scan_old: bool,
    /// How foreign keys on the new database are respected.
    #[serde(default)]
    pub fk_mode: FkMode,
    /// Let new's own triggers and foreign-key checks and actions fire on the loading
    /// sessions. Off (the default), they load with `session_replication_role = replica`:
    /// what old's triggers did arrives with old's rows, and firing new's copies of them
    /// again would do it twice (finding 9 of issue #20). For a new database whose
    /// triggers must act on the loaded rows (ones old does not have), or a role that may
    /// not set the parameter loading a database without triggers.
    #[serde(default)]
    pub fire_new_triggers: bool,
    /// Threads relaying the rows. 1 (the default) runs every job on one thread: measured
    /// fastest when the databases share the machine's cores (a thread per job spent more
    /// CPU on wake-ups than on the rows); raise it when this process runs on its own
    /// machine with many jobs.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seconds between progress log lines when stderr is not a terminal.
    #[serde(default = "default_progress_interval_secs")]
    pub progress_interval_secs: u64,
    /// `maintenance_work_mem` (MiB) of the sessions that rebuild indexes and keys on new,
    /// when the server's is lower (0: the server's setting). 1024 lets a key of about 10M
    /// rows sort in memory instead of spilling to disk, and is what pgcopydb sets.
    #[serde(default = "default_rebuild_memory_mb")]
    pub rebuild_memory_mb: u64,
    /// Tables without a primary key that old's change capture covers (the proxy may be
    /// dual-writing them) are copied under `LOCK TABLE ... IN SHARE MODE` on old, writers
    /// to the table waiting until its copy is committed and verified. Off, such tables are
    /// refused (see docs/backfill.md, "Tables without a primary key").
    #[serde(default)]
    pub lock_keyless: bool,
    /// Where new's schema comes from: `existing` (made by the user) or `copy` (old's,
    /// made by the backfill before the load, its indexes and constraints built after).
    #[serde(default)]
    pub schema: SchemaMode,
    /// Directory of `pg_dump` and `pg_restore` for `schema = "copy"`; unset: the PATH.
    #[serde(default)]
    pub pg_bin: Option<std::path::PathBuf>,
}

fn default_jobs() -> usize {
    4
}
fn default_threads() -> usize {
    1
}
fn default_chunk_rows() -> u64 {
    50_000
}
fn default_true() -> bool {
    true
}
fn default_brake_latency_ms() -> u64 {
    200
}
fn default_brake_probe() -> String {
    "SELECT 1".to_string()
}
fn default_source_statement_timeout_ms() -> u64 {
    600_000
}
fn default_lease_secs() -> u64 {
    60
}
fn default_max_attempts() -> i32 {
    5
}
fn default_progress_interval_secs() -> u64 {
    10
}
fn default_rebuild_memory_mb() -> u64 {
    1024
}
/// The largest `maintenance_work_mem` PostgreSQL accepts, in MiB (2^31 - 1 kB).
pub const MAX_REBUILD_MEMORY_MB: u64 = (i32::MAX as u64) / 1024;

impl Default for BackfillSettings {
    fn default() -> Self {
        BackfillSettings {
            tables: Vec::new(),
            exclude: Vec::new(),
            jobs: default_jobs(),
            threads: default_threads(),
            chunk_rows: default_chunk_rows(),
            dual_writes: true,
            max_rows_per_sec: 0,
            brake_latency_ms: default_brake_latency_ms(),
            brake_probe: default_brake_probe(),
            source_statement_timeout_ms: default_source_statement_timeout_ms(),
            lease_secs: default_lease_secs(),
            max_attempts: default_max_attempts(),
            defer_indexes: false,
            bulk: None,
            scan_old: false,
            fk_mode: FkMode::Order,
            fire_new_triggers: false,
            progress_interval_secs: default_progress_interval_secs(),
            rebuild_memory_mb: default_rebuild_memory_mb(),
            lock_keyless: false,
            schema: SchemaMode::Existing,
            pg_bin: None,
        }
    }
}

impl BackfillSettings {
    /// Whether tables still empty on new are bulk-loaded: as set, else whenever dual writes
    /// are declared off (a first load: nothing else writes to new, and bulk mode is the
    /// fastest way in). Never with dual writes on.
    pub fn bulk_mode(&self) -> bool {
        !self.dual_writes && self.bulk.unwrap_or(true)
    }

    /// Whether non-key indexes and constraints are built after the load: asked for, or
    /// the schema is copied (its indexes are built once the rows are in, as pgcopydb's
    /// clone does, by the same deferral).
    pub fn defers_indexes(&self) -> bool {
        self.defer_indexes || self.schema == SchemaMode::Copy
    }

    /// How the loading sessions on new write (see `fire_new_triggers`).
    pub fn write_mode(&self) -> WriteMode {
        if self.fire_new_triggers {
            WriteMode::FireTriggers
        } else {
            WriteMode::Replica
        }
    }
}

impl BackfillConfig {
    /// The `tables` setting parsed (validated already, so parsing succeeds).
    pub fn table_names(&self) -> Vec<QualifiedName> {
        parse_all(&self.backfill.tables)
    }

    /// The `exclude` setting parsed.
    pub fn excluded(&self) -> Vec<QualifiedName> {
        parse_all(&self.backfill.exclude)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.backfill.lease_secs)
    }
}

fn parse_all(names: &[String]) -> Vec<QualifiedName> {
    names
        .iter()
        .filter_map(|t| QualifiedName::parse(t).ok())
        .collect()
}

impl Validate for BackfillConfig {
    fn validate(&self, errors: &mut Vec<ConfigError>, origin_of: &dyn Fn(&str) -> Origin) {
        switchyard_core::config_layer::validate_urls(&self.old, &self.new, errors, origin_of);
        let mut bad =
            |key: &str, message: String| errors.push(ConfigError::at(key, origin_of, message));
        let s = &self.backfill;
        for (key, list) in [
            ("backfill.tables", &s.tables),
            ("backfill.exclude", &s.exclude),
        ] {
            for t in list {
                if let Err(e) = QualifiedName::parse(t) {
                    bad(key, e.to_string());
                }
            }
        }
        if s.threads == 0 || s.threads > 64 {
            bad("backfill.threads", "must be between 1 and 64".into());
        }
        if s.jobs == 0 || s.jobs > 64 {
            bad("backfill.jobs", "must be between 1 and 64".into());
        }
        if s.chunk_rows == 0 {
            bad("backfill.chunk_rows", "must be at least 1".into());
        }
        if s.lease_secs < 3 {
            bad("backfill.lease_secs", "must be at least 3".into());
        }
        if s.max_attempts < 1 {
            bad("backfill.max_attempts", "must be at least 1".into());
        }
        if s.rebuild_memory_mb > MAX_REBUILD_MEMORY_MB {
            bad(
                "backfill.rebuild_memory_mb",
                format!("must be at most {MAX_REBUILD_MEMORY_MB} (PostgreSQL's limit for maintenance_work_mem)"),
            );
        }
        if s.fire_new_triggers && s.fk_mode == FkMode::Replica {
            bad(
                "backfill.fire_new_triggers",
                "cannot be combined with fk_mode = replica, which loads without a load order \
                 because foreign keys are not checked while loading"
                    .into(),
            );
        }
        if s.progress_interval_secs == 0 {
            bad(
                "backfill.progress_interval_secs",
                "must be at least 1".into(),
            );
        }
    }
}
