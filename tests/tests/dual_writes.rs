//! Dual writes against two real clusters (scenarios 1–6 of the test scenarios): the proxy
//! runs every write on the old database, captures the row images, and applies them to the
//! new one in a lockstep transaction committed with two-phase commit. Each test ends by
//! comparing the tables on both clusters row by row.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_proxy::RunningProxy;
use switchyard_tests::mirror::{
    assert_nothing_queued, eventually, on, proxied, retry_records, same_rows,
};
use switchyard_tests::proxy::{batch_each, connect_proxy, Pair, DB};
use switchyard_tests::PgCluster;

#[path = "dual_writes/ddl.rs"]
mod ddl;
#[path = "dual_writes/secondary_failures.rs"]
mod secondary_failures;

/// `switchyard-reconciler verify --format json` of `tables` on the pair.
async fn verify_json(pair: &Pair, tables: &str) -> Result<switchyard_tests::reconciler::ToolRun> {
    switchyard_tests::reconciler::run_reconciler(
        &[
            "verify",
            "--old",
            &pair.old.url(DB),
            "--new",
            &pair.new.url(DB),
            "--tables",
            tables,
            "--format",
            "json",
            // Rows only: new's sequences stay behind while old takes the writes.
            "--skip-sequences",
        ],
        Duration::from_secs(60),
    )
    .await
}

/// The proxy's `/api/status`, parsed, and its text (for messages).
async fn api_status(proxy: &RunningProxy) -> Result<(serde_json::Value, String)> {
    let (code, body) =
        switchyard_tests::http::get(proxy.admin_addr().context("admin")?, "/api/status").await?;
    ensure!(code == 200, "status {code}");
    Ok((serde_json::from_str(&body)?, body))
}

const VOLATILE: &str = "
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TABLE v (
    id serial PRIMARY KEY,
    ident bigint GENERATED ALWAYS AS IDENTITY,
    made timestamptz DEFAULT now(),
    clock timestamptz,
    r double precision,
    u uuid DEFAULT gen_random_uuid(),
    doubled bigint GENERATED ALWAYS AS (ident * 2) STORED,
    note text
);";

/// Scenario 1: volatile defaults and functions give the same row on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_values_are_mirrored_as_row_images() -> Result<()> {
    let s = proxied(VOLATILE).await?;
    let c = connect_proxy(&s.proxy).await?;
    // Simple protocol.
    c.batch_execute(
        "INSERT INTO v (clock, r, note) VALUES (clock_timestamp(), random(), 'simple')",
    )
    .await?;
    c.batch_execute(
        "INSERT INTO v (clock, r, note) SELECT clock_timestamp(), random(), 'bulk ' || g FROM generate_series(1, 50) g",
    )
    .await?;
    // Extended protocol with parameters.
    let n = c
        .execute(
            "INSERT INTO v (clock, r, note) VALUES (clock_timestamp(), random(), $1)",
            &[&"extended"],
        )
        .await?;
    ensure!(n == 1, "extended insert reported {n} rows");
    c.batch_execute("UPDATE v SET r = random(), made = now() WHERE id % 3 = 0")
        .await?;
    c.batch_execute("DELETE FROM v WHERE id % 7 = 0").await?;
    let rows = same_rows(&s.pair, "v")?;
    ensure!(
        rows.lines().count() == 52 - 52 / 7,
        "unexpected row count:\n{rows}"
    );
    assert_nothing_queued(&s.pair)?;
    eventually(&s.pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    Ok(())
}

/// Scenario 2: INSERT ... SELECT, ON CONFLICT DO UPDATE, multi-row UPDATE and DELETE, and
/// an UPDATE that moves primary keys: all equal, nothing queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_row_statements_and_upserts() -> Result<()> {
    let s = proxied(
        "CREATE TABLE kv (k int PRIMARY KEY, v text, n int DEFAULT 0);
         CREATE TABLE src (k int, v text);
         INSERT INTO src SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO kv (k, v) SELECT k, v FROM src")
        .await?;
    c.batch_execute(
        "INSERT INTO kv (k, v) VALUES (5, 'five'), (500, 'new') ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = kv.n + 1",
    )
    .await?;
    c.execute(
        "UPDATE kv SET n = n + 1 WHERE k BETWEEN $1 AND $2",
        &[&10i32, &40i32],
    )
    .await?;
    c.batch_execute("DELETE FROM kv WHERE k > 90 AND k < 500")
        .await?;
    same_rows(&s.pair, "kv")?;
    // Moved keys: the old keys' rows are gone on new as well.
    c.batch_execute("UPDATE kv SET k = k + 1000 WHERE k <= 3")
        .await?;
    same_rows(&s.pair, "kv")?;
    assert_nothing_queued(&s.pair)
}

