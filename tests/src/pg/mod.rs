//! Throwaway PostgreSQL clusters (version 15 by default) for end-to-end tests.
//!
//! `initdb` runs once per machine into a cached template ([`template`]); each cluster copies
//! it into a fresh temporary directory, writes its own configuration ([`config`]) and starts
//! with `pg_ctl`. As root, every server command runs as the `postgres` user via `runuser`.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use switchyard_tests::pg::{Auth, PgCluster};
//! let pg = PgCluster::builder().auth(Auth::Scram).max_prepared_transactions(5).start()?;
//! pg.psql("postgres", "CREATE TABLE t (id int)")?;
//! # Ok(()) }
//! ```

mod bin;
mod client;
mod cluster;
pub mod config;
mod lifecycle;
pub mod template;

pub use bin::bin_dir;
pub use client::quote_ident;
pub use cluster::{clusters_parent_dir, PgCluster, PgClusterBuilder};
pub use config::Auth;
