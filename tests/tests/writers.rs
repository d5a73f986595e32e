//! Issue #20 (write-path trust): every writer into a target database (the backfill's
//! loading sessions on new, retry-log replay, repair in either direction) runs with
//! `session_replication_role = replica` and `switchyard.apply = on`, so the target's own
//! triggers and foreign-key checks and actions do not fire (their effects arrive copied
//! from the source) and Switchyard's `ENABLE ALWAYS` capture triggers skip its writes. A
//! role that may not set the role is refused before any work, naming the fix.

use anyhow::{ensure, Result};
use switchyard_core::connect::{check_writer, connect, Db, WriteMode, Writer, WriterError};
use switchyard_tests::backfill::{backfill, run_backfill, BACKFILL_TIMEOUT};
use switchyard_tests::mirror::{assert_verified, on, pair_with, reconciler, RUN_TIMEOUT};
use switchyard_tests::proxy::{Pair, DB};
use switchyard_tests::reconciler::{run_reconciler, ToolRun};
use switchyard_tests::PgCluster;

/// Every row of `table` as text, in key order.
fn rows(c: &PgCluster, table: &str) -> Result<Vec<String>> {
    Ok(
        on(c, &format!("SELECT t::text FROM {table} t ORDER BY id"))?
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// `table` holds the same rows on both sides, compared row by row.
fn assert_same_rows(pair: &Pair, table: &str) -> Result<()> {
    let (old, new) = (rows(&pair.old, table)?, rows(&pair.new, table)?);
    let first = old
        .iter()
        .zip(&new)
        .find(|(o, n)| o != n)
        .map(|(o, n)| format!("old {o} / new {n}"));
    ensure!(
        old == new,
        "{table}: {} rows on old, {} on new; first difference: {}",
        old.len(),
        new.len(),
        first.unwrap_or_else(|| "(one side has more rows)".into())
    );
    Ok(())
}

/// A capture trigger as Switchyard installs it on a primary: `ENABLE ALWAYS` (it fires
/// under `session_replication_role = replica` too) and silent for sessions with
/// `switchyard.apply = on`. Whatever it sees lands in `captured`.
fn capture_trigger(tables: &[&str]) -> String {
    let mut sql = "CREATE TABLE captured (n bigserial PRIMARY KEY, tbl text, op text);
         CREATE FUNCTION capture() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF current_setting('switchyard.apply', true) IS DISTINCT FROM 'on' THEN
             INSERT INTO captured (tbl, op) VALUES (TG_TABLE_NAME, TG_OP);
           END IF;
           RETURN NULL;
         END $$;"
        .to_string();
    for t in tables {
        sql.push_str(&format!(
            "CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON {t}
               FOR EACH ROW EXECUTE FUNCTION capture();
             ALTER TABLE {t} ENABLE ALWAYS TRIGGER capture;"
        ));
    }
    sql
}

/// A user trigger that makes any write to `tables` fail: it must never fire on a
/// Switchyard writer's session.
fn refusing_trigger(tables: &[&str]) -> String {
    let mut sql = "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'user trigger % fired on %', TG_NAME, TG_TABLE_NAME; END $$;"
        .to_string();
    for t in tables {
        sql.push_str(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON {t}
               FOR EACH ROW EXECUTE FUNCTION refuse();"
        ));
    }
    sql
}

/// Finding 9's schema: an AFTER trigger on `wallet` writes `audit`, whose key is a
/// bigserial.
const WALLET_SCHEMA: &str = "
    CREATE TABLE audit (id bigserial PRIMARY KEY, wallet_id int NOT NULL,
                        balance numeric NOT NULL, op text NOT NULL);
    CREATE TABLE wallet (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
    CREATE FUNCTION audit_wallet() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO audit (wallet_id, balance, op) VALUES (NEW.id, NEW.balance, TG_OP);
      RETURN NULL;
    END $$;
    CREATE TRIGGER wallet_audit AFTER INSERT OR UPDATE ON wallet
      FOR EACH ROW EXECUTE FUNCTION audit_wallet();";

/// Finding 9 as the user ran it: old with the audit trigger and some wallet rows, new's
/// schema made by `pg_dump --schema-only` from old (so new has the trigger too), then
/// the backfill with `extra` flags. `--jobs 1` pins the order of the report (`audit`
/// copied, then `wallet` loaded; with more jobs the two race). Before issue #20 the
/// wallet's chunk failed on every attempt (new's trigger inserted audit rows whose ids
/// collided with the copied ones) and the run gave up with exit 2.
async fn finding_9(extra: &[&str]) -> Result<()> {
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    on(&pair.old, WALLET_SCHEMA)?;
    on(
        &pair.old,
        "INSERT INTO wallet SELECT g, 'owner ' || g, g * 10 FROM generate_series(1, 300) g;
         UPDATE wallet SET balance = balance + 1 WHERE id % 3 = 0;",
    )?;
    let dump = pair.old.schema_dump(DB)?;
    pair.new.psql_script(DB, &dump)?;
    // New also carries a capture trigger like Switchyard's: the backfill's writes must
    // look like Switchyard's own to it.
    on(&pair.new, &capture_trigger(&["wallet", "audit"]))?;
    let mut flags = vec!["--jobs", "1"];
    flags.extend_from_slice(extra);
    backfill(&pair, &flags).await?.exits(0)?;
    ensure!(rows(&pair.old, "audit")?.len() == 400, "old's audit rows");
    assert_same_rows(&pair, "wallet")?;
    assert_same_rows(&pair, "audit")?;
    ensure!(
        on(&pair.new, "SELECT count(*) FROM captured")? == "0",
        "the capture trigger saw the backfill's writes: {}",
        on(
            &pair.new,
            "SELECT string_agg(tbl || ' ' || op, ', ') FROM captured"
        )?
    );
    assert_verified(&pair, "audit,wallet").await
}

/// Finding 9 with default flags (the merge path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_does_not_fire_new_triggers() -> Result<()> {
    finding_9(&[]).await
}

/// Finding 9 on the direct path (dual writes off, bulk mode off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_direct_path_does_not_fire_new_triggers() -> Result<()> {
    finding_9(&["--dual-writes", "off", "--bulk", "off"]).await
}

