//! Shared pieces of Switchyard that more than one binary needs.
//!
//! - [`db`]: which of the two databases.
//! - [`catalog`]: what a table looks like (columns, types, primary key).
//! - [`checksum`]: order-independent checksums of primary-key ranges, computed in the
//!   database, and the split points that cut a table into ranges.
//! - [`diff`]: compares a table on two servers: range checksums, bisection, row
//!   comparison and the re-check that keeps live writes from raising false alarms.
//! - [`resync`]: copies the current image of given rows from a source to a target under
//!   row locks (repair, retry-log replay).
//! - [`session`]: settings pinned on every connection whose text output is compared.
//! - [`connect`]: the tools' connections, and [`connect::Writer`], the one kind of session
//!   they write rows into a target database through (its triggers and foreign-key
//!   actions do not fire; capture triggers skip it).
//! - [`capture`]: change capture installed on the primary (triggers, event triggers, the
//!   lockstep table and change log), its events, their application on the secondary.
//! - [`retry`], [`retry_kafka`]: the retry log (embedded table, Kafka topic); [`intents`]:
//!   the lockstep mode's intents; [`recover`]: prepared transactions left in doubt.
//! - [`cutover`]: phases, control tables, pre-flight checks, the agreed flip, sequences.
//! - [`multiset`], [`multiset_diff`], [`multiset_repair`]: tables without a primary key.
//! - [`handshake`]: the startup and authentication of every session opened by hand (the
//!   proxy's, [`copy_conn`]'s), on any stream.
//! - [`copy_conn`], [`copy_hash`]: COPY reads in large buffers and their checksums.
//! - [`tls`], [`tls_stream`], [`dsn`], [`config_layer`]: TLS to the databases, URLs,
//!   settings from file, environment and flags.
//! - [`progress`]: the tools' progress on stderr (drawn on a terminal, lines when asked).

pub mod capture;
pub mod catalog;
pub mod checksum;
pub mod cli_common;
pub mod config_layer;
pub mod connect;
pub mod copy_conn;
pub mod copy_hash;
pub mod cutover;
pub mod db;
pub mod diff;
pub mod direction;
pub mod dsn;
pub mod handshake;
pub mod ident;
pub mod intents;
pub mod key;
pub mod multiset;
pub mod multiset_diff;
pub mod multiset_repair;
pub mod plain_or_tls;
pub mod progress;
mod rcvlowat;
pub mod recover;
pub mod resync;
pub mod retry;
pub mod retry_kafka;
pub mod session;
pub mod tls;
pub mod tls_stream;
mod tls_verify;
pub mod tool;

/// A binary's `--version` text: its crate's version, marked " (failpoints)" when that crate
/// was built with its `failpoints` feature, which the test harness reads to refuse a binary
/// on which a failpoint could never fire. A macro, so that the version and the feature are
/// those of the crate that uses it.
#[macro_export]
macro_rules! version_with_failpoints {
    () => {
        if cfg!(feature = "failpoints") {
            concat!(env!("CARGO_PKG_VERSION"), " (failpoints)")
        } else {
            env!("CARGO_PKG_VERSION")
        }
    };
}
