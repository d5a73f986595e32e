//! Sessions that change role while dual writes run: `SET ROLE` to an application role (as
//! row-level-security apps and PostgREST do, `SET LOCAL ROLE` per transaction) must mirror
//! like any other session, though the proxy's own statements then run as that role; the
//! capture functions it calls stay closed to roles that log in themselves; and when the
//! proxy cannot capture a statement's changes, the client is told, never answered as if
//! the write were done.

use anyhow::{bail, ensure, Result};
use switchyard_tests::mirror::{
    assert_nothing_queued, assert_same, init_tracing, on, pair_with, proxied, retry_records,
    Proxied,
};
use switchyard_tests::proxy::{batch_each, connect_proxy, start_proxy, DB};
use tokio_postgres::error::SqlState;

const SCHEMA: &str = "CREATE TABLE acct (id int PRIMARY KEY, owner text, balance int);
    CREATE TABLE acct_log (n serial PRIMARY KEY, id int, delta int);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_set_role_mirror_and_capture_stays_closed_to_other_roles() -> Result<()> {
    init_tracing();
    let pair = pair_with(SCHEMA).await?;
    let roles = "CREATE ROLE app_user NOLOGIN;
        GRANT ALL ON acct, acct_log, acct_log_n_seq TO app_user;
        CREATE ROLE outsider LOGIN PASSWORD 'outsider-pw';
        GRANT ALL ON acct TO outsider;";
    on(&pair.old, roles)?;
    on(&pair.new, roles)?;
    let proxy = start_proxy(pair.config()).await?;
    let c = connect_proxy(&proxy).await?;

    // Session-wide SET ROLE: autocommit writes, an explicit transaction, a DDL-free batch.
    c.batch_execute("SET ROLE app_user").await?;
    c.batch_execute("INSERT INTO acct VALUES (1, 'ann', 100), (2, 'bob', 50)")
        .await?;
    c.batch_execute(
        "BEGIN; UPDATE acct SET balance = balance - 10 WHERE id = 1;
         UPDATE acct SET balance = balance + 10 WHERE id = 2;
         INSERT INTO acct_log (id, delta) VALUES (1, -10), (2, 10); COMMIT",
    )
    .await?;
    c.execute(
        "INSERT INTO acct VALUES ($1, $2, $3)",
        &[&3i32, &"cy", &7i32],
    )
    .await?;
    let who: String = c.query_one("SELECT current_user::text", &[]).await?.get(0);
    ensure!(who == "app_user", "{who}");
    c.batch_execute("RESET ROLE").await?;
    // SET LOCAL ROLE inside each transaction (PostgREST's way).
    c.batch_execute(
        "BEGIN; SET LOCAL ROLE app_user; DELETE FROM acct WHERE id = 3;
         UPDATE acct SET owner = 'ann b' WHERE id = 1; COMMIT",
    )
    .await?;
    tokio::task::block_in_place(|| assert_same(&pair, &["acct", "acct_log"]))?;
    ensure!(tokio::task::block_in_place(|| retry_records(&pair))? == 0);
    let old = on(
        &pair.old,
        "SELECT string_agg(id || ':' || owner || ':' || balance, ',' ORDER BY id) FROM acct",
    )?;
    ensure!(old == "1:ann b:90,2:bob:60", "{old}");

    // A role that logs in itself (not through the proxy's login) cannot use the capture
    // functions the proxy calls, even inside a transaction it marks as the proxy would.
    let url = format!(
        "postgres://outsider:outsider-pw@127.0.0.1:{}/{DB}",
        pair.old.port()
    );
    let (outsider, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    for call in [
        "SELECT * FROM _switchyard.drain(10)",
        "SELECT _switchyard.note_statement('DROP TABLE acct', 'public')",
        "SELECT _switchyard.refill('acct'::regclass)",
        "SELECT _switchyard.capture_all('acct'::regclass, true)",
        "SELECT _switchyard.watch('acct'::regclass, true)",
    ] {
        let err = outsider
            .batch_execute(&format!(
                "BEGIN; SET LOCAL switchyard.capture = lockstep; UPDATE acct SET balance = 0; {call}; COMMIT"
            ))
            .await
            .expect_err(call);
        ensure!(
            err.as_db_error().map(|e| e.code().code()) == Some("42501"),
            "{call}: {err:?}"
        );
        outsider.batch_execute("ROLLBACK").await?;
    }
    Ok(())
}

/// A session that changed its session authorization (`SET SESSION AUTHORIZATION`, which
/// only a superuser login may run) is still the proxy's own session: its writes are
/// captured and mirrored, and both sides end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_under_another_session_authorization_is_mirrored() -> Result<()> {
    init_tracing();
    let pair = pair_with(SCHEMA).await?;
    let roles = "CREATE ROLE stranger LOGIN; GRANT ALL ON acct TO stranger;";
    on(&pair.old, roles)?;
    on(&pair.new, roles)?;
    let proxy = start_proxy(pair.config()).await?;
    let c = connect_proxy(&proxy).await?;
    batch_each(
        &c,
        &[
            "SET SESSION AUTHORIZATION stranger",
            "INSERT INTO acct VALUES (1, 'x', 1)",
            "BEGIN; INSERT INTO acct VALUES (2, 'y', 2); UPDATE acct SET balance = balance + 1; COMMIT",
        ],
    )
    .await?;
    ensure!(
        on(
            &pair.old,
            "SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM acct"
        )? == "1:2,2:3"
    );
    tokio::task::block_in_place(|| assert_same(&pair, &["acct"]))?;
    assert_nothing_queued(&pair)
}

