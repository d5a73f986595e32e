//! Shared end-to-end test harness: throwaway PostgreSQL clusters, a real Kafka-protocol broker, free ports and polling helpers.
//!
//! Everything here starts real processes on 127.0.0.1 and cleans up on drop (also when a test
//! panics). `.ci/setup` installs what it needs. Environment:
//! - `SWITCHYARD_KEEP_CLUSTERS=1`: keep the temporary directories (data, logs) for debugging;
//!   their paths are printed to stderr on drop.
//! - `SWITCHYARD_PG_BIN`: PostgreSQL server binaries (default `/usr/lib/postgresql/15/bin`).
//! - `SWITCHYARD_PG_TMPDIR`: where cluster directories go (default `/dev/shm`, see
//!   [`pg::clusters_parent_dir`]).
//! - `SWITCHYARD_TANSU_BIN`, `SWITCHYARD_CACHE`: where the tansu broker is (see
//!   [`broker::tansu_bin`]).

pub mod backfill;
pub mod broker;
pub mod browser;
pub mod clients;
pub mod cutover;
pub mod driver_suite;
pub mod http;
pub mod logs;
pub mod mirror;
pub mod pg;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod reap;
pub mod reconciler;
pub mod shadow;
pub mod tls_certs;
pub mod wait;
pub mod wire;

pub use broker::Broker;
pub use pg::{Auth, PgCluster, PgClusterBuilder};
pub use ports::{free_port, refusing_port};

/// True when `SWITCHYARD_KEEP_CLUSTERS=1` (or `true`): temporary directories are kept on drop.
pub fn keep_dirs() -> bool {
    matches!(
        std::env::var("SWITCHYARD_KEEP_CLUSTERS").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}
