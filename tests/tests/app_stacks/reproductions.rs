//! Minimal reproductions of the proxy bugs the application stacks found, one test each;
//! each test's comment says what happens and where.

use super::*;
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use switchyard_tests::mirror::{
    assert_all_tables_same, assert_nothing_queued, assert_same, init_tracing, on, reconciler,
    retry_records,
};
use switchyard_tests::proxy::{batch_fails, connect_proxy, proxy_url, start_proxy, Pair};
use switchyard_tests::PgCluster;
use tokio_postgres::error::SqlState;

/// Django makes every foreign key DEFERRABLE INITIALLY DEFERRED, so a bad reference fails
/// at COMMIT. PostgreSQL ends a transaction whose COMMIT failed; through the proxy the
/// client is told the session is idle while old's backend stays in the aborted transaction,
/// and every later statement fails with 25P02 until the client happens to send ROLLBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_ends_the_transaction() -> Result<()> {
    let s = start(Some(
        "CREATE TABLE p (id int PRIMARY KEY);
         CREATE TABLE c (id int PRIMARY KEY, pid int REFERENCES p DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO p VALUES (1);",
    ))
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("BEGIN").await?;
    c.batch_execute("INSERT INTO c VALUES (1, 999)").await?;
    // COMMIT fails on the deferred foreign key.
    batch_fails(&c, "COMMIT", &SqlState::FOREIGN_KEY_VIOLATION).await?;
    let after = c
        .query_one("SELECT 1", &[])
        .await
        .context("the statement after a failed COMMIT")?;
    ensure!(after.get::<_, i32>(0) == 1);
    c.batch_execute("INSERT INTO c VALUES (2, 1)").await?;
    check_mirrored(&s, Writers::ProxyOnly).await?;
    ensure!(on(&s.pair.new, "SELECT string_agg(id::text, ',') FROM c")? == "2");
    Ok(())
}

/// `CREATE TEMP TABLE ... AS SELECT` in a transaction that already wrote: Switchyard's DDL
/// event trigger captures the rows of the new table without checking that it is
/// temporary (`_switchyard.on_ddl` calls `capture_all` even when `watch` refused the
/// table), the lockstep drain cannot read them, and the client's COMMIT is refused with
/// XX000 and everything rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_as_select_in_a_written_transaction_commits() -> Result<()> {
    let s = start(Some("CREATE TABLE t (id int PRIMARY KEY, v text)")).await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute(
        "BEGIN; INSERT INTO t VALUES (1, 'before'); CREATE TEMP TABLE scratch AS SELECT 1 AS a; \
         INSERT INTO t VALUES (2, 'after'); COMMIT",
    )
    .await
    .context("a transaction with CREATE TEMP TABLE ... AS")?;
    // The same with SELECT INTO.
    c.batch_execute(
        "BEGIN; INSERT INTO t VALUES (3, 'before'); SELECT * INTO TEMP scratch2 FROM t; COMMIT",
    )
    .await
    .context("a transaction with SELECT ... INTO TEMP")?;
    check_mirrored(&s, Writers::ProxyOnly).await?;
    ensure!(count(&s.pair.new, "SELECT count(*) FROM t")? == 3);
    Ok(())
}

/// `CREATE TEMP TABLE ... AS SELECT` outside a transaction the proxy claimed (autocommit,
/// or before the first write of a transaction): its rows land in the change log, the table
/// is gone when the drain looks it up, and the drain stops there for good: writes made
/// straight on old never reach new (`log_error` in /api/status: "looking up table oid N
/// on the primary: query returned an unexpected number of rows").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_as_select_leaves_the_change_log_working() -> Result<()> {
    let s = start(Some("CREATE TABLE t (id int PRIMARY KEY, v text)")).await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("CREATE TEMP TABLE scratch AS SELECT 1 AS a")
        .await?;
    c.batch_execute("INSERT INTO t SELECT a + 1, 'through the proxy' FROM scratch")
        .await?;
    drop(c);
    on(&s.pair.old, "INSERT INTO t VALUES (1, 'straight on old')")?;
    wait_on(
        &s.pair.new,
        "the write made straight on old to reach new",
        Duration::from_secs(20),
        "SELECT count(*) FROM t",
        "2",
    )?;
    check_mirrored(&s, Writers::AlsoDirect).await?;
    Ok(())
}

/// `ALTER TABLE ... ADD COLUMN` with a volatile default fills the existing rows by a table
/// rewrite, which fires no row trigger, so nothing is captured; the DDL is mirrored as text
/// and new computes its own values. What Django's `db_default=Now()`, SQLAlchemy/Alembic's
/// `server_default=func.now()` in add_column and Rails' `default: -> { "gen_random_uuid()" }`
/// send. (Also a serial or identity column added after CLUSTER ran on old only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_added_with_volatile_default_has_old_values_on_new() -> Result<()> {
    let s = start(Some("CREATE TABLE t (id int PRIMARY KEY)")).await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO t SELECT generate_series(1, 3)")
        .await?;
    c.batch_execute(
        "ALTER TABLE t ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(), \
         ADD COLUMN token uuid NOT NULL DEFAULT gen_random_uuid()",
    )
    .await?;
    check_mirrored(&s, Writers::ProxyOnly).await?;
    Ok(())
}