/// Scenario 3: the client sees exactly its own RETURNING columns, in both protocols, and
/// Describe shows only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_returning_is_exactly_what_it_asked_for() -> Result<()> {
    let s = proxied("CREATE TABLE r (id serial PRIMARY KEY, a text, b int);").await?;
    let c = connect_proxy(&s.proxy).await?;
    let msgs = c
        .simple_query("INSERT INTO r (a, b) VALUES ('x', 1), ('y', 2) RETURNING b, id")
        .await?;
    let mut seen = Vec::new();
    for m in &msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            ensure!(r.len() == 2, "simple protocol row has {} columns", r.len());
            ensure!(r.columns()[0].name() == "b" && r.columns()[1].name() == "id");
            seen.push((
                r.get(0).unwrap_or("").to_string(),
                r.get(1).unwrap_or("").to_string(),
            ));
        }
    }
    ensure!(
        seen == vec![("1".into(), "1".into()), ("2".into(), "2".into())],
        "{seen:?}"
    );
    let stmt = c.prepare("UPDATE r SET b = b + $1 RETURNING *").await?;
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    ensure!(names == ["id", "a", "b"], "Describe showed {names:?}");
    let rows = c.query(&stmt, &[&10i32]).await?;
    ensure!(rows.len() == 2 && rows[0].len() == 3);
    let plain = c.prepare("DELETE FROM r WHERE id = $1").await?;
    ensure!(
        plain.columns().is_empty(),
        "a statement without RETURNING must describe as NoData"
    );
    ensure!(c.execute(&plain, &[&1i32]).await? == 1);
    // Binary results for the client's columns (tokio-postgres asks for binary).
    let id: i32 = c
        .query_one(
            "INSERT INTO r (a, b) VALUES ($1, $2) RETURNING id",
            &[&"z", &3i32],
        )
        .await?
        .get(0);
    ensure!(id == 3, "got id {id}");
    same_rows(&s.pair, "r")?;
    Ok(())
}

/// Scenario 5: savepoints, rollbacks and errors in explicit transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollbacks_never_reach_the_secondary() -> Result<()> {
    let s = proxied("CREATE TABLE t (id int PRIMARY KEY, v text);").await?;
    let mut c = connect_proxy(&s.proxy).await?;
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1, 'kept'); SAVEPOINT a; INSERT INTO t VALUES (2, 'undone'); ROLLBACK TO SAVEPOINT a; INSERT INTO t VALUES (3, 'kept'); RELEASE a; COMMIT")
        .await
        .context("multi-statement string")?;
    // The same one statement at a time (what psql and drivers send).
    for sql in [
        "BEGIN",
        "INSERT INTO t VALUES (10, 'kept')",
        "SAVEPOINT s1",
        "UPDATE t SET v = 'undone' WHERE id = 10",
        "ROLLBACK TO SAVEPOINT s1",
        "INSERT INTO t VALUES (11, 'kept')",
        "COMMIT",
        "BEGIN",
        "INSERT INTO t VALUES (20, 'rolled back')",
        "ROLLBACK",
    ] {
        c.simple_query(sql).await.with_context(|| sql.to_string())?;
    }
    // An error mid-transaction: everything before it is rolled back too.
    c.simple_query("BEGIN").await?;
    c.simple_query("INSERT INTO t VALUES (30, 'lost')").await?;
    let dup = c
        .simple_query("INSERT INTO t VALUES (1, 'duplicate')")
        .await;
    ensure!(dup.is_err(), "duplicate key must fail");
    let end = c.simple_query("COMMIT").await?;
    let tag = end.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    let _ = tag;
    // Extended protocol transaction with an error in an implicit one.
    let tx = c.transaction().await?;
    tx.execute("INSERT INTO t VALUES ($1, 'ext')", &[&40i32])
        .await?;
    tx.commit().await?;
    ensure!(c
        .execute("INSERT INTO t VALUES ($1, 'dup')", &[&40i32])
        .await
        .is_err());
    let old = same_rows(&s.pair, "t")?;
    ensure!(
        old == "(1,kept)\n(3,kept)\n(10,kept)\n(11,kept)\n(40,ext)" || old.lines().count() == 5,
        "unexpected rows:\n{old}"
    );
    ensure!(
        !old.contains("undone") && !old.contains("lost") && !old.contains("rolled back"),
        "{old}"
    );
    eventually(&s.pair.new, "SELECT count(*) FROM pg_prepared_xacts", "0")?;
    Ok(())
}

