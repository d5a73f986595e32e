//! Repairs a table without a primary key: for each differing row image, the target ends up
//! with as many copies as the source holds — copies inserted from the source's image, or
//! surplus copies deleted (any of them: equal images are interchangeable).
//!
//! Per batch of row images, one transaction on the target that first takes
//! `SHARE ROW EXCLUSIVE` on the table: it waits for every transaction writing the table
//! there to end (a dual write's prepared or lockstep half included) and keeps new ones out
//! until commit. Only then are the copies counted on the target and on the source. A write
//! that commits on the source after that point has its mirrored half still to run on the
//! target, where it waits for the lock, so both counts describe the same moment and no
//! in-flight write is counted twice or undone. The cost: writes to that table wait on the
//! target for the length of one batch.

use crate::catalog::TableMeta;
use crate::checksum::RowHash;
use crate::connect::Writer;
use crate::multiset::MultisetQueries;
use crate::resync::{ResyncCounts, ResyncError, Side};
use crate::session::pin_settings;
use tokio_postgres::Client;

/// Row images handled per target transaction.
const BATCH: usize = 200;

fn query_err(
    table: &TableMeta,
    side: Side,
    what: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> ResyncError {
    let table = table.qualified_name().to_string();
    move |source| ResyncError::Query {
        side,
        what,
        table,
        source,
    }
}

/// Makes the target hold as many copies of each row image in `hashes` (row hashes over
/// `columns`, `mode`, as [`crate::multiset_diff`] lists them) as the source. `table` is
/// the table as on the target. Idempotent: counts are taken again under the lock.
pub async fn repair_copies(
    source: &Client,
    target: &mut Writer,
    table: &TableMeta,
    columns: &[String],
    mode: RowHash,
    hashes: &[i64],
) -> Result<ResyncCounts, ResyncError> {
    pin_settings(source).await.map_err(query_err(
        table,
        Side::Source,
        "pinning session settings",
    ))?;
    pin_settings(target).await.map_err(query_err(
        table,
        Side::Target,
        "pinning session settings",
    ))?;
    let q = MultisetQueries::new(table, columns, mode);
    let insert = insert_sql(table, columns);
    let delete = format!(
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {} LIMIT $2))",
        q.hash_is(1),
        t = table.quoted()
    );
    let mut total = ResyncCounts::default();
    for batch in hashes.chunks(BATCH) {
        let tx = target.transaction().await.map_err(query_err(
            table,
            Side::Target,
            "starting a transaction",
        ))?;
        tx.batch_execute(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            table.quoted()
        ))
        .await
        .map_err(query_err(table, Side::Target, "locking the table"))?;
        let have = q
            .counts_of(tx.client(), batch)
            .await
            .map_err(|e| from_checksum(table, Side::Target, e))?;
        let want = q
            .counts_of(source, batch)
            .await
            .map_err(|e| from_checksum(table, Side::Source, e))?;
        let short: Vec<i64> = batch
            .iter()
            .filter(|h| want.get(h).copied().unwrap_or(0) > have.get(h).copied().unwrap_or(0))
            .copied()
            .collect();
        let images = q
            .images(source, &short)
            .await
            .map_err(|e| from_checksum(table, Side::Source, e))?;
        for h in batch {
            let need = want.get(h).copied().unwrap_or(0) - have.get(h).copied().unwrap_or(0);
            if need > 0 {
                // Gone from the source since it was counted: nothing to copy.
                let Some(image) = images.get(h) else { continue };
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
                let written: Vec<&Option<String>> = columns
                    .iter()
                    .zip(&image.values)
                    .filter(|(c, _)| table.column(c).is_some_and(|m| !m.generated))
                    .map(|(_, v)| v)
                    .collect();
                for v in &written {
                    params.push(*v);
                }
                params.push(&need);
                tx.execute(&insert, &params).await.map_err(query_err(
                    table,
                    Side::Target,
                    "inserting copies",
                ))?;
                total.upserted += need as u64;
            } else if need < 0 {
                let surplus = -need;
                tx.execute(&delete, &[h, &surplus])
                    .await
                    .map_err(query_err(table, Side::Target, "deleting copies"))?;
                total.deleted += surplus as u64;
            } else {
                total.unchanged += 1;
            }
        }
        tx.commit()
            .await
            .map_err(query_err(table, Side::Target, "committing"))?;
    }
    Ok(total)
}

fn from_checksum(table: &TableMeta, side: Side, e: crate::checksum::ChecksumError) -> ResyncError {
    ResyncError::Query {
        side,
        what: e.what,
        table: table.qualified_name().to_string(),
        source: e.source,
    }
}

/// `INSERT` of `$last` copies of one image of the writable `columns`, values as text.
fn insert_sql(table: &TableMeta, columns: &[String]) -> String {
    let written: Vec<_> = columns
        .iter()
        .filter_map(|c| table.column(c))
        .filter(|c| !c.generated)
        .collect();
    let names: Vec<String> = written.iter().map(|c| c.quoted()).collect();
    let values: Vec<String> = written
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::text::{}", i + 1, c.type_name))
        .collect();
    let overriding = if table.has_identity_always() {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    format!(
        "INSERT INTO {} ({}){overriding} SELECT {} FROM generate_series(1, ${}::int8)",
        table.quoted(),
        names.join(", "),
        values.join(", "),
        written.len() + 1
    )
}
