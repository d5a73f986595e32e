//! `switchyard-backfill`'s bulk mode after the load: the key and index rebuild, the
//! one-pass verification meeting the rebuild and users' index builds, and the range by
//! range checks that repair what changed after the copy.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_tests::backfill::{
    backfill, backfill_failpoint_command, backfill_with_env, big_pair, chunks_with, md5_pair,
    primary_keys, wait_backfill, BACKFILL_TIMEOUT,
};
use switchyard_tests::mirror::{assert_verified, on, pair_with, wait_on};
use switchyard_tests::proxy::{Pair, DB};
use switchyard_tests::PgCluster;

/// `--rebuild-memory-mb`: the sessions that rebuild keys and indexes raise
/// `maintenance_work_mem` when the server's is lower, never lower it, and keep the
/// server's with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_sessions_only_raise_maintenance_work_mem() -> Result<()> {
    use switchyard_backfill::indexes::raise_maintenance_work_mem;
    let c = tokio::task::spawn_blocking(|| {
        PgCluster::builder()
            .setting("maintenance_work_mem", "64MB")
            .start()
    })
    .await??;
    let raised = c.connect("postgres").await?;
    assert_eq!(raise_maintenance_work_mem(&raised, 1024).await?, "1GB");
    let shown: String = raised
        .query_one("SHOW maintenance_work_mem", &[])
        .await?
        .get(0);
    assert_eq!(shown, "1GB");
    let kept = c.connect("postgres").await?;
    assert_eq!(raise_maintenance_work_mem(&kept, 16).await?, "64MB");
    assert_eq!(raise_maintenance_work_mem(&kept, 0).await?, "64MB");
    let shown: String = kept
        .query_one("SHOW maintenance_work_mem", &[])
        .await?
        .get(0);
    assert_eq!(shown, "64MB", "never lowered");
    Ok(())
}

/// The one-pass verification reads the table on two sessions while another worker
/// rebuilds its key (`ADD PRIMARY KEY USING INDEX` wants an `ACCESS EXCLUSIVE` lock). The
/// failpoint holds the pass's first read back until the rebuild's lock request waits on
/// the table: a finished read must not keep its lock until the other read ends, or the
/// three wait on each other for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_and_the_key_rebuild_never_wait_on_each_other() -> Result<()> {
    pass_meets_the_key_rebuild("pass-first-read-waits-for-lock").await
}

/// As above, with the rebuild's lock request queued while the pass sets up its second
/// session (after the first took its lock): a setup that waited there for its own lock
/// would keep every session from reading, the first's lock held, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_setup_never_waits_behind_the_key_rebuild() -> Result<()> {
    pass_meets_the_key_rebuild("pass-setup-waits-for-lock").await
}

/// Two workers on 2,000-row chunks, bulk mode by default (dual writes declared off).
const TWO_JOBS: [&str; 6] = [
    "--chunk-rows",
    "2000",
    "--jobs",
    "2",
    "--dual-writes",
    "off",
];

async fn pass_meets_the_key_rebuild(failpoint: &str) -> Result<()> {
    let pair = big_pair().await?;
    backfill_with_env(
        &pair,
        &[&["--tables", "big"][..], &TWO_JOBS].concat(),
        ("BACKFILL_TEST_FAILPOINT", failpoint),
        Duration::from_secs(60),
    )
    .await?
    .exits(0)?
    .stdout_has("rebuilt big_pkey")?;
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks WHERE status <> 'done'"
        )? == "0"
    );
    ensure!(primary_keys(&pair.new, "big")? == "1", "key restored");
    assert_verified(&pair, "big").await
}

/// `pg_stat_progress_create_index` rows for table `t` (1 while the gated build runs).
const BUILDING: &str = "SELECT count(*) FROM pg_stat_progress_create_index \
                        WHERE relid = 't'::regclass";

