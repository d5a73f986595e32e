//! `switchyard-backfill` stopped and shared (scenario 27): killed with SIGKILL mid-table
//! and restarted (done chunks never copied again, deferred indexes and a bulk load's key
//! restored); several processes sharing one table; a hung worker losing its lease; pause
//! and resume through the control row; a chunk table an earlier version wrote.

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use std::time::Duration;
use switchyard_tests::backfill::{
    backfill, big_pair, chunks_with, md5_pair, primary_keys, spawn_backfill, try_on, wait_backfill,
    BACKFILL_TIMEOUT,
};
use switchyard_tests::mirror::{assert_verified, on, pair_with};
use switchyard_tests::process::send_signal;
use switchyard_tests::proxy::Pair;
use switchyard_tests::wait::poll_until;

/// `big` on a pair, and a backfill of it with `extra` flags killed (SIGKILL) once five
/// or more of its chunks are in `status`; returns the pair and how many were.
async fn killed_midway(extra: &[&str], status: &str) -> Result<(Pair, i64)> {
    let pair = big_pair().await?;
    let mut flags = vec![
        "--tables",
        "big",
        "--chunk-rows",
        "500",
        "--jobs",
        "2",
        "--max-rows-per-sec",
        "4000",
    ];
    flags.extend_from_slice(extra);
    let mut child = spawn_backfill(&pair, &flags)?;
    let reached = tokio::task::block_in_place(|| {
        poll_until(
            &format!("some chunks {status}"),
            Duration::from_secs(60),
            || Ok(chunks_with(&pair.new, "big", status).filter(|&n| n >= 5)),
        )
    })?;
    child.start_kill().context("killing the backfill")?;
    let killed = wait_backfill(child, Duration::from_secs(20)).await?;
    ensure!(
        killed.code().is_none(),
        "not killed by a signal: {}",
        killed.text()
    );
    Ok((pair, reached))
}

/// Scenario 27: SIGKILL mid-table, restart: done chunks are not copied again (attempts
/// and finish times unchanged), the chunk the dead process held is taken over at once,
/// indexes deferred by the killed run are restored by the next one, and both sides end
/// equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backfill_resumes_from_the_chunk_table() -> Result<()> {
    let (pair, done_before) = killed_midway(&["--defer-indexes"], "done").await?;
    let snapshot = on(
        &pair.new,
        "SELECT chunk_no, status, attempts, finished_at FROM _switchyard.backfill_chunks \
         WHERE status IN ('done', 'running') ORDER BY chunk_no",
    )?;
    let total: i64 = on(
        &pair.new,
        "SELECT count(*) FROM _switchyard.backfill_chunks",
    )?
    .parse()?;
    let done_at_kill = chunks_with(&pair.new, "big", "done").unwrap_or(0);
    ensure!(
        done_at_kill >= done_before && done_at_kill < total,
        "killed mid-table: {done_at_kill} of {total} chunks done"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        )? == "0",
        "the killed run had deferred the index"
    );

    backfill(&pair, &["--tables", "big", "--jobs", "2"])
        .await?
        .exits(0)?;
    for line in snapshot.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let now = on(
            &pair.new,
            &format!(
                "SELECT status, attempts, finished_at FROM _switchyard.backfill_chunks WHERE chunk_no = {}",
                f[0]
            ),
        )?;
        let g: Vec<&str> = now.split('|').collect();
        ensure!(g[0] == "done", "chunk {} is {}", f[0], g[0]);
        if f[1] == "done" {
            ensure!(
                g[1] == f[2] && g[2] == f[3],
                "done chunk {} was copied again: before {line}, after {now}",
                f[0]
            );
        } else {
            // Running when the process died: taken over, one more attempt.
            let before: i32 = f[2].parse()?;
            let after: i32 = g[1].parse()?;
            ensure!(
                after == before + 1,
                "chunk {} taken over: {line} → {now}",
                f[0]
            );
        }
    }
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE status <> 'done'"
        )? == "0"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        )? == "1",
        "the index was restored"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_deferred WHERE restored_at IS NULL"
        )? == "0"
    );
    assert_verified(&pair, "big").await
}

