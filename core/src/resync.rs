//! Re-syncs rows, by primary key, from a source server to a target server: the target
//! ends up with the source's current image of each row, or without the row when the
//! source has none. Used by `repair` and by retry-log replay.
//!
//! Per batch of keys, in one transaction on each side:
//! 1. source: read the rows `FOR SHARE` (a concurrent write to them waits until we are
//!    done, so nothing can slip in between our read and our write);
//! 2. target: upsert each row image (`INSERT ... ON CONFLICT (pk) DO UPDATE`, skipping rows
//!    whose text is already equal), and delete the keys the source does not have;
//! 3. source: re-read the keys just deleted on the target. A row that appeared on the
//!    source meanwhile (a concurrent insert whose mirrored copy we just deleted) is
//!    written back, so a racing insert cannot be lost;
//! 4. commit the target, then the source (which releases the row locks).
//!
//! The target is a [`Writer`]: its own triggers and foreign-key checks and actions do not
//! fire (whatever they did on the source arrives with the source's rows), and capture
//! triggers skip the writes. So a child table's rows can be re-synced before their
//! parent's, in whatever order the records come.
//!
//! Keys and values travel as text: `col::text` on the source, `$n::text::<type>` on the
//! target, with pinned session settings ([`crate::session`]) so every type round-trips
//! exactly. Generated columns are left to the target to compute; identity `ALWAYS` columns
//! are inserted with `OVERRIDING SYSTEM VALUE` (and, outside the key, not updated: the
//! server refuses that).

use crate::catalog::{IdentityKind, TableMeta};
use crate::checksum::key_columns_as_arrays;
use crate::connect::Writer;
use crate::key::{texts_of, KeySql, KeyText};
use crate::session::pin_settings;
use std::collections::HashSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel, Row, Transaction};

/// Keys handled per pair of transactions.
pub const BATCH: usize = 500;

/// What a re-sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResyncCounts {
    /// Rows inserted or updated on the target.
    pub upserted: u64,
    /// Rows deleted on the target.
    pub deleted: u64,
    /// Keys whose target row was already equal to the source (or absent on both).
    pub unchanged: u64,
}

impl std::ops::AddAssign for ResyncCounts {
    fn add_assign(&mut self, o: Self) {
        self.upserted += o.upserted;
        self.deleted += o.deleted;
        self.unchanged += o.unchanged;
    }
}