/// Finding 9 in bulk mode (keys dropped while loading, rebuilt, one-pass verification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_bulk_mode_does_not_fire_new_triggers() -> Result<()> {
    finding_9(&["--dual-writes", "off"]).await
}

/// Finding 9 with `--scan-old` (each table read in one scan, loaded over its own sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_scan_does_not_fire_new_triggers() -> Result<()> {
    finding_9(&["--dual-writes", "off", "--scan-old"]).await
}

const PARENT_CHILD: &str = "
    CREATE TABLE parent (id int PRIMARY KEY, v text NOT NULL);
    CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent, v text);
    INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 20) g;
    INSERT INTO child SELECT g, g, 'c' || g FROM generate_series(1, 20) g;";

/// Settings under which the test's own writes slip past both kinds of trigger.
const QUIET: &str = "SET session_replication_role = replica; SET switchyard.apply = on;";

/// A row record for `table`'s key `id` in old's retry log.
fn retry_record(table: &str, id: i32) -> String {
    format!(
        "INSERT INTO _switchyard.retry_log (idempotency_key, kind, table_name, key, origin, reason) \
         VALUES ('test-{table}-{id}', 'row', '\"public\".\"{table}\"', '{{\"id\": {id}}}', \
                 '{{\"instance\": \"test\", \"ordinal\": 0}}', 'test')"
    )
}

