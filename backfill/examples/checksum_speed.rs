//! Times the whole-table checksums the backfill verifies with, on both servers at once (as
//! a copy's verification runs them): a keyed table's key-range checksum over its whole
//! range, and a table without a primary key's multiset checksum. For `bench/verify.sh`.
//!
//! `checksum_speed OLD_URL NEW_URL KEYED_TABLE KEYLESS_TABLE [ROUNDS]` prints one JSON
//! document: median seconds per kind, rows, and whether both sides agreed.

use anyhow::{bail, Context, Result};
use std::time::Instant;
use switchyard_backfill::connect::{connect, Db};
use switchyard_core::catalog::load_table;
use switchyard_core::checksum::{server_version_num, RangeChecksum, RangeQueries, RowHash};
use switchyard_core::ident::QualifiedName;
use switchyard_core::key::KeyRange;
use switchyard_core::multiset::MultisetQueries;
use tokio_postgres::Client;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [old_url, new_url, keyed, keyless, rest @ ..] = args.as_slice() else {
        bail!("usage: checksum_speed OLD_URL NEW_URL KEYED_TABLE KEYLESS_TABLE [ROUNDS]");
    };
    let rounds: usize = match rest.first() {
        Some(r) => r.parse().context("ROUNDS must be a number")?,
        None => 3,
    };
    let old = connect(Db::Old, old_url, 0).await?;
    let new = connect(Db::New, new_url, 0).await?;
    let mode = RowHash::for_versions(
        server_version_num(&old).await?,
        server_version_num(&new).await?,
    );
    let keyed_meta = load_table(&old, &QualifiedName::parse(keyed)?).await?;
    let keyless_meta = load_table(&old, &QualifiedName::parse(keyless)?).await?;
    let columns = |m: &switchyard_core::catalog::TableMeta| -> Vec<String> {
        m.writable_columns().map(|c| c.name.clone()).collect()
    };
    let ranges = RangeQueries::new(&keyed_meta, &columns(&keyed_meta), mode);
    let multiset = MultisetQueries::new(&keyless_meta, &columns(&keyless_meta), mode);

    let mut keyed_s = Vec::new();
    let mut keyless_s = Vec::new();
    let mut rows = (0i64, 0i64);
    let mut equal = true;
    let all = KeyRange::all();
    for _ in 0..rounds {
        let t = Instant::now();
        let (a, b) = tokio::try_join!(ranges.checksum(&old, &all), ranges.checksum(&new, &all))?;
        keyed_s.push(t.elapsed().as_secs_f64());
        equal &= a == b;
        let t = Instant::now();
        let (c, d) = tokio::try_join!(both(&multiset, &old), both(&multiset, &new))?;
        keyless_s.push(t.elapsed().as_secs_f64());
        equal &= c == d;
        rows = (a.rows, c.rows);
    }
    let doc = serde_json::json!({
        "rounds": rounds,
        "row_hash": format!("{mode:?}"),
        "keyed_table": keyed,
        "keyed_rows": rows.0,
        "keyed_seconds_median": median(&mut keyed_s),
        "keyless_table": keyless,
        "keyless_rows": rows.1,
        "keyless_seconds_median": median(&mut keyless_s),
        "both_sides_equal": equal,
    });
    println!("{doc}");
    Ok(())
}

async fn both(q: &MultisetQueries, c: &Client) -> Result<RangeChecksum> {
    Ok(q.checksum(c, None).await?)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