/// Which server a failed statement ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Why a re-sync failed. Nothing of the failed batch is committed on either side.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("table {0} has no primary key: rows cannot be re-synced by key")]
    NoPrimaryKey(String),
    #[error("a key for {table} has {got} values, the primary key has {expected} columns")]
    KeyArity {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error("{what} for {table} on the {side} server")]
    Query {
        side: Side,
        what: &'static str,
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The statements for one table.
struct Statements {
    table: String,
    arity: usize,
    /// Positions of the key columns within the written columns.
    key_positions: Vec<usize>,
    written: usize,
    select: String,
    upsert: String,
    delete: String,
}

impl Statements {
    fn new(table: &TableMeta) -> Self {
        let key = KeySql::new(table);
        let arity = key.arity();
        let written: Vec<_> = table.writable_columns().collect();
        let key_names: Vec<&str> = table.key_columns().map(|c| c.name.as_str()).collect();
        let key_positions = key_names
            .iter()
            .map(|k| written.iter().position(|c| c.name == *k).unwrap_or(0))
            .collect();
        let k_params: Vec<String> = (1..=arity).map(|i| format!("${i}::text[]")).collect();
        let k_names: Vec<String> = (0..arity).map(|i| format!("k{i}")).collect();
        let k_cols: Vec<String> = k_names.iter().map(|k| format!("u.{k}")).collect();
        let texts: Vec<String> = written
            .iter()
            .map(|c| format!("t.{}::text", c.quoted()))
            .collect();
        let select = format!(
            "SELECT u.ord, {} FROM {} AS t JOIN unnest({}) WITH ORDINALITY AS u({}, ord) \
             ON ({}) = ({}) FOR SHARE OF t",
            texts.join(", "),
            table.quoted(),
            k_params.join(", "),
            k_names.join(", "),
            key.names(Some("t")),
            key.cast_list(&k_cols)
        );
        let v_params: Vec<String> = (1..=written.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let v_names: Vec<String> = (0..written.len()).map(|i| format!("v{i}")).collect();
        let casts: Vec<String> = written
            .iter()
            .zip(&v_names)
            .map(|(c, v)| format!("u.{v}::{}", c.type_name))
            .collect();
        let overriding = if table.has_identity_always() {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let updated: Vec<_> = written
            .iter()
            .filter(|c| !key_names.contains(&c.name.as_str()))
            .filter(|c| c.identity != Some(IdentityKind::Always))
            .collect();
        let on_conflict = if updated.is_empty() {
            "DO NOTHING".to_string()
        } else {
            let sets: Vec<String> = updated
                .iter()
                .map(|c| format!("{0} = EXCLUDED.{0}", c.quoted()))
                .collect();
            let old_text: Vec<String> = updated
                .iter()
                .map(|c| format!("t.{}::text", c.quoted()))
                .collect();
            let new_text: Vec<String> = updated
                .iter()
                .map(|c| format!("EXCLUDED.{}::text", c.quoted()))
                .collect();
            // Compared as text: works for types without an equality operator (json,
            // point) and skips writing rows that are already equal.
            format!(
                "DO UPDATE SET {} WHERE ROW({}) IS DISTINCT FROM ROW({})",
                sets.join(", "),
                old_text.join(", "),
                new_text.join(", ")
            )
        };
        let upsert = format!(
            "INSERT INTO {} AS t ({}){overriding} SELECT {} FROM unnest({}) AS u({}) \
             ON CONFLICT ({}) {on_conflict}",
            table.quoted(),
            written
                .iter()
                .map(|c| c.quoted())
                .collect::<Vec<_>>()
                .join(", "),
            casts.join(", "),
            v_params.join(", "),
            v_names.join(", "),
            key.names(None),
        );
        let delete = format!(
            "DELETE FROM {} AS t USING unnest({}) AS u({}) WHERE ({}) = ({}) RETURNING {}",
            table.quoted(),
            k_params.join(", "),
            k_names.join(", "),
            key.names(Some("t")),
            key.cast_list(&k_cols),
            key.text_select(Some("t"))
        );
        Statements {
            table: table.qualified_name().to_string(),
            arity,
            key_positions,
            written: written.len(),
            select,
            upsert,
            delete,
        }
    }

    fn err(
        &self,
        side: Side,
        what: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> ResyncError {
        let table = self.table.clone();
        move |source| ResyncError::Query {
            side,
            what,
            table,
            source,
        }
    }

    /// Reads the current rows of `keys` under a share lock: (index into keys, values).
    async fn read(
        &self,
        tx: &Transaction<'_>,
        keys: &[KeyText],
    ) -> Result<Vec<(usize, Vec<Option<String>>)>, ResyncError> {
        let rows = self
            .query_keys(tx, &self.select, keys, Side::Source, "reading rows")
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let ord = (r.get::<_, i64>(0) - 1) as usize;
                (ord, texts_of(r, 1..=self.written))
            })
            .collect())
    }

    /// Upserts row images (deduplicated by key); returns rows written.
    async fn upsert(
        &self,
        tx: &Transaction<'_>,
        rows: &[Vec<Option<String>>],
    ) -> Result<u64, ResyncError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seen = HashSet::new();
        let unique: Vec<&Vec<Option<String>>> = rows
            .iter()
            .filter(|r| {
                let key: Vec<&Option<String>> = self.key_positions.iter().map(|&p| &r[p]).collect();
                seen.insert(key)
            })
            .collect();
        let arrays: Vec<Vec<Option<String>>> = (0..self.written)
            .map(|i| unique.iter().map(|r| r[i].clone()).collect())
            .collect();
        tx.execute(&self.upsert, &params(&arrays))
            .await
            .map_err(self.err(Side::Target, "upserting rows"))
    }

    /// Deletes `keys`; returns the keys actually deleted (text forms as the target prints
    /// them).
    async fn delete(
        &self,
        tx: &Transaction<'_>,
        keys: &[KeyText],
    ) -> Result<Vec<KeyText>, ResyncError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .query_keys(tx, &self.delete, keys, Side::Target, "deleting rows")
            .await?;
        Ok(rows.iter().map(|r| texts_of(r, 0..self.arity)).collect())
    }

    /// Runs `sql` on `tx`, `keys` its parameters (one text array per key column).
    async fn query_keys(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
        keys: &[KeyText],
        side: Side,
        what: &'static str,
    ) -> Result<Vec<Row>, ResyncError> {
        let arrays = key_columns_as_arrays(keys, self.arity);
        tx.query(sql, &params(&arrays))
            .await
            .map_err(self.err(side, what))
    }
}