/// Replay and repair write without firing the target's user triggers, foreign-key checks
/// or (thanks to `switchyard.apply`) its capture triggers: new refuses every write by a
/// trigger, a child's record is replayed before its parent's, and `repair --source new`
/// writes into old, which carries the refusing and the capture trigger too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_repair_do_not_fire_target_triggers() -> Result<()> {
    let pair = pair_with(PARENT_CHILD).await?;
    // Drift the retry log will name: rows only old has (the parent and its child), a
    // changed row, a deleted one.
    on(
        &pair.old,
        "INSERT INTO parent VALUES (21, 'p21'); INSERT INTO child VALUES (21, 21, 'c21');
         UPDATE parent SET v = 'changed' WHERE id = 2; DELETE FROM child WHERE id = 3;",
    )?;
    on(&pair.old, switchyard_core::retry::EMBEDDED_SCHEMA_SQL)?;
    // Applied table by table in name order: child 21 before its parent 21, which a
    // foreign-key check on new would refuse.
    for (table, id) in [("child", 21), ("child", 3), ("parent", 2), ("parent", 21)] {
        on(&pair.old, &retry_record(table, id))?;
    }
    let guarded = ["parent", "child"];
    on(&pair.new, &refusing_trigger(&guarded))?;
    on(&pair.new, &capture_trigger(&guarded))?;

    reconciler(&pair, "replay", &[]).await?.exits(0)?;
    ensure!(
        on(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")? == "0",
        "records left: {}",
        on(
            &pair.old,
            "SELECT string_agg(table_name || ' ' || key::text || ': ' || coalesce(last_error, ''), '; ') \
             FROM _switchyard.retry_log"
        )?
    );
    assert_same_rows(&pair, "parent")?;
    assert_same_rows(&pair, "child")?;
    ensure!(on(&pair.new, "SELECT count(*) FROM captured")? == "0");

    // Repair from old: differences injected on new behind its triggers' back.
    on(
        &pair.new,
        &format!(
            "{QUIET}
         UPDATE parent SET v = 'drift' WHERE id = 5; DELETE FROM child WHERE id = 7;
         INSERT INTO child VALUES (99, 1, 'extra');"
        ),
    )?;
    reconciler(&pair, "repair", &["--tables", "parent,child"])
        .await?
        .exits(0)?;
    assert_same_rows(&pair, "parent")?;
    assert_same_rows(&pair, "child")?;
    ensure!(on(&pair.new, "SELECT count(*) FROM captured")? == "0");

    // Repair from new writes into old, where the capture triggers live.
    on(&pair.old, &refusing_trigger(&guarded))?;
    on(&pair.old, &capture_trigger(&guarded))?;
    on(
        &pair.old,
        &format!(
            "{QUIET} UPDATE parent SET v = 'old drift' WHERE id = 8; DELETE FROM child WHERE id = 9;"
        ),
    )?;
    reconciler(
        &pair,
        "repair",
        &["--tables", "parent,child", "--source", "new"],
    )
    .await?
    .exits(0)?;
    assert_same_rows(&pair, "parent")?;
    assert_same_rows(&pair, "child")?;
    ensure!(
        on(&pair.old, "SELECT count(*) FROM captured")? == "0",
        "old's capture trigger saw the repair's writes"
    );
    assert_verified(&pair, "parent,child").await
}

/// The role the non-superuser tests connect as.
const ROLE: &str = "mover";

/// A LOGIN role that owns nothing and is no superuser, with what the tools need besides
/// `session_replication_role`: to create `_switchyard` and use the tables.
fn create_role(c: &PgCluster) -> Result<()> {
    on(
        c,
        &format!(
            "CREATE ROLE {ROLE} LOGIN;
             GRANT CREATE ON DATABASE {DB} TO {ROLE};
             GRANT ALL ON ALL TABLES IN SCHEMA public TO {ROLE};
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {ROLE};"
        ),
    )?;
    Ok(())
}

/// `c`'s URL for [`ROLE`] (the clusters trust every local role).
fn role_url(c: &PgCluster) -> String {
    c.url(DB).replacen(
        &format!("://{}@", PgCluster::USER),
        &format!("://{ROLE}@"),
        1,
    )
}

/// The refusal: exit 2, naming the side, the role and every fix.
fn assert_refused(run: &ToolRun, side: &str) -> Result<()> {
    ensure!(run.code() == Some(2), "{}", run.text());
    for part in [
        format!("role \"{ROLE}\" may not set session_replication_role on the {side} database"),
        "superuser".to_string(),
        "rds_superuser".to_string(),
        format!("GRANT SET ON PARAMETER session_replication_role TO \"{ROLE}\""),
    ] {
        ensure!(
            run.stderr.contains(&part),
            "stderr lacks {part:?}:\n{}",
            run.text()
        );
    }
    Ok(())
}

