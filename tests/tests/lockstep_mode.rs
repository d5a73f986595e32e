//! `mirror.mode = "lockstep"` on a new database that cannot prepare transactions
//! (`max_prepared_transactions = 0`): the proxy says which modes it can run when none is
//! chosen; in lockstep mode pgbench in every protocol mode and an application schema
//! (trigger, cascade) leave both databases equal row by row without replay; and the faults
//! between the two commits (the proxy killed, the secondary's COMMIT failing, the
//! secondary killed under load) are finished from the intents by replay.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_proxy::config::MirrorMode;
use switchyard_proxy::ProxyConfig;
use switchyard_tests::clients::pgbench_clean;
use switchyard_tests::http::get;
use switchyard_tests::mirror::{
    assert_nothing_queued, assert_pgbench_level, assert_same, assert_verified,
    crash_between_commits, eventually, on, pgbench_across_secondary_restart,
    pgbench_pair_without_prepare, reconciler, PGBENCH_TABLES,
};
use switchyard_tests::proxy::{connect_proxy, proxy_url, start_proxy, Pair, DB};
use switchyard_tests::wait::poll_until;
use switchyard_tests::PgCluster;

async fn pair_with(schema: &str) -> Result<Pair> {
    let pair = tokio::task::spawn_blocking(Pair::start_without_prepare).await??;
    for c in [&pair.old, &pair.new] {
        on(c, schema)?;
        on(c, "CHECKPOINT")?;
    }
    Ok(pair)
}

fn lockstep(pair: &Pair) -> ProxyConfig {
    let mut c = pair.config();
    c.mirror.mode = MirrorMode::Lockstep;
    c
}