fn params(arrays: &[Vec<Option<String>>]) -> Vec<&(dyn ToSql + Sync)> {
    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

/// Makes the target's rows for `keys` equal to the source's current rows. `table` is the
/// table as on the target (its column names and types are used on both sides). Keys are
/// text forms of the primary-key values in key order, as a retry-log record stores them;
/// duplicates and keys that exist nowhere are harmless. Idempotent.
pub async fn resync_keys(
    source: &mut Client,
    target: &mut Writer,
    table: &TableMeta,
    keys: &[KeyText],
) -> Result<ResyncCounts, ResyncError> {
    let name = table.qualified_name().to_string();
    if table.primary_key.is_empty() {
        return Err(ResyncError::NoPrimaryKey(name));
    }
    let st = Statements::new(table);
    if let Some(bad) = keys.iter().find(|k| k.len() != st.arity) {
        return Err(ResyncError::KeyArity {
            table: name,
            expected: st.arity,
            got: bad.len(),
        });
    }
    pin_settings(source)
        .await
        .map_err(st.err(Side::Source, "pinning session settings"))?;
    pin_settings(target)
        .await
        .map_err(st.err(Side::Target, "pinning session settings"))?;
    let mut seen = HashSet::new();
    let unique: Vec<KeyText> = keys.iter().filter(|k| seen.insert(*k)).cloned().collect();
    let mut total = ResyncCounts::default();
    for batch in unique.chunks(BATCH) {
        total += resync_batch(source, target, &st, batch).await?;
    }
    Ok(total)
}

/// A read-committed transaction on `client`, the server on `side`.
async fn begin<'c>(
    client: &'c mut Client,
    st: &Statements,
    side: Side,
) -> Result<Transaction<'c>, ResyncError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(st.err(side, "starting a transaction"))
}

async fn resync_batch(
    source: &mut Client,
    target: &mut Client,
    st: &Statements,
    keys: &[KeyText],
) -> Result<ResyncCounts, ResyncError> {
    let src = begin(source, st, Side::Source).await?;
    let dst = begin(target, st, Side::Target).await?;

    let found = st.read(&src, keys).await?;
    let mut present = vec![false; keys.len()];
    for (ord, _) in &found {
        if let Some(p) = present.get_mut(*ord) {
            *p = true;
        }
    }
    let rows: Vec<Vec<Option<String>>> = found.into_iter().map(|(_, v)| v).collect();
    let mut upserted = st.upsert(&dst, &rows).await?;
    let gone: Vec<KeyText> = keys
        .iter()
        .zip(&present)
        .filter(|(_, p)| !**p)
        .map(|(k, _)| k.clone())
        .collect();
    let deleted_keys = st.delete(&dst, &gone).await?;
    let mut deleted = deleted_keys.len() as u64;
    if !deleted_keys.is_empty() {
        // A fresh statement sees inserts committed since the first read (see module doc).
        let reappeared = st.read(&src, &deleted_keys).await?;
        if !reappeared.is_empty() {
            let rows: Vec<_> = reappeared.into_iter().map(|(_, v)| v).collect();
            let n = st.upsert(&dst, &rows).await?;
            upserted += n;
            deleted = deleted.saturating_sub(n);
        }
    }
    dst.commit()
        .await
        .map_err(st.err(Side::Target, "committing"))?;
    src.commit()
        .await
        .map_err(st.err(Side::Source, "committing"))?;
    let touched = upserted + deleted;
    Ok(ResyncCounts {
        upserted,
        deleted,
        unchanged: (keys.len() as u64).saturating_sub(touched),
    })
}