/// When a statement's changes cannot be read back for new (here: old's drain function
/// broken after the proxy installed it), the client gets an error and the statement is
/// rolled back on old too.
/// Runs `sql` on `c`, which must fail with a server error saying its writes cannot be
/// captured (named where it happened, not as "transaction aborted" after it).
async fn fails_uncaptured(c: &tokio_postgres::Client, sql: &str) -> Result<()> {
    let Err(err) = c.batch_execute(sql).await else {
        bail!("{sql}: succeeded, want a failure to capture its writes");
    };
    ensure!(
        err.as_db_error().is_some_and(|e| {
            e.code() != &SqlState::IN_FAILED_SQL_TRANSACTION && e.message().contains("captured")
        }),
        "{sql}: {err:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_changes_cannot_be_captured_fails_loudly() -> Result<()> {
    let Proxied { pair, proxy } = proxied(SCHEMA).await?;
    on(
        &pair.old,
        "CREATE OR REPLACE FUNCTION _switchyard.drain(n int) \
         RETURNS TABLE (xid xid8, seq bigint, relid oid, version bigint, op \"char\", rows json) \
         LANGUAGE plpgsql AS $f$ BEGIN RAISE EXCEPTION 'the drain is broken' USING ERRCODE = 'data_corrupted'; END $f$",
    )?;
    let c = connect_proxy(&proxy).await?;
    fails_uncaptured(&c, "INSERT INTO acct VALUES (1, 'x', 1)").await?;
    let err = c
        .batch_execute("BEGIN; INSERT INTO acct VALUES (2, 'y', 2); COMMIT")
        .await
        .expect_err("the transaction cannot be captured");
    ensure!(err.as_db_error().is_some(), "{err:?}");
    c.batch_execute("ROLLBACK").await.ok();
    ensure!(on(&pair.old, "SELECT count(*) FROM acct")? == "0");
    tokio::task::block_in_place(|| assert_same(&pair, &["acct"]))?;

    // A drain behind every write: in a string of several statements the failure is named
    // where it happened, not as "transaction aborted" on the statement after it, and the
    // rest of the string does not run.
    let mut cfg = pair.config();
    cfg.mirror.drain_every_writes = 1;
    let eager = start_proxy(cfg).await?;
    let c = connect_proxy(&eager).await?;
    for string in [
        "INSERT INTO acct VALUES (3, 'z', 3); INSERT INTO acct VALUES (4, 'w', 4)",
        "BEGIN; INSERT INTO acct VALUES (5, 'v', 5); INSERT INTO acct VALUES (6, 'u', 6); COMMIT",
    ] {
        fails_uncaptured(&c, string).await?;
        c.batch_execute("ROLLBACK").await.ok();
    }
    // One statement per Query in the client's transaction: the write itself gets the error.
    c.batch_execute("BEGIN").await?;
    fails_uncaptured(&c, "INSERT INTO acct VALUES (7, 't', 7)").await?;
    c.batch_execute("ROLLBACK").await?;
    ensure!(on(&pair.old, "SELECT count(*) FROM acct")? == "0");
    tokio::task::block_in_place(|| assert_same(&pair, &["acct"]))?;
    Ok(())
}