const APP: &str = "
CREATE TABLE account (id serial PRIMARY KEY, owner text NOT NULL, balance int NOT NULL DEFAULT 0,
                      touched timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE entry (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    account int NOT NULL REFERENCES account ON DELETE CASCADE, amount int NOT NULL);
CREATE TABLE audit (id serial PRIMARY KEY, op text NOT NULL, account int, at timestamptz NOT NULL);
CREATE FUNCTION audit_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (op, account, at) VALUES (TG_OP, coalesce(NEW.id, OLD.id), clock_timestamp());
  RETURN NULL;
END $$;
CREATE TRIGGER audit_account AFTER INSERT OR UPDATE OR DELETE ON account
  FOR EACH ROW EXECUTE FUNCTION audit_account();";

const APP_TABLES: [&str; 3] = ["account", "entry", "audit"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockstep_mirrors_pgbench_and_an_app_without_prepared_transactions() -> Result<()> {
    let pair = pgbench_pair_without_prepare().await?;
    on(&pair.old, APP)?;
    on(&pair.new, APP)?;
    // No mode chosen and new cannot prepare: the proxy names the choices, and starts no
    // dual writes of a kind new cannot follow.
    let refused = start_proxy(pair.config()).await;
    let e = format!(
        "{:#}",
        refused
            .err()
            .context("the proxy started in two-phase mode")?
    );
    ensure!(
        e.contains("max_prepared_transactions = 0")
            && e.contains("lockstep")
            && e.contains("two-phase"),
        "{e}"
    );

    let proxy = start_proxy(lockstep(&pair)).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    for mode in ["simple", "extended", "prepared"] {
        pgbench_clean(&url, &["-c", "4", "-t", "60", "-n", "-M", mode]).await?;
    }
    let c = connect_proxy(&proxy).await?;
    c.batch_execute(
        "INSERT INTO account (owner) VALUES ('a'), ('b'), ('c');
         INSERT INTO entry (account, amount) SELECT id, 10 FROM account;
         BEGIN; UPDATE account SET balance = balance + 5 WHERE owner = 'a';
                INSERT INTO entry (account, amount) VALUES (1, 5); COMMIT;
         DELETE FROM account WHERE owner = 'b';",
    )
    .await?;
    // A schema change mid-session reaches new, and the writes after it name the new
    // column on both.
    c.batch_execute(
        "BEGIN; ALTER TABLE account ADD COLUMN note text; \
         UPDATE account SET note = 'after ddl' WHERE owner = 'a'; COMMIT",
    )
    .await?;
    c.batch_execute("INSERT INTO account (owner, note) VALUES ('d', 'later')")
        .await?;
    // A transaction rolled back on the primary leaves nothing anywhere.
    c.batch_execute("BEGIN; INSERT INTO account (owner) VALUES ('gone'); ROLLBACK")
        .await?;
    assert_same(&pair, &PGBENCH_TABLES)?;
    assert_same(&pair, &APP_TABLES)?;
    ensure!(
        on(&pair.new, "SELECT count(*) FROM entry")? == "3",
        "the cascade reached new"
    );
    // Every intent was cleared behind the commits; nothing was queued or prepared.
    eventually(&pair.old, "SELECT count(*) FROM _switchyard.intents", "0")?;
    assert_nothing_queued(&pair)?;
    ensure!(on(&pair.new, "SELECT count(*) FROM pg_prepared_xacts")? == "0");
    let admin = proxy.admin_addr().context("admin")?;
    let status: serde_json::Value = serde_json::from_str(&get(admin, "/api/status").await?.1)?;
    ensure!(
        status["mirror"]["mode"] == "lockstep"
            && status["mirror"]["commits_queued"] == 0
            && status["mirror"]["commits_two_phase"].as_u64().unwrap_or(0) >= 540,
        "{}",
        status["mirror"]
    );
    let metrics = get(admin, "/metrics").await?.1;
    ensure!(
        metrics.contains("switchyard_mirror_commits_total{outcome=\"lockstep\"}")
            && metrics.contains("switchyard_mirror_intents_cleared_total"),
        "lockstep commits and cleared intents are counted"
    );
    Ok(())
}

const LOCKSTEP_ARGS: &[&str] = &["--mirror-mode", "lockstep"];

async fn crash_at(pair: &Pair, failpoint: &str, id: i32) -> Result<()> {
    switchyard_tests::mirror::crash_at(pair, LOCKSTEP_ARGS, failpoint, id).await
}

/// Polls until recovery moved every intent on old into its retry log (`queued` records).
fn intents_queued(pair: &Pair, queued: &str) -> Result<()> {
    tokio::task::block_in_place(|| {
        poll_until(
            "recovery to move the intents into the retry log",
            Duration::from_secs(30),
            || {
                let intents = on(&pair.old, "SELECT count(*) FROM _switchyard.intents")?;
                let records = on(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")?;
                Ok((intents == "0" && records == queued).then_some(()))
            },
        )
    })
}

/// Killed after the primary's COMMIT, before the secondary's: the intent is all that is
/// left of the transaction on new's behalf; replay finishes it. The second time the
/// restarted proxy's recovery moves the intent into the retry log by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_killed_between_the_two_commits_is_finished_from_the_intent() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    crash_between_commits(&pair, LOCKSTEP_ARGS).await?;
    ensure!(on(&pair.old, "SELECT count(*) FROM _switchyard.intents")? == "1");
    let run = reconciler(&pair, "replay", &[]).await?;
    ensure!(run.code() == Some(0), "replay:\n{}", run.text());
    ensure!(
        run.stdout.contains("intents left behind: 1 queued"),
        "{}",
        run.text()
    );
    ensure!(on(&pair.old, "SELECT count(*) FROM _switchyard.intents")? == "0");
    assert_verified(&pair, "t").await?;

    // Killed before the primary's COMMIT: nothing happened anywhere.
    crash_at(&pair, "after-prepare", 3).await?;
    ensure!(on(&pair.old, "SELECT count(*) FROM t")? == "1");
    ensure!(on(&pair.old, "SELECT count(*) FROM _switchyard.intents")? == "0");

    crash_at(&pair, "after-primary-commit", 2).await?;
    let proxy = start_proxy(lockstep(&pair)).await?;
    intents_queued(&pair, "1")?;
    drop(proxy);
    let run = reconciler(&pair, "replay", &[]).await?;
    ensure!(run.code() == Some(0), "replay:\n{}", run.text());
    ensure!(on(&pair.new, "SELECT count(*) FROM t")? == "2");
    assert_verified(&pair, "t").await
}

/// The secondary refuses the COMMIT (a deferred check there) after the primary committed:
/// the client was answered from the primary's commit, the intent stays, recovery queues it,
/// and replay brings new level once the cause is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_secondary_commit_is_left_to_the_intent() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    let proxy = start_proxy(lockstep(&pair)).await?;
    on(
        &pair.new,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.v = 'poison' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION refuse();
         ALTER TABLE t ENABLE ALWAYS TRIGGER refuse;",
    )?;
    let c = connect_proxy(&proxy).await?;
    c.batch_execute("INSERT INTO t VALUES (1, 'fine')").await?;
    c.batch_execute("INSERT INTO t VALUES (2, 'poison')")
        .await
        .context("the primary committed: the client hears of success")?;
    c.batch_execute("INSERT INTO t VALUES (3, 'fine')").await?;
    ensure!(on(&pair.old, "SELECT count(*) FROM t")? == "3");
    eventually(
        &pair.new,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM t",
        "1,3",
    )?;
    let admin = proxy.admin_addr().context("admin")?;
    intents_queued(&pair, "1")?;
    let metrics = get(admin, "/metrics").await?.1;
    ensure!(
        metrics.contains("switchyard_mirror_intents_unfinished_total 1"),
        "the failed secondary commit is counted"
    );
    on(&pair.new, "DROP TRIGGER refuse ON t")?;
    let run = reconciler(&pair, "replay", &[]).await?;
    ensure!(run.code() == Some(0), "replay:\n{}", run.text());
    assert_same(&pair, &["t"])?;
    Ok(())
}

/// The secondary stopped (immediate) under pgbench and restarted: no client error; what
/// was queued and the intents of the commits cut off are replayed; verify equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_killed_under_pgbench_in_lockstep_mode_then_replayed() -> Result<()> {
    let pair = pgbench_pair_without_prepare().await?;
    let proxy = start_proxy(lockstep(&pair)).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    pgbench_across_secondary_restart(&pair, &url).await?;
    drop(proxy);
    let run = reconciler(&pair, "replay", &[]).await?;
    ensure!(run.code() == Some(0), "replay:\n{}", run.text());
    ensure!(on(&pair.old, "SELECT count(*) FROM _switchyard.intents")? == "0");
    assert_pgbench_level(&pair).await
}