/// Bulk mode killed while loading (key and index dropped, some chunks copied): the table
/// holds exactly the copied chunks' rows; a restart (without `--bulk`: the table's state
/// decides) copies only the rest, rebuilds the key and the index once, verifies every
/// chunk, and ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_bulk_load_resumes_and_restores_the_key() -> Result<()> {
    let (pair, _) = killed_midway(&["--dual-writes", "off", "--bulk"], "copied").await?;
    ensure!(
        primary_keys(&pair.new, "big")? == "0",
        "key dropped while loading"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        )? == "0",
        "index dropped while loading"
    );
    // Recorded in the COPY's transaction: the rows are exactly the copied chunks'.
    let rows = on(&pair.new, "SELECT count(*) FROM big")?;
    let recorded = on(
        &pair.new,
        "SELECT coalesce(sum(rows_copied), 0) FROM _switchyard.backfill_chunks \
         WHERE status = 'copied'",
    )?;
    ensure!(rows == recorded, "{rows} rows, {recorded} recorded copied");
    let copied = on(
        &pair.new,
        "SELECT chunk_no, attempts, rows_copied, copy_ms FROM _switchyard.backfill_chunks \
         WHERE status = 'copied' ORDER BY chunk_no",
    )?;

    // The summary names what was rebuilt.
    backfill(&pair, &["--tables", "big", "--jobs", "2"])
        .await?
        .exits(0)?
        .stdout_has("rebuilt big_pkey")?
        .stdout_has("rebuilt big_n")?;
    for line in copied.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let now = on(
            &pair.new,
            &format!(
                "SELECT chunk_no, attempts, rows_copied, copy_ms FROM _switchyard.backfill_chunks \
                 WHERE chunk_no = {} AND status = 'done'",
                f[0]
            ),
        )?;
        ensure!(
            now == line,
            "copied chunk copied again: before {line}, after {now}"
        );
    }
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE status <> 'done' OR path <> 'bulk'"
        )? == "0"
    );
    ensure!(primary_keys(&pair.new, "big")? == "1", "key restored");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_n'"
        )? == "1",
        "index restored"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_deferred WHERE restored_at IS NULL"
        )? == "0"
    );
    assert_verified(&pair, "big").await
}

/// Two processes at once on `t` (20,000 rows, 500-row chunks), with `extra` flags; both
/// must end with exit 0. Throttled so that neither finishes before the other starts.
async fn two_processes_on_t(extra: &[&str]) -> Result<Pair> {
    let pair = md5_pair("bigint", 20000).await?;
    let mut flags = vec![
        "--tables",
        "t",
        "--chunk-rows",
        "500",
        "--jobs",
        "2",
        "--max-rows-per-sec",
        "8000",
    ];
    flags.extend_from_slice(extra);
    let a = spawn_backfill(&pair, &flags)?;
    let b = spawn_backfill(&pair, &flags)?;
    let (a, b) = tokio::join!(
        wait_backfill(a, BACKFILL_TIMEOUT),
        wait_backfill(b, BACKFILL_TIMEOUT)
    );
    let (a, b) = (a?, b?);
    ensure!(a.code() == Some(0), "{}", a.text());
    ensure!(b.code() == Some(0), "{}", b.text());
    Ok(pair)
}

/// Two processes on one table share its chunks through the chunk table: both do some,
/// none is copied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_table() -> Result<()> {
    let pair = two_processes_on_t(&[]).await?;
    let stats = on(
        &pair.new,
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'), max(attempts), \
                count(DISTINCT split_part(worker, '/', 1)) FROM _switchyard.backfill_chunks",
    )?;
    let f: Vec<&str> = stats.split('|').collect();
    ensure!(f[0] == f[1], "all chunks done: {stats}");
    ensure!(f[2] == "1", "no chunk copied twice: {stats}");
    ensure!(f[3] == "2", "both processes did chunks: {stats}");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_tables"
        )? == "1"
    );
    assert_verified(&pair, "t").await
}