/// Scenario 4: writes the statement does not show, made on old only (a trigger writing
/// another table that new does not have, a function called from SELECT, a DO block, CALL,
/// SQL-level EXECUTE, in both protocols) reach new: verify finds both equal. (The routines
/// are created behind the proxy's back, so until its next look at the catalog their writes
/// travel through the change log rather than in lockstep; either way nothing is lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_statement_does_not_show_are_mirrored() -> Result<()> {
    let s = proxied(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE audit (id int PRIMARY KEY, what text);",
    )
    .await?;
    on(
        &s.pair.old,
        "CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           INSERT INTO audit VALUES (NEW.id, 'insert'); RETURN NEW; END $$; \
         CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION log_it(); \
         CREATE FUNCTION sneaky(i int) RETURNS int LANGUAGE sql AS $$ INSERT INTO t VALUES (i, 'sneaky') RETURNING i $$; \
         CREATE PROCEDURE put(i int) LANGUAGE sql AS $$ INSERT INTO t VALUES (i, 'call') $$;",
    )?;
    let c = connect_proxy(&s.proxy).await?;
    batch_each(
        &c,
        &[
            "INSERT INTO t VALUES (1, 'seen')",
            "SELECT sneaky(2)",
            "DO $$ BEGIN INSERT INTO t VALUES (3, 'do'); END $$",
            "CALL put(4)",
            "PREPARE ins(int) AS INSERT INTO t VALUES ($1, 'exec'); EXECUTE ins(5)",
        ],
    )
    .await?;
    c.execute("CALL put($1)", &[&6i32]).await?;
    same_rows(&s.pair, "t")?;
    same_rows(&s.pair, "audit")?;
    let run = verify_json(&s.pair, "t,audit").await?;
    ensure!(run.code() == Some(0), "verify:\n{}", run.text());
    assert_nothing_queued(&s.pair)
}

/// COPY FROM STDIN through psql (text, csv, a bad row mid-stream, inside a transaction):
/// the data stream is mirrored; what failed on old is nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_is_mirrored() -> Result<()> {
    // No volatile defaults: COPY is mirrored as a data stream (statement mode), so a
    // DEFAULT now() would differ between the servers (docs/dual-writes.md).
    let s = proxied("CREATE TABLE c (id int PRIMARY KEY, name text, n int DEFAULT 7);").await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("copy.sql");
    std::fs::write(
        &script,
        "COPY c (id, name) FROM STDIN;\n1\tone\n2\ttwo\n\\.\n\
         COPY c (id, name) FROM STDIN WITH (FORMAT csv);\n3,\"three, quoted\"\n4,\n\\.\n\
         \\set ON_ERROR_STOP 0\n\
         COPY c (id, name) FROM STDIN;\n5\tfive\nnot-a-number\tbad\n\\.\n\
         \\set ON_ERROR_STOP 1\n\
         BEGIN;\nCOPY c (id, name) FROM STDIN;\n6\tsix\n\\.\nUPDATE c SET name = 'six!' WHERE id = 6;\nCOMMIT;\n",
    )?;
    let url = format!(
        "postgres://{}@{}/{DB}",
        PgCluster::USER,
        s.proxy.listen_addr()
    );
    let out = tokio::process::Command::new(switchyard_tests::clients::psql_bin())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script)
        .arg(&url)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "psql failed: {stderr}");
    ensure!(
        stderr.contains("invalid input syntax for type integer"),
        "the bad row fails: {stderr}"
    );
    let rows = same_rows(&s.pair, "c")?;
    ensure!(rows.lines().count() == 5, "ids 1, 2, 3, 4, 6:\n{rows}");
    ensure!(rows.contains("six!") && !rows.contains("five"), "{rows}");
    assert_nothing_queued(&s.pair)
}

/// A session with `standard_conforming_strings = off` (legacy applications): a backslash
/// in a plain literal escapes the next character, so `'it\'s'` is one string. The proxy's
/// parser must read the statement as the server does: the write is mirrored, and a string
/// that only looks like it holds a DELETE under the default setting deletes nothing on
/// new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslash_escapes_with_standard_conforming_strings_off() -> Result<()> {
    let s = proxied("CREATE TABLE e (id int PRIMARY KEY, v text);").await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute(
        "INSERT INTO e VALUES (1, 'one'), (2, 'two'), (3, 'three');
         SET standard_conforming_strings = off",
    )
    .await?;
    batch_each(
        &c,
        &[
            "UPDATE e SET v = 'it\\'s' WHERE id = 1",
            "INSERT INTO e VALUES (4, 'back\\\\slash\\n')",
            "INSERT INTO e VALUES (5, N'n\\'ch')",
            "SELECT 'x\\'; DELETE FROM e WHERE id = 2; --'",
        ],
    )
    .await?;
    // Extended protocol: the text of Parse is read the same way.
    c.execute("UPDATE e SET v = 'a\\'b' WHERE id = $1", &[&3i32])
        .await?;
    let old = same_rows(&s.pair, "e")?;
    ensure!(
        old == "(1,it's)\n(2,two)\n(3,a'b)\n(4,\"back\\\\slash\n\")\n(5,n'ch)",
        "old holds {old:?}"
    );
    // Back to the default: the same text is two statements again.
    c.batch_execute("SET standard_conforming_strings = on")
        .await?;
    c.batch_execute("UPDATE e SET v = 'plain\\' WHERE id = 2")
        .await?;
    let now = same_rows(&s.pair, "e")?;
    ensure!(now.contains("(2,\"plain\\\\\")"), "{now:?}");
    assert_nothing_queued(&s.pair)
}