/// The sweeper deletes an intent only once the secondary's commit is durable there and
/// still present: after a commit acknowledged under `synchronous_commit = off` (the WAL
/// writer idle for 10 s), the flush moves the secondary's WAL flush position past it, and of
/// the marks asked about it confirms only the one that exists (a mark lost in a crash
/// leaves its intent to recovery). The flush leaves no row of its own behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweepers_flush_makes_acknowledged_commits_durable() -> Result<()> {
    use switchyard_core::intents::flush_commits;
    let new = tokio::task::spawn_blocking(|| {
        PgCluster::builder()
            .setting("wal_writer_delay", "10s")
            .start()
    })
    .await??;
    new.create_database(DB)?;
    let c = new.connect(DB).await?;
    c.batch_execute(switchyard_core::retry::APPLIED_STATEMENTS_SQL)
        .await?;
    c.batch_execute("CREATE TABLE t (id int)").await?;
    c.batch_execute(
        "BEGIN; INSERT INTO t VALUES (1); \
         INSERT INTO _switchyard.applied_intents (xid) VALUES ('41'); COMMIT",
    )
    .await?;
    let written: String = c
        .query_one("SELECT pg_catalog.pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let confirmed = flush_commits(&c, &[], &["41".to_string(), "42".to_string()]).await?;
    ensure!(confirmed == ["41"], "confirmed {confirmed:?}, want only 41");
    let durable: bool = c
        .query_one(
            "SELECT pg_catalog.pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
            &[&written],
        )
        .await?
        .get(0);
    ensure!(durable, "the commit at {written} is not flushed");
    flush_commits(&c, &["41".to_string()], &[]).await?;
    let left: i64 = c
        .query_one("SELECT count(*) FROM _switchyard.applied_intents", &[])
        .await?
        .get(0);
    ensure!(
        left == 0,
        "{left} marks left after the settled one was deleted"
    );
    Ok(())
}

/// The cutover's write phase in lockstep mode, neither database able to prepare: pgbench
/// through two instances while writes move to new and back and forward again; no client
/// error, both databases equal row by row without replay, every intent cleared on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_move_to_new_and_back_in_lockstep_mode() -> Result<()> {
    use switchyard_tests::cutover::{config, flip, phase_of, port_of};
    let pair = pgbench_pair_without_prepare().await?;
    let instance = |id: &str| {
        let mut c = config(&pair, id);
        c.mirror.mode = MirrorMode::Lockstep;
        c
    };
    let a = start_proxy(instance("a")).await?;
    let b = start_proxy(instance("b")).await?;
    let loads = [(&a, "prepared"), (&b, "simple")].map(|(p, mode)| {
        let url = proxy_url(p, PgCluster::USER);
        tokio::spawn(async move {
            pgbench_clean(&url, &["-c", "2", "-j", "2", "-T", "6", "-n", "-M", mode]).await
        })
    });
    for phase in ["writes-new", "shadow", "writes-new"] {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (status, report) = flip(&a, &format!(r#"{{"to": "{phase}"}}"#)).await?;
        ensure!(
            status == 200,
            "flip to {phase} under load: {status} {report}"
        );
        ensure!(phase_of(&b).await?.0 == phase);
    }
    for load in loads {
        load.await??;
    }
    let c = connect_proxy(&b).await?;
    ensure!(port_of(&c).await? == pair.new.port(), "new is the primary");
    assert_same(&pair, &PGBENCH_TABLES)?;
    for side in [&pair.old, &pair.new] {
        eventually(side, "SELECT count(*) FROM _switchyard.intents", "0")?;
        ensure!(on(side, "SELECT count(*) FROM _switchyard.retry_log")? == "0");
    }
    Ok(())
}
