//! Capture: every row change the primary makes reaches the secondary as a row image, whatever
//! made it (the statement, a trigger, a cascade, a function, a procedure, MERGE, COPY).
//!
//! Switchyard installs statement-level `AFTER` triggers with transition tables on every user
//! table of the primary (`install`). Each statement's changes land as JSON arrays of row
//! images in one of two tables of the `_switchyard` schema:
//!
//! - `capture_lockstep` (unlogged) when the session set `switchyard.capture = lockstep` for the
//!   transaction: the proxy does that for the transactions it mirrors in lockstep, and drains
//!   their rows in the same transaction before PREPARE on the secondary. A row there never
//!   outlives its transaction, so it needs no WAL.
//! - `capture_log` (logged) for everything else: writes that bypass the proxy, and writes the
//!   proxy passed through without claiming their transaction. It is the durable change log
//!   the proxy and the reconciler drain (`log`).
//!
//! Sessions that apply changes (`switchyard.apply = on`) are not captured.

pub mod apply;
pub mod event;
pub mod install;
pub mod log;
mod log_truncate;
mod schema;
pub mod uninstall;

pub use event::{Event, Op};

/// Session setting that routes a transaction's changes to the lockstep table.
pub const CAPTURE_SETTING: &str = "switchyard.capture";
/// What the proxy sends to claim a transaction for lockstep capture.
pub const CLAIM_SQL: &str = "SET LOCAL switchyard.capture = lockstep";
/// Session setting of Switchyard's own writers: their changes are not captured.
pub const APPLY_SETTING: &str = "switchyard.apply";
/// Startup options of every session that writes into a database on Switchyard's behalf:
/// the target's own user triggers and foreign-key actions stay quiet (their effects arrive
/// captured), and so do the capture triggers.
pub const WRITER_OPTIONS: &str = "-c session_replication_role=replica -c switchyard.apply=on";

/// Events per page of a drain: bounds what the proxy holds of one transaction at a time.
pub const DRAIN_PAGE: i32 = 32;

/// The drain of one page of the current transaction's lockstep rows, in capture order.
pub const DRAIN_SQL: &str =
    "SELECT xid::text, seq, relid, version, op, rows::text FROM _switchyard.drain(32)";

/// [`DRAIN_SQL`] for a session whose client encoding is not UTF8: the rows as base64 of
/// their UTF-8 text, so they reach the proxy whole whatever the session's encoding can
/// hold (a trigger may well write characters a LATIN1 client could not send).
pub const DRAIN_SQL_UTF8_BASE64: &str = "SELECT xid::text, seq, relid, version, op, \
            pg_catalog.encode(pg_catalog.convert_to(rows::text, 'UTF8'), 'base64') \
     FROM _switchyard.drain(32)";

/// Records a statement mirrored as text (DDL) at its place among the transaction's rows.
pub fn note_statement_sql(sql: &str) -> String {
    format!(
        "SELECT _switchyard.note_statement({}, pg_catalog.current_setting('search_path'))",
        crate::ident::quote_literal(sql)
    )
}

/// `statement` (on `_switchyard`'s tables) run as the capture's owner: in the client's
/// transaction the session may have set a role of its own (`SET ROLE`).
pub fn as_owner_sql(statement: &str) -> String {
    format!(
        "SELECT _switchyard.run_own({})",
        crate::ident::dollar_quoted(statement)
    )
}

/// Captures every row of `table` (a name as the session resolves it) after a DDL that
/// rewrote them with values the secondary would compute differently.
pub fn refill_sql(table: &str) -> String {
    format!(
        "SELECT _switchyard.refill({}::regclass)",
        crate::ident::quote_literal(table)
    )
}
