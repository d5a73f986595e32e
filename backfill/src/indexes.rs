//! `--defer-indexes`: secondary indexes, unique and exclusion constraints and outgoing
//! foreign keys of the tables to load are dropped on new before loading (each insert no
//! longer maintains them) and rebuilt once a table's chunks are all done, on `--jobs`
//! connections at once. Their definitions are saved in `_switchyard.backfill_deferred`
//! in the same transaction as the drops, so a run that is killed halfway restores them
//! when it is started again (any run on the pair rebuilds what is pending for finished
//! tables, with or without the flag).
//!
//! Bulk mode (`--bulk`, [`defer_bulk`]) drops the primary key too, on tables still empty;
//! its chunks are then verified only once everything is rebuilt.
//!
//! Left alone: the primary key (chunk ranges, ON CONFLICT and re-sync need it), check and
//! not-null constraints (cheap), and indexes a foreign key depends on (dropping them would
//! need dropping the referencing constraint of another table too).

use crate::chunk_table::{sql_set, ChunkStatus, FINISHED, PLAN_LOCK};
use crate::config::BackfillConfig;
use crate::connect::{connect, Db};
use crate::plan::TablePlan;
use crate::session_lock::release_after;
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use switchyard_core::ident::quote_ident;
use tokio_postgres::{Client, Transaction};

/// Session advisory lock held while one process rebuilds ("switchyard.rebuild").
const REBUILD_LOCK: i64 = 0x5357_5245_4255_494c;

/// One object to drop and rebuild.
#[derive(Debug, Clone)]
struct Deferred {
    table: String,
    name: String,
    /// `index`, `constraint` or `foreign-key` (rebuilt last: it may need the others).
    kind: &'static str,
    definition: String,
    drop: String,
}

const INDEXES_SQL: &str = "
SELECT ic.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = $1::text::regclass AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY 1";

const CONSTRAINTS_SQL: &str = "
SELECT c.conname::text, c.contype::text, pg_catalog.pg_get_constraintdef(c.oid)
FROM pg_catalog.pg_constraint c
WHERE c.conrelid = $1::text::regclass AND c.contype IN ('u', 'x', 'f')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f
                  WHERE f.contype = 'f' AND f.conindid = c.conindid AND f.oid <> c.oid
                    AND c.contype <> 'f')
ORDER BY 1";

const PRIMARY_KEY_SQL: &str = "
SELECT c.conname::text, pg_catalog.pg_get_indexdef(c.conindid),
       CASE WHEN c.condeferred THEN ' DEFERRABLE INITIALLY DEFERRED'
            WHEN c.condeferrable THEN ' DEFERRABLE' ELSE '' END,
       pg_catalog.pg_get_constraintdef(c.oid),
       (SELECT r.relkind = 'p' FROM pg_catalog.pg_class r WHERE r.oid = c.conrelid)
FROM pg_catalog.pg_constraint c
WHERE c.conrelid = $1::text::regclass AND c.contype = 'p'";

async fn objects_of(
    tx: &Transaction<'_>,
    plan: &TablePlan,
    with_primary_key: bool,
) -> Result<Vec<Deferred>> {
    let mut out = Vec::new();
    let schema = quote_ident(&plan.name.schema);
    if with_primary_key {
        for r in tx
            .query(PRIMARY_KEY_SQL, &[&plan.quoted])
            .await
            .with_context(|| format!("reading the primary key of {} on new", plan.name))?
        {
            let name: String = r.get(0);
            let index: String = r.get(1);
            let deferrable: String = r.get(2);
            let constraint: String = r.get(3);
            let partitioned: bool = r.get(4);
            // The index first, then the constraint on it: building the index takes a
            // SHARE lock, so the one-pass verification (`table_pass`) reads the table
            // meanwhile; ADD PRIMARY KEY would lock it out for the whole build. (A
            // partitioned table cannot take a key USING INDEX.)
            let definition = if partitioned {
                format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} {constraint}",
                    plan.quoted,
                    quote_ident(&name)
                )
            } else {
                format!(
                    "{index}; ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}{deferrable}",
                    plan.quoted,
                    quote_ident(&name),
                    quote_ident(&name)
                )
            };
            out.push(Deferred {
                table: plan.quoted.clone(),
                definition,
                drop: format!(
                    "ALTER TABLE {} DROP CONSTRAINT {}",
                    plan.quoted,
                    quote_ident(&name)
                ),
                name,
                kind: "primary-key",
            });
        }
    }
    for r in tx
        .query(INDEXES_SQL, &[&plan.quoted])
        .await
        .with_context(|| format!("listing the indexes of {} on new", plan.name))?
    {
        let name: String = r.get(0);
        out.push(Deferred {
            table: plan.quoted.clone(),
            drop: format!("DROP INDEX {schema}.{}", quote_ident(&name)),
            name,
            kind: "index",
            definition: r.get(1),
        });
    }
    for r in tx
        .query(CONSTRAINTS_SQL, &[&plan.quoted])
        .await
        .with_context(|| format!("listing the constraints of {} on new", plan.name))?
    {
        let name: String = r.get(0);
        let kind = if r.get::<_, &str>(1) == "f" {
            "foreign-key"
        } else {
            "constraint"
        };
        let def: String = r.get(2);
        out.push(Deferred {
            table: plan.quoted.clone(),
            definition: format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {def}",
                plan.quoted,
                quote_ident(&name)
            ),
            drop: format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                plan.quoted,
                quote_ident(&name)
            ),
            name,
            kind,
        });
    }
    Ok(out)
}