/// A `json` column (not jsonb) may hold `\u0000`. UPDATE and DELETE of such rows work on
/// old with capture installed (keys are built from json, not jsonb). Their images cannot be
/// read back on new (`json_populate_recordset` refuses `\u0000`), so those rows alone go by
/// key through the retry log, the rest of the transaction in lockstep; replay makes them
/// equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_with_nul_escape_goes_by_key_and_replay_makes_it_equal() -> Result<()> {
    let s = start(Some(
        r#"CREATE TABLE hooks (id int PRIMARY KEY, body json, n int NOT NULL DEFAULT 0);
           CREATE TABLE other (id int PRIMARY KEY);
           INSERT INTO hooks VALUES (1, '{"s": "\u0000"}'), (2, '{"s": "\u0000"}'), (3, '{"s": "x"}');"#,
    ))
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    // (A statement's rows travel together: row 3 is updated by a statement of its own.)
    c.batch_execute("BEGIN; UPDATE hooks SET n = n + 1 WHERE id = 1; UPDATE hooks SET n = n + 1 WHERE id = 3; INSERT INTO other VALUES (1); COMMIT")
        .await
        .context("UPDATE of a row holding \\u0000 in a json column")?;
    c.batch_execute("DELETE FROM hooks WHERE id = 2")
        .await
        .context("DELETE of a row holding \\u0000 in a json column")?;
    c.batch_execute(r#"INSERT INTO hooks VALUES (4, '{"s": "\u0000"}')"#)
        .await?;
    // In lockstep: the other table, the row without \u0000, the delete (by key).
    tokio::task::block_in_place(|| assert_same(&s.pair, &["other"]))?;
    ensure!(count(&s.pair.new, "SELECT n FROM hooks WHERE id = 3")? == 1);
    ensure!(count(&s.pair.new, "SELECT count(*) FROM hooks WHERE id = 2")? == 0);
    ensure!(
        retry_records(&s.pair)? == 2,
        "rows 1 and 4 wait in the retry log, by key"
    );
    reconciler(&s.pair, "replay", &[]).await?.exits(0)?;
    tokio::task::block_in_place(|| assert_all_tables_same(&s.pair))?;
    assert_nothing_queued(&s.pair)
}

/// hstore (Django's HStoreField) has a cast to json, so the row image holds a JSON object,
/// which new cannot read back as hstore (XX000 "Syntax error near ..."): the row goes to
/// the retry log. Any type with such a cast (PostGIS geometry: GeoJSON) is alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hstore_values_reach_new() -> Result<()> {
    let s = start(Some(
        "CREATE EXTENSION hstore; CREATE TABLE attrs (id int PRIMARY KEY, h hstore)",
    ))
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO attrs VALUES (1, 'color=>red, size=>NULL'), (2, '')")
        .await?;
    check_mirrored(&s, Writers::ProxyOnly).await?;
    Ok(())
}

/// A user trigger set `ENABLE ALWAYS` (what logical-replication setups ask for) would fire
/// on new for the captured rows, session_replication_role = replica notwithstanding, and
/// make its effects twice. The proxy refuses to start, naming it and the fix; with the
/// trigger made ordinary on new it runs, and the trigger's rows arrive once, captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_enabled_user_trigger_does_not_fire_twice() -> Result<()> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    let schema = "CREATE TABLE item (id int PRIMARY KEY, v text);
         CREATE TABLE item_log (id bigserial PRIMARY KEY, item int, op text);
         CREATE FUNCTION log_item() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO item_log (item, op) VALUES (NEW.id, TG_OP); RETURN NULL; END $$;
         CREATE TRIGGER item_log AFTER INSERT OR UPDATE ON item FOR EACH ROW EXECUTE FUNCTION log_item();
         ALTER TABLE item ENABLE ALWAYS TRIGGER item_log;";
    on(&pair.old, schema)?;
    on(&pair.new, schema)?;
    let refused = start_proxy(pair.config())
        .await
        .err()
        .context("the proxy must refuse a new database with ALWAYS triggers")?;
    let text = format!("{refused:#}");
    ensure!(
        text.contains("item_log (on item)") && text.contains("ENABLE TRIGGER"),
        "{text}"
    );
    on(&pair.new, "ALTER TABLE item ENABLE TRIGGER item_log")?;
    let proxy = start_proxy(pair.config()).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    let s = Stack {
        pair,
        proxy,
        url,
        started: Instant::now(),
    };
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO item VALUES (1, 'a'); UPDATE item SET v = 'b' WHERE id = 1")
        .await?;
    // The trigger's enabled state differs between the two on purpose: rows only.
    tokio::task::block_in_place(|| assert_all_tables_same(&s.pair))?;
    assert_nothing_queued(&s.pair)?;
    ensure!(count(&s.pair.new, "SELECT count(*) FROM item_log")? == 2);
    Ok(())
}