/// A session's `session_replication_role` and `switchyard.apply` (empty when unset).
async fn writer_settings(c: &tokio_postgres::Client) -> Result<(String, String)> {
    let row = c
        .query_one(
            "SELECT current_setting('session_replication_role'), \
                    coalesce(current_setting('switchyard.apply', true), '')",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// `switchyard-reconciler ARGS --old .. --new ..` as [`ROLE`].
async fn reconciler_as_role(pair: &Pair, args: &[&str]) -> Result<ToolRun> {
    let (old, new) = (role_url(&pair.old), role_url(&pair.new));
    let mut all = args.to_vec();
    all.extend(["--old", &old, "--new", &new]);
    run_reconciler(&all, RUN_TIMEOUT).await
}

/// `switchyard-backfill --old .. --new .. ARGS` as [`ROLE`].
async fn backfill_as_role(pair: &Pair, args: &[&str]) -> Result<ToolRun> {
    let (old, new) = (role_url(&pair.old), role_url(&pair.new));
    let mut all = vec!["--old", &old, "--new", &new];
    all.extend_from_slice(args);
    run_backfill(&all, BACKFILL_TIMEOUT).await
}

/// A role that may not set `session_replication_role`: the backfill, replay and repair
/// refuse to start (exit 2, before writing anything) with the fix; verify, which only
/// reads, runs. `--fire-new-triggers` needs no such right (and new's trigger fires).
/// After `GRANT SET ON PARAMETER` on new, backfill, replay and repair run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_the_right_is_refused_with_the_fix() -> Result<()> {
    let pair = pair_with(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE fired_on (id int PRIMARY KEY, v text);",
    )
    .await?;
    on(
        &pair.old,
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g;
         INSERT INTO fired_on SELECT g, 'f' || g FROM generate_series(1, 50) g;",
    )?;
    // On new, a trigger that counts the rows loaded into fired_on.
    on(
        &pair.new,
        "CREATE TABLE fired (n bigserial PRIMARY KEY);
         CREATE FUNCTION count_row() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO fired DEFAULT VALUES; RETURN NULL; END $$;
         CREATE TRIGGER count_row AFTER INSERT ON fired_on FOR EACH ROW EXECUTE FUNCTION count_row();",
    )?;
    create_role(&pair.old)?;
    create_role(&pair.new)?;

    let run = backfill_as_role(&pair, &[]).await?;
    assert_refused(&run, "new")?;
    ensure!(
        on(&pair.new, "SELECT to_regnamespace('_switchyard') IS NULL")? == "t",
        "the refused backfill wrote its chunk table"
    );
    let run = reconciler_as_role(&pair, &["replay"]).await?;
    assert_refused(&run, "new")?;
    ensure!(
        on(&pair.old, "SELECT to_regnamespace('_switchyard') IS NULL")? == "t",
        "the refused replay created the retry log"
    );
    let run = reconciler_as_role(&pair, &["repair", "--tables", "t"]).await?;
    assert_refused(&run, "new")?;
    // From new the writes go into old, so old is the side that refuses.
    let run = reconciler_as_role(&pair, &["repair", "--tables", "t", "--source", "new"]).await?;
    assert_refused(&run, "old")?;
    // Reads need no such right (the tables differ: new is still empty).
    reconciler_as_role(&pair, &["verify", "--tables", "t"])
        .await?
        .exits(1)?;

    // The library's typed answer, and the probe leaves the session as it was.
    let mut probe = connect(Db::New, &role_url(&pair.new), "test").await?;
    match check_writer(&mut probe, Db::New, WriteMode::Replica).await {
        Err(WriterError::NotPermitted { db, role, .. }) => {
            ensure!(
                db == Db::New && role == format!("\"{ROLE}\""),
                "{db} {role}"
            )
        }
        other => anyhow::bail!("expected NotPermitted, got {other:?}"),
    }
    check_writer(&mut probe, Db::New, WriteMode::FireTriggers).await?;

    // Letting new's triggers fire needs no right, and they fire.
    backfill_as_role(&pair, &["--tables", "fired_on", "--fire-new-triggers"])
        .await?
        .exits(0)?;
    assert_same_rows(&pair, "fired_on")?;
    ensure!(on(&pair.new, "SELECT count(*) FROM fired")? == "50");

    on(
        &pair.new,
        &format!("GRANT SET ON PARAMETER session_replication_role TO {ROLE}"),
    )?;
    backfill_as_role(&pair, &["--tables", "t"])
        .await?
        .exits(0)?;
    assert_same_rows(&pair, "t")?;
    check_writer(&mut probe, Db::New, WriteMode::Replica).await?;
    ensure!(
        writer_settings(&probe).await? == ("origin".into(), "".into()),
        "the probe rolled back"
    );
    let writer = Writer::set_up(probe, Db::New, WriteMode::Replica).await?;
    ensure!(writer_settings(&writer).await? == ("replica".into(), "on".into()));

    on(
        &pair.old,
        "UPDATE t SET v = 'changed' WHERE id = 7; DELETE FROM t WHERE id = 8;",
    )?;
    on(&pair.old, switchyard_core::retry::EMBEDDED_SCHEMA_SQL)?;
    on(
        &pair.old,
        // The proxy creates the retry log as the role replay runs as.
        &format!(
            "ALTER SCHEMA _switchyard OWNER TO {ROLE}; ALTER TABLE _switchyard.retry_log OWNER TO {ROLE};"
        ),
    )?;
    on(&pair.old, &retry_record("t", 7))?;
    reconciler_as_role(&pair, &["replay"]).await?.exits(0)?;
    ensure!(on(&pair.new, "SELECT v FROM t WHERE id = 7")? == "changed");
    reconciler_as_role(&pair, &["repair", "--tables", "t"])
        .await?
        .exits(0)?;
    assert_same_rows(&pair, "t")?;
    Ok(())
}