/// A transaction on new holding the planning lock, so that no other process plans or
/// defers meanwhile.
async fn planning_transaction(control: &mut Client) -> Result<Transaction<'_>> {
    let tx = control
        .transaction()
        .await
        .context("starting a transaction on new")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLAN_LOCK])
        .await
        .context("taking the planning lock")?;
    Ok(tx)
}

/// Saves the definitions of `plan`'s deferrable objects (its primary key too with
/// `with_primary_key`) and drops them, in `tx`.
async fn save_and_drop(
    tx: &Transaction<'_>,
    plan: &TablePlan,
    with_primary_key: bool,
) -> Result<()> {
    for d in objects_of(tx, plan, with_primary_key).await? {
        tx.execute(
            "INSERT INTO _switchyard.backfill_deferred (table_name, object_name, kind, definition) \
             VALUES ($1, $2, $3, $4)",
            &[&d.table, &d.name, &d.kind, &d.definition],
        )
        .await
        .context("saving an index definition")?;
        // Foreign keys of other tables pointing at ours keep their unique index (see the
        // query; bulk mode leaves referenced tables alone), so the drop cannot cascade.
        tx.batch_execute(&d.drop)
            .await
            .with_context(|| format!("dropping {} on new", d.name))?;
    }
    Ok(())
}

/// Drops the deferrable objects of tables that still have chunks to load and saves their
/// definitions, in one transaction. Tables with saved definitions already (a resumed
/// run) are left as they are.
pub async fn defer(control: &mut Client, plans: &[TablePlan]) -> Result<()> {
    let tx = planning_transaction(control).await?;
    for plan in plans {
        let row = tx
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks \
                                    WHERE table_name = $1 AND status NOT IN {}), \
                            EXISTS (SELECT 1 FROM _switchyard.backfill_deferred \
                                    WHERE table_name = $1)",
                    sql_set(FINISHED)
                ),
                &[&plan.quoted],
            )
            .await
            .context("reading the state of a table")?;
        let (open, saved): (bool, bool) = (row.get(0), row.get(1));
        if !open || saved {
            continue;
        }
        save_and_drop(&tx, plan, false).await?;
    }
    tx.commit().await.context("committing the deferral")?;
    Ok(())
}

/// Bulk mode: for each of `plans` that is empty on new, has no chunk worked on yet and no
/// foreign key of another table pointing at it, drops the primary key and every other
/// index and constraint `--defer-indexes` would drop, saving their definitions, in one
/// transaction with the table's chunk rows locked (no process can claim one meanwhile;
/// one claimed after the commit sees the table as bulk-loading). Returns the tables put
/// in bulk mode now; tables in bulk mode already stay so.
pub async fn defer_bulk(control: &mut Client, plans: &[TablePlan]) -> Result<Vec<String>> {
    let tx = planning_transaction(control).await?;
    let mut bulk = Vec::new();
    for plan in plans {
        if plan.key_missing_on_new {
            continue;
        }
        let row = tx
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM (SELECT status, attempts FROM _switchyard.backfill_chunks \
                                                    WHERE table_name = $1 FOR UPDATE) c \
                             WHERE c.status <> {} OR c.attempts > 0), \
                            EXISTS (SELECT 1 FROM _switchyard.backfill_deferred WHERE table_name = $1), \
                            EXISTS (SELECT 1 FROM pg_catalog.pg_constraint \
                                    WHERE contype = 'f' AND confrelid = $1::text::regclass)",
                    ChunkStatus::Pending.sql()
                ),
                &[&plan.quoted],
            )
            .await
            .context("reading the state of a table")?;
        let (worked, saved, referenced): (i64, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if worked > 0 || saved {
            continue;
        }
        if referenced {
            tracing::info!(table = %plan.name, "Not bulk-loaded: foreign keys of other tables point at it (its key stays).");
            continue;
        }
        let empty: bool = tx
            .query_one(
                &format!("SELECT NOT EXISTS (SELECT 1 FROM {})", plan.quoted),
                &[],
            )
            .await
            .with_context(|| format!("looking for rows of {} on new", plan.name))?
            .get(0);
        if !empty {
            tracing::info!(table = %plan.name, "Not bulk-loaded: it has rows on new already.");
            continue;
        }
        save_and_drop(&tx, plan, true).await?;
        bulk.push(plan.quoted.clone());
    }
    tx.commit().await.context("committing the bulk deferral")?;
    Ok(bulk)
}