/// Two bulk processes on one table: no chunk copied twice, the key rebuilt once, every
/// chunk verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bulk_processes_share_one_table() -> Result<()> {
    let pair = two_processes_on_t(&["--dual-writes", "off", "--bulk"]).await?;
    let stats = on(
        &pair.new,
        "SELECT count(*), count(*) FILTER (WHERE status = 'done' AND path = 'bulk'), \
                max(attempts), sum(rows_copied), sum(rows_old) FROM _switchyard.backfill_chunks",
    )?;
    let f: Vec<&str> = stats.split('|').collect();
    ensure!(f[0] == f[1], "all chunks bulk-loaded and done: {stats}");
    ensure!(f[2] == "1", "no chunk copied twice: {stats}");
    ensure!(f[3] == "20000" && f[4] == "20000", "rows: {stats}");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks \
             WHERE checksum_new IS DISTINCT FROM checksum_old OR checksum_old NOT LIKE 'xxh3:%'"
        )? == "0",
        "every chunk verified by the one pass over new"
    );
    ensure!(primary_keys(&pair.new, "t")? == "1");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FILTER (WHERE kind = 'primary-key'), count(restored_at) \
             FROM _switchyard.backfill_deferred"
        )? == "1|1",
        "the key was dropped and rebuilt once"
    );
    assert_verified(&pair, "t").await
}

/// A worker that hangs (SIGSTOP: its connections stay open, so it looks alive) loses its
/// chunk when the lease runs out: another process takes it over and finishes the table;
/// the hung one, continued, finds its chunk gone and does not record over the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_loses_its_chunk_when_the_lease_runs_out() -> Result<()> {
    let pair = md5_pair("int", 6000).await?;
    let a = spawn_backfill(
        &pair,
        &[
            "--tables",
            "t",
            "--chunk-rows",
            "500",
            "--jobs",
            "1",
            "--max-rows-per-sec",
            "1500",
            "--lease-secs",
            "3",
        ],
    )?;
    let a_pid = a.id().context("pid of the first backfill")? as i32;
    let held = tokio::task::block_in_place(|| {
        poll_until(
            "a chunk running after one done",
            Duration::from_secs(60),
            || {
                let done = chunks_with(&pair.new, "t", "done").unwrap_or(0);
                let running = try_on(
                    &pair.new,
                    "SELECT chunk_no FROM _switchyard.backfill_chunks WHERE status = 'running'",
                );
                Ok(match running {
                    Some(r) if done >= 1 && !r.is_empty() => Some(r),
                    _ => None,
                })
            },
        )
    })?;
    send_signal(a_pid, Signal::SIGSTOP)?;
    // The chunk may have finished between the probe and the signal: take what is running now.
    let held = on(
        &pair.new,
        "SELECT coalesce(string_agg(chunk_no::text, ','), '') FROM _switchyard.backfill_chunks WHERE status = 'running'",
    )
    .map(|r| if r.is_empty() { held.clone() } else { r })?;
    let b = spawn_backfill(
        &pair,
        &["--tables", "t", "--jobs", "2", "--lease-secs", "3"],
    )?;
    let taken = tokio::task::block_in_place(|| {
        poll_until("the held chunk taken over", Duration::from_secs(60), || {
            Ok(try_on(
                &pair.new,
                &format!(
                    "SELECT count(*) FROM _switchyard.backfill_chunks \
                     WHERE chunk_no IN ({held}) AND attempts >= 2"
                ),
            )
            .filter(|n| n != "0"))
        })
    });
    send_signal(a_pid, Signal::SIGCONT)?;
    taken?;
    let (a, b) = tokio::join!(
        wait_backfill(a, BACKFILL_TIMEOUT),
        wait_backfill(b, BACKFILL_TIMEOUT)
    );
    let (a, b) = (a?, b?);
    ensure!(b.code() == Some(0), "{}", b.text());
    ensure!(a.code() == Some(0), "{}", a.text());
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE status <> 'done'"
        )? == "0"
    );
    let owners = on(
        &pair.new,
        &format!(
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE chunk_no IN ({held}) \
             AND split_part(split_part(worker, ':', 2), '/', 1) = '{a_pid}'"
        ),
    )?;
    ensure!(
        owners == "0",
        "the hung process recorded over the new owner"
    );
    assert_verified(&pair, "t").await
}

