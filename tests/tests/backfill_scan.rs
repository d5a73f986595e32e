//! `switchyard-backfill --scan-old` (bulk mode reading each table on old in one
//! sequential scan) against real clusters: every chunk recorded from the one read and
//! verified; tables the scan cannot take copied chunk by chunk; a run killed during the
//! scan leaves nothing and the next one reads the table again; a run stopped between
//! the loading sessions' commits is repaired by the verification.

use anyhow::{ensure, Result};
use std::time::Duration;
use switchyard_tests::backfill::{backfill, backfill_with_env};
use switchyard_tests::mirror::{assert_verified, on, pair_with};
use switchyard_tests::proxy::Pair;

/// `big` (integer key, a second index, 60,000 rows: a few MB, many pieces per loading
/// session) and `tk` (text key: not scanned), created on both sides, filled on old.
async fn scan_pair() -> Result<Pair> {
    let pair = pair_with(
        "CREATE TABLE big (id int PRIMARY KEY, n int, pad text);
         CREATE INDEX big_n ON big (n);
         CREATE TABLE tk (k text PRIMARY KEY, v int);",
    )
    .await?;
    on(
        &pair.old,
        "INSERT INTO big SELECT g, g % 97, repeat(md5(g::text), 2) FROM generate_series(1, 60000) g;
         INSERT INTO tk SELECT 'k' || g, g FROM generate_series(1, 3000) g",
    )?;
    Ok(pair)
}

/// A `--scan-old` run's flags, with the tables to copy.
fn scan_flags(tables: &str) -> [&str; 8] {
    [
        "--chunk-rows",
        "5000",
        "--jobs",
        "2",
        "--dual-writes",
        "off",
        "--scan-old",
        tables,
    ]
}

/// Chunks of `table` as `status|path|attempts|count` lines.
fn chunk_states(pair: &Pair, table: &str) -> Result<String> {
    on(
        &pair.new,
        &format!(
            "SELECT status, path, attempts, count(*) FROM _switchyard.backfill_chunks \
             WHERE table_name = '\"public\".\"{table}\"' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scan_of_old_loads_and_verifies_every_chunk() -> Result<()> {
    let pair = scan_pair().await?;
    let started = std::time::Instant::now();
    let run = backfill(&pair, &scan_flags("--tables=big,tk")).await?;
    let elapsed_ms = started.elapsed().as_millis();
    ensure!(run.code() == Some(0), "{}", run.text());
    // The scan's time is shared out among the chunks, not counted once per chunk.
    let copy_ms: u128 = on(
        &pair.new,
        "SELECT sum(copy_ms) FROM _switchyard.backfill_chunks \
         WHERE table_name = '\"public\".\"big\"'",
    )?
    .parse()?;
    ensure!(
        copy_ms <= elapsed_ms,
        "chunks' copy times add up to {copy_ms} ms in a run of {elapsed_ms} ms"
    );
    // One claim of every chunk, copied from the scan, then verified by the pass.
    ensure!(
        chunk_states(&pair, "big")? == "done|scan|1|12",
        "big: {}",
        chunk_states(&pair, "big")?
    );
    ensure!(
        on(
            &pair.new,
            "SELECT sum(rows_old), sum(rows_new), sum(rows_repaired) \
             FROM _switchyard.backfill_chunks WHERE table_name = '\"public\".\"big\"'"
        )? == "60000|60000|0"
    );
    // A text key cannot be summed per chunk by the scan: copied chunk by chunk.
    let tk = chunk_states(&pair, "tk")?;
    ensure!(
        tk.lines().all(|l| l.starts_with("done|bulk|1|")),
        "tk: {tk}"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('big_pkey', 'big_n', 'tk_pkey')"
        )? == "3",
        "key and index restored"
    );
    assert_verified(&pair, "big").await?;
    assert_verified(&pair, "tk").await
}

/// A pair from [`scan_pair`] after a `--scan-old` run of `big` stopped at `failpoint`.
async fn scan_stopped_at(failpoint: &str) -> Result<Pair> {
    let pair = scan_pair().await?;
    backfill_with_env(
        &pair,
        &scan_flags("--tables=big"),
        ("BACKFILL_TEST_FAILPOINT", failpoint),
        Duration::from_secs(120),
    )
    .await?
    .exits(3)?;
    Ok(pair)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_killed_midway_leaves_nothing_and_is_read_again() -> Result<()> {
    let pair = scan_stopped_at("exit-mid-scan").await?;
    // Nothing committed: no rows, no chunk recorded copied.
    ensure!(on(&pair.new, "SELECT count(*) FROM big")? == "0");
    ensure!(
        chunk_states(&pair, "big")? == "running||1|12",
        "{}",
        chunk_states(&pair, "big")?
    );
    backfill(&pair, &["--jobs", "2", "--tables", "big"])
        .await?
        .exits(0)?;
    let states = chunk_states(&pair, "big")?;
    // Without --scan-old the chunks are copied one by one, into the empty table.
    ensure!(
        states == "done|bulk|2|12",
        "the dead process's chunks taken over at once: {states}"
    );
    assert_verified(&pair, "big").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_stopped_between_its_commits_is_repaired_by_verification() -> Result<()> {
    let pair = scan_stopped_at("exit-between-scan-commits").await?;
    // The first session committed its rows with every chunk's record; the second's are
    // missing.
    ensure!(
        chunk_states(&pair, "big")? == "copied|scan|1|12",
        "{}",
        chunk_states(&pair, "big")?
    );
    let rows: i64 = on(&pair.new, "SELECT count(*) FROM big")?.parse()?;
    ensure!(
        rows > 0 && rows < 60000,
        "{rows} rows on new: both sessions should have loaded some"
    );
    backfill(
        &pair,
        &["--jobs", "2", "--tables", "big", "--dual-writes", "off"],
    )
    .await?
    .exits(0)?;
    ensure!(
        chunk_states(&pair, "big")? == "done|scan|1|12",
        "copied once, never again: {}",
        chunk_states(&pair, "big")?
    );
    let repaired: i64 = on(
        &pair.new,
        "SELECT sum(rows_repaired) FROM _switchyard.backfill_chunks",
    )?
    .parse()?;
    ensure!(
        repaired == 60000 - rows,
        "{repaired} rows repaired, {} were missing",
        60000 - rows
    );
    assert_verified(&pair, "big").await
}