/// An index build on `t` held inside its scan until [`Gate::open`].
struct Gate {
    keeper: tokio_postgres::Client,
    build: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Gate {
    /// Lets the build finish and waits for it.
    async fn open(self) -> Result<()> {
        self.keeper
            .execute("SELECT pg_advisory_unlock(42)", &[])
            .await?;
        self.build
            .await
            .context("the index build task")?
            .context("the gated index build")?;
        Ok(())
    }
}

/// `t` (20,000 rows) bulk-copied by a run stopped before its verification, the key back
/// as another process's rebuild would leave it (no `ADD PRIMARY KEY` of the next run
/// queues behind the gate), and a user's index build on `t` held by a gate; with the
/// flags of those runs.
async fn copied_table_beside_a_gated_build() -> Result<(Pair, Vec<&'static str>, Gate)> {
    let pair = md5_pair("int", 20000).await?;
    let flags = [&["--tables", "t"][..], &TWO_JOBS, &["--bulk"]].concat();
    backfill_with_env(
        &pair,
        &flags,
        ("BACKFILL_TEST_FAILPOINT", "exit-before-verify"),
        BACKFILL_TIMEOUT,
    )
    .await?
    .exits(3)?;
    ensure!(chunks_with(&pair.new, "t", "copied") == Some(10));
    // The gate: closed while the test holds advisory lock 42. It polls with a try-lock,
    // so nothing waits on a lock (which would end the pass's give-way at once).
    on(
        &pair.new,
        "CREATE UNIQUE INDEX t_pkey ON t (id); ALTER TABLE t ADD PRIMARY KEY USING INDEX t_pkey; \
         UPDATE _switchyard.backfill_deferred SET restored_at = now() WHERE restored_at IS NULL; \
         CREATE FUNCTION gate(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ \
         BEGIN \
           WHILE NOT pg_try_advisory_lock_shared(42) LOOP PERFORM pg_sleep(0.01); END LOOP; \
           PERFORM pg_advisory_unlock_shared(42); RETURN $1; \
         END $$",
    )?;
    let keeper = pair.new.connect(DB).await?;
    keeper.execute("SELECT pg_advisory_lock(42)", &[]).await?;
    let builder = pair.new.connect(DB).await?;
    let build = tokio::spawn(async move {
        builder
            .batch_execute("CREATE INDEX t_gate ON t ((gate(id)))")
            .await
    });
    // The probe blocks: off the runtime's threads, which the build's connection needs.
    wait_on(
        &pair.new,
        "the gated index build to start",
        Duration::from_secs(30),
        BUILDING,
        "1",
    )?;
    Ok((pair, flags, Gate { keeper, build }))
}

/// An index build on the table outlasts the one-pass verification (a user's, held in its
/// scan by a gate the test opens). The pass's second session gives way to it (a parallel
/// build ends with its leader working alone, and the pass should still have work then),
/// but the first reads every block range meanwhile, so the pass, and the run, end while
/// the build still runs: the pass never waits for a build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_gives_way_to_an_index_build_but_never_waits_for_it() -> Result<()> {
    let (pair, flags, gate) = copied_table_beside_a_gated_build().await?;
    let run = backfill_with_env(
        &pair,
        &flags,
        ("SWITCHYARD_LOG", "switchyard_backfill::table_pass=debug"),
        BACKFILL_TIMEOUT,
    )
    .await?
    .exits(0)?;
    ensure!(
        on(&pair.new, BUILDING)? == "1",
        "the run ended while the build still ran"
    );
    ensure!(
        run.stderr.contains("ranges=[16, 0]"),
        "the first session read every block range, the second gave way: {}",
        run.text()
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks \
             WHERE status = 'done' AND checksum_old LIKE 'xxh3:%' AND checksum_new = checksum_old"
        )? == "10",
        "every chunk verified by the pass: {}",
        on(
            &pair.new,
            "SELECT chunk_no, status, checksum_old, checksum_new FROM _switchyard.backfill_chunks ORDER BY 1"
        )?
    );
    gate.open().await?;
    assert_verified(&pair, "t").await
}

/// A pass session held back by an index build holds its lock on the table from the
/// start. Otherwise, released when a lock request (the key's `ADD PRIMARY KEY`, here the
/// test's) waits on the table, it would queue behind that request, which waits for the
/// build: the first session reads the rest alone, or the run waits for the build. The
/// failpoint holds the first read until the test's request waits, so both sessions are
/// set up and idle when the locks are looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_session_held_by_an_index_build_already_holds_its_lock() -> Result<()> {
    let (pair, flags, gate) = copied_table_beside_a_gated_build().await?;
    let args = switchyard_tests::backfill::pair_args(&pair, &flags);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = backfill_failpoint_command(&refs, "pass-first-read-waits-others-give-way")?
        .env("SWITCHYARD_LOG", "switchyard_backfill::table_pass=debug")
        .spawn()
        .context("starting switchyard-backfill")?;
    let locked = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                  WHERE l.relation = 't'::regclass AND l.mode = 'AccessShareLock' AND l.granted \
                    AND a.application_name = 'switchyard-backfill'";
    let held = wait_on(
        &pair.new,
        "both pass sessions to hold their lock on the table",
        Duration::from_secs(4),
        locked,
        "2",
    );
    // The test's own request for the table, queued behind the gated build.
    let locker = pair.new.connect(DB).await?;
    let lock = tokio::spawn(async move {
        locker
            .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; ROLLBACK")
            .await
    });
    let run = wait_backfill(child, Duration::from_secs(60)).await;
    gate.open().await?;
    lock.await
        .context("the lock task")?
        .context("the test's lock")?;
    held?;
    let run = run?;
    ensure!(run.code() == Some(0), "{}", run.text());
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM _switchyard.backfill_chunks \
             WHERE status = 'done' AND checksum_new = checksum_old"
        )? == "10",
        "every chunk verified by the pass"
    );
    assert_verified(&pair, "t").await
}