/// True when definitions wait to be restored.
pub async fn pending(control: &Client) -> Result<bool> {
    let row = control
        .query_one(
            "SELECT to_regclass('_switchyard.backfill_deferred') IS NOT NULL AND \
                    EXISTS (SELECT 1 FROM _switchyard.backfill_deferred WHERE restored_at IS NULL)",
            &[],
        )
        .await
        .context("looking for deferred indexes")?;
    Ok(row.get(0))
}

/// Raises the session's `maintenance_work_mem` to `mb` MiB when the server's setting is
/// lower (0: leaves it), so that an index build sorts in memory rather than spilling to
/// disk; never lowers it. Returns the setting the session ends up with.
pub async fn raise_maintenance_work_mem(client: &Client, mb: u64) -> Result<String> {
    let mb = i64::try_from(mb).context("rebuild memory out of range")?;
    let row = client
        .query_one(
            "SELECT CASE WHEN $1::int8 > 0 AND \
                 pg_catalog.pg_size_bytes(pg_catalog.current_setting('maintenance_work_mem')) \
                   < $1::int8 * 1048576 \
               THEN pg_catalog.set_config('maintenance_work_mem', $1::int8 * 1024 || 'kB', false) \
               ELSE pg_catalog.current_setting('maintenance_work_mem') END",
            &[&mb],
        )
        .await
        .with_context(|| format!("setting maintenance_work_mem to {mb} MiB on new"))?;
    Ok(row.get(0))
}

/// Rebuilds the saved objects of `finished` tables (quoted names), indexes and
/// constraints first, then foreign keys, each group on `jobs` connections at once.
/// Returns what was rebuilt. A process that finds another one rebuilding leaves it be.
pub async fn rebuild(
    cfg: &BackfillConfig,
    control: &Client,
    finished: &[String],
) -> Result<Vec<String>> {
    let got: bool = control
        .query_one("SELECT pg_try_advisory_lock($1)", &[&REBUILD_LOCK])
        .await
        .context("taking the rebuild lock")?
        .get(0);
    if !got {
        return Ok(Vec::new());
    }
    let result = rebuild_locked(cfg, control, finished).await;
    release_after(control, REBUILD_LOCK, "rebuild lock", result).await
}

async fn rebuild_locked(
    cfg: &BackfillConfig,
    control: &Client,
    finished: &[String],
) -> Result<Vec<String>> {
    let rows = control
        .query(
            "SELECT table_name, object_name, kind, definition FROM _switchyard.backfill_deferred \
             WHERE restored_at IS NULL AND table_name = ANY($1) ORDER BY kind = 'foreign-key', 1, 2",
            &[&finished],
        )
        .await
        .context("reading the deferred indexes")?;
    let all: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut rebuilt = Vec::new();
    for fks in [false, true] {
        let group: VecDeque<_> = all
            .iter()
            .filter(|(_, _, kind, _)| (kind == "foreign-key") == fks)
            .cloned()
            .collect();
        if group.is_empty() {
            continue;
        }
        let queue = Arc::new(Mutex::new(group));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..cfg
            .backfill
            .jobs
            .min(queue.lock().map(|q| q.len()).unwrap_or(1))
        {
            let (queue, url) = (queue.clone(), cfg.new.clone());
            let memory_mb = cfg.backfill.rebuild_memory_mb;
            set.spawn(async move {
                let mut client = connect(Db::New, &url, 0).await?;
                let memory = raise_maintenance_work_mem(&client, memory_mb).await?;
                tracing::debug!(maintenance_work_mem = %memory, "Rebuild session ready.");
                let mut done = Vec::new();
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some((table, name, _, definition)) = next else {
                        return anyhow::Ok(done);
                    };
                    // The object and its record in one transaction: a rebuild killed
                    // halfway leaves each object either rebuilt and recorded, or neither.
                    let tx = client
                        .transaction()
                        .await
                        .context("starting a rebuild transaction")?;
                    tx.batch_execute(&definition)
                        .await
                        .with_context(|| format!("rebuilding {name} on {table}: {definition}"))?;
                    tx.execute(
                        "UPDATE _switchyard.backfill_deferred SET restored_at = now() \
                             WHERE table_name = $1 AND object_name = $2",
                        &[&table, &name],
                    )
                    .await
                    .context("recording a rebuilt index")?;
                    tx.commit().await.context("committing a rebuilt index")?;
                    done.push(format!("{name} on {table}"));
                }
            });
        }
        while let Some(r) = set.join_next().await {
            rebuilt.extend(r.context("a rebuild task panicked")??);
        }
    }
    Ok(rebuilt)
}