/// Pause through the control row holds the copy back; resume lets it finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_through_the_control_row() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY)").await?;
    on(&pair.old, "INSERT INTO t SELECT generate_series(1, 3000)")?;
    let _paused = backfill(&pair, &["--pause"]).await?.exits(0)?;
    let child = spawn_backfill(&pair, &["--tables", "t", "--chunk-rows", "500"])?;
    tokio::task::block_in_place(|| {
        poll_until("the plan", Duration::from_secs(30), || {
            Ok(chunks_with(&pair.new, "t", "pending").filter(|&n| n > 0))
        })
    })?;
    ensure!(
        chunks_with(&pair.new, "t", "done") == Some(0),
        "copied while paused"
    );
    backfill(&pair, &["--resume"]).await?.exits(0)?;
    wait_backfill(child, BACKFILL_TIMEOUT)
        .await?
        .exits(0)?
        .stderr_has("paused")?;
    assert_verified(&pair, "t").await
}

/// A chunk table an earlier version left behind (its status constraint from before bulk
/// mode, chunks done, failed and pending as that version stored them) is taken up where
/// it stood: the constraint gains bulk mode's statuses, done chunks are left alone, and
/// the failed and pending ones are copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_table_from_an_earlier_version_is_resumed() -> Result<()> {
    let pair = md5_pair("int", 2000).await?;
    let flags = ["--tables", "t", "--chunk-rows", "500", "--bulk", "off"];
    let _first = backfill(&pair, &flags).await?.exits(0)?;
    on(
        &pair.new,
        "ALTER TABLE _switchyard.backfill_chunks DROP CONSTRAINT backfill_chunks_status_check;
         ALTER TABLE _switchyard.backfill_chunks ADD CONSTRAINT backfill_chunks_status_check
             CHECK (status IN ('pending', 'running', 'done', 'unverified', 'failed'));
         UPDATE _switchyard.backfill_chunks SET status = 'failed', last_error = 'earlier'
             WHERE chunk_no = 1;
         UPDATE _switchyard.backfill_chunks SET status = 'pending', attempts = 0, worker = NULL
             WHERE chunk_no = 2;",
    )?;
    let before = on(
        &pair.new,
        "SELECT string_agg(chunk_no || ':' || attempts || ':' || finished_at, ',' ORDER BY chunk_no) \
         FROM _switchyard.backfill_chunks WHERE status = 'done'",
    )?;
    let _again = backfill(&pair, &flags).await?.exits(0)?;
    ensure!(
        on(
            &pair.new,
            "SELECT pg_get_constraintdef(oid) LIKE '%verifying%' FROM pg_constraint \
             WHERE conname = 'backfill_chunks_status_check'"
        )? == "t",
        "the constraint admits bulk mode's statuses again"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT string_agg(chunk_no || ':' || status || ':' || attempts, ',' ORDER BY chunk_no) \
             FROM _switchyard.backfill_chunks"
        )? == "0:done:1,1:done:2,2:done:1,3:done:1",
        "the failed chunk took one more attempt, the pending one its first"
    );
    let untouched = on(
        &pair.new,
        "SELECT string_agg(chunk_no || ':' || attempts || ':' || finished_at, ',' ORDER BY chunk_no) \
         FROM _switchyard.backfill_chunks WHERE chunk_no IN (0, 3)",
    )?;
    ensure!(
        before == untouched,
        "done chunks copied again: {before} → {untouched}"
    );
    assert_verified(&pair, "t").await
}