/// Bulk mode verifies after the rebuild: rows changed, removed and added on new between
/// the copy and the verification (the process stops at a failpoint before the rebuild)
/// are found by the chunk checksums and repaired from old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_verification_repairs_what_changed_after_the_copy() -> Result<()> {
    let pair = md5_pair("int", 5000).await?;
    let stopped = backfill_with_env(
        &pair,
        &[
            "--tables",
            "t",
            "--chunk-rows",
            "1000",
            "--jobs",
            "2",
            "--dual-writes",
            "off",
            "--bulk",
        ],
        ("BACKFILL_TEST_FAILPOINT", "exit-before-verify"),
        BACKFILL_TIMEOUT,
    )
    .await?
    .exits(3)?;
    ensure!(
        chunks_with(&pair.new, "t", "copied") == Some(5),
        "every chunk copied, none verified: {}\n{}",
        on(
            &pair.new,
            "SELECT chunk_no, status, path, checksum_old FROM _switchyard.backfill_chunks ORDER BY 1"
        )?,
        stopped.text()
    );
    ensure!(primary_keys(&pair.new, "t")? == "0");
    on(
        &pair.new,
        "UPDATE t SET v = 'changed' WHERE id = 77; DELETE FROM t WHERE id = 2500; \
         INSERT INTO t VALUES (9999, 'extra')",
    )?;
    backfill(&pair, &["--tables", "t", "--dual-writes", "off"])
        .await?
        .exits(0)?;
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FILTER (WHERE status = 'done'), sum(rows_repaired) \
             FROM _switchyard.backfill_chunks"
        )? == "5|3",
        "three rows repaired"
    );
    // The one pass over new matched the two untouched chunks with the rows hashed on the
    // way from old; the three changed ones were checked again in SQL and repaired.
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FILTER (WHERE checksum_old LIKE 'xxh3:%' AND checksum_new = checksum_old), \
                    count(*) FILTER (WHERE checksum_old NOT LIKE 'xxh3:%' AND rows_repaired > 0) \
             FROM _switchyard.backfill_chunks"
        )? == "2|3",
        "pass and SQL checks: {}",
        on(&pair.new, "SELECT chunk_no, checksum_old, checksum_new, rows_repaired FROM _switchyard.backfill_chunks ORDER BY 1")?
    );
    ensure!(primary_keys(&pair.new, "t")? == "1");
    assert_verified(&pair, "t").await
}

/// Bulk mode (the default with `--dual-writes off`) on a table the one pass cannot verify (a uuid key, an enum column whose
/// binary form differs between clusters in arrays): every chunk is checked range by range
/// in SQL after the rebuild instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_tables_the_pass_cannot_hash_are_checked_in_sql() -> Result<()> {
    let pair = pair_with(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE u (id uuid PRIMARY KEY, m mood, ms mood[]);
         CREATE TABLE e (id int PRIMARY KEY, ms mood[]);",
    )
    .await?;
    on(
        &pair.old,
        "INSERT INTO u SELECT md5(g::text)::uuid, 'ok', ARRAY['sad', 'happy']::mood[] \
         FROM generate_series(1, 3000) g;
         INSERT INTO e SELECT g, ARRAY['ok']::mood[] FROM generate_series(1, 3000) g",
    )?;
    backfill(
        &pair,
        &[
            "--tables",
            "u,e",
            "--chunk-rows",
            "1000",
            // Bulk mode by default: dual writes declared off.
            "--dual-writes",
            "off",
        ],
    )
    .await?
    .exits(0)?;
    ensure!(
        on(
            &pair.new,
            "SELECT count(*), count(*) FILTER (WHERE status = 'done' AND path = 'bulk' \
                                                 AND checksum_old NOT LIKE 'xxh3:%' \
                                                 AND checksum_old = checksum_new) \
             FROM _switchyard.backfill_chunks"
        )? == "6|6",
        "{}",
        on(&pair.new, "SELECT table_name, chunk_no, status, checksum_old, checksum_new FROM _switchyard.backfill_chunks ORDER BY 1, 2")?
    );
    assert_verified(&pair, "u,e").await
}
