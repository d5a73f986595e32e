//! Change capture (issue #20): every row change the old database makes inside a client's
//! transaction, whatever made it, reaches the new one in the same lockstep transaction; writes
//! that bypass the proxy reach it through the change log. Each test runs real statements
//! through the proxy against two real clusters (the new one made with the same schema,
//! triggers and foreign keys included, as `pg_dump --schema-only` would) and then compares
//! every table on both, row by row. Nothing is replayed.

use anyhow::{ensure, Context, Result};
use futures_util::SinkExt;
use switchyard_proxy::RunningProxy;
use switchyard_tests::http::admin_json;
use switchyard_tests::mirror::{
    assert_mirrored, assert_nothing_queued, assert_same, init_tracing, on, proxied, rows, Proxied,
};
use switchyard_tests::proxy::{batch_each, batch_fails, connect_proxy, start_proxy, Pair, DB};
use switchyard_tests::wait::poll_until_async;
use tokio_postgres::error::SqlState;

/// `sql` through psql connected to the proxy: the string goes as one simple Query.
async fn psql_proxy(proxy: &RunningProxy, sql: &str) -> Result<String> {
    let url = switchyard_tests::proxy::proxy_url(proxy, "postgres");
    let out = switchyard_tests::clients::psql_url(&url, sql).await?;
    ensure!(
        out.status.success(),
        "psql through the proxy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until old's change log is empty: every row in it applied on new.
async fn log_drained(pair: &Pair) -> Result<()> {
    poll_until_async(
        "the change log to be drained",
        std::time::Duration::from_secs(20),
        || async {
            Ok(
                (on(&pair.old, "SELECT count(*) FROM _switchyard.capture_log")? == "0")
                    .then_some(()),
            )
        },
    )
    .await
}

/// Finding 1 of the issue: `INSERT; BEGIN; INSERT; COMMIT` as one string lost the second
/// INSERT on both databases while the client was told it succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_string_with_begin_and_commit_loses_nothing() -> Result<()> {
    let s = proxied("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    let out = psql_proxy(
        &s.proxy,
        "INSERT INTO t VALUES (1, 'before'); BEGIN; INSERT INTO t VALUES (2, 'inside'); COMMIT",
    )
    .await?;
    ensure!(out.trim_end().ends_with("COMMIT"), "psql printed {out:?}");
    // An implicit transaction that turns explicit, and statements after a COMMIT.
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute(
        "INSERT INTO t VALUES (3, 'a'); INSERT INTO t VALUES (4, 'b'); COMMIT; INSERT INTO t VALUES (5, 'c')",
    )
    .await?;
    c.batch_execute("INSERT INTO t VALUES (6, 'd'); BEGIN; INSERT INTO t VALUES (7, 'e')")
        .await?;
    c.batch_execute("COMMIT").await?;
    // An error in the middle skips the rest and rolls the implicit transaction back.
    let failed = c
        .batch_execute("INSERT INTO t VALUES (8, 'no'); INSERT INTO t VALUES (1, 'dup'); INSERT INTO t VALUES (9, 'no')")
        .await;
    ensure!(failed.is_err(), "a duplicate key must fail the string");
    assert_same(&s.pair, &["t"])?;
    ensure!(
        on(
            &s.pair.old,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        )? == "1,2,3,4,5,6,7"
    );
    assert_nothing_queued(&s.pair)
}

/// Finding 2: a column added inside a transaction, then written in it and after it: new
/// gets the column's values in every row (the table's facts are cached by version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_added_mid_transaction_reach_later_rows() -> Result<()> {
    let s = proxied("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'x')")
        .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO t VALUES (2, 'y')").await?;
    c.batch_execute(
        "BEGIN; INSERT INTO t VALUES (3, 'before the column'); ALTER TABLE t ADD COLUMN c int; \
         INSERT INTO t (id, v, c) VALUES (4, 'z', 40); COMMIT",
    )
    .await?;
    for i in 5..8 {
        c.execute("INSERT INTO t (id, v, c) VALUES ($1, 'w', $1 * 10)", &[&i])
            .await?;
    }
    c.batch_execute("UPDATE t SET c = -1 WHERE id = 2").await?;
    // Renamed and dropped in another session straight on old: the next write still fits.
    on(&s.pair.old, "ALTER TABLE t RENAME COLUMN v TO label")?;
    on(&s.pair.new, "ALTER TABLE t RENAME COLUMN v TO label")?;
    c.batch_execute("INSERT INTO t (id, label, c) VALUES (8, 'renamed', 80)")
        .await?;
    assert_same(&s.pair, &["t"])?;
    ensure!(on(&s.pair.new, "SELECT count(*) FROM t WHERE c IS NOT NULL")? == "6");
    assert_nothing_queued(&s.pair)
}

const AUDITED: &str = "
CREATE TABLE wallet (id int PRIMARY KEY, balance numeric NOT NULL, touched timestamptz);
CREATE TABLE audit (id bigserial PRIMARY KEY, wallet int, op text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (wallet, op) VALUES (coalesce(NEW.id, OLD.id), TG_OP);
  RETURN NULL;
END $$;
CREATE TRIGGER wallet_audit AFTER INSERT OR UPDATE OR DELETE ON wallet FOR EACH ROW EXECUTE FUNCTION audit_it();
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.touched := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER wallet_stamp BEFORE INSERT OR UPDATE ON wallet FOR EACH ROW EXECUTE FUNCTION stamp();
";

/// Finding 3: an AFTER trigger writing an audit table and a BEFORE trigger stamping
/// `clock_timestamp()`, on both databases: new gets old's audit rows and stamps, its own
/// triggers do not fire on the mirrored writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_stamping_triggers_are_copied_not_fired_again() -> Result<()> {
    let s = proxied(AUDITED).await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO wallet (id, balance) SELECT g, 100 FROM generate_series(1, 5) g")
        .await?;
    c.execute(
        "UPDATE wallet SET balance = balance - $1::int WHERE id = 2",
        &[&7i32],
    )
    .await?;
    c.batch_execute(
        "BEGIN; UPDATE wallet SET balance = balance + 1 WHERE id <= 3; DELETE FROM wallet WHERE id = 5; COMMIT",
    )
    .await?;
    c.batch_execute("INSERT INTO wallet VALUES (3, 0) ON CONFLICT (id) DO UPDATE SET balance = 0")
        .await?;
    assert_same(&s.pair, &["wallet", "audit"])?;
    ensure!(on(&s.pair.new, "SELECT count(*) FROM audit")? == "11");
    assert_nothing_queued(&s.pair)
}

/// Finding 4: writes hidden behind a call: `SELECT f()` (both protocols), EXPLAIN ANALYZE
/// of a write, DO blocks and CALL (also through the extended protocol), SQL-level EXECUTE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_behind_functions_do_call_and_explain_are_captured() -> Result<()> {
    let s = proxied(
        "CREATE TABLE t (id int PRIMARY KEY, v text, at timestamptz DEFAULT clock_timestamp());
         CREATE FUNCTION put(i int) RETURNS int LANGUAGE sql AS $$ INSERT INTO t (id, v) VALUES (i, 'f') RETURNING i $$;
         CREATE PROCEDURE put_proc(i int) LANGUAGE plpgsql AS $$ BEGIN INSERT INTO t (id, v) VALUES (i, 'call'); END $$;",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("SELECT put(1)").await?;
    let r = c.query_one("SELECT put($1)", &[&2i32]).await?;
    ensure!(r.get::<_, i32>(0) == 2);
    c.batch_execute("EXPLAIN ANALYZE INSERT INTO t (id, v) VALUES (3, 'explain')")
        .await?;
    c.batch_execute("DO $$ BEGIN INSERT INTO t (id, v) VALUES (4, 'do'); END $$")
        .await?;
    c.batch_execute("CALL put_proc(5)").await?;
    c.execute("CALL put_proc($1)", &[&6i32]).await?;
    c.batch_execute(
        "PREPARE ins(int) AS INSERT INTO t (id, v) VALUES ($1, 'exec'); EXECUTE ins(7)",
    )
    .await?;
    c.batch_execute("BEGIN; SELECT put(8); SELECT put(9); COMMIT")
        .await?;
    assert_same(&s.pair, &["t"])?;
    ensure!(on(&s.pair.new, "SELECT count(*) FROM t")? == "9");
    let status = admin_json(&s.proxy, "/api/status").await?;
    ensure!(
        status["mirror"]["capture"]["writes_outside_lockstep"] == 0,
        "all of them in lockstep: {}",
        status["mirror"]["capture"]
    );
    Ok(())
}

/// Finding 5: writable CTEs, MERGE and COPY FROM reach new as row images, so volatile
/// values (now(), serials, defaults) are old's, also with bound parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctes_merge_and_copy_arrive_as_images() -> Result<()> {
    let s = proxied(
        "CREATE TABLE acct (id serial PRIMARY KEY, name text UNIQUE, v int, at timestamptz DEFAULT clock_timestamp());
         CREATE TABLE log (id bigserial PRIMARY KEY, acct int, note text, r float8 DEFAULT random());
         CREATE TABLE src (name text, v int);
         INSERT INTO src SELECT 'n' || g, g FROM generate_series(1, 20) g;",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute(
        "WITH a AS (INSERT INTO acct (name, v) SELECT name, v FROM src WHERE v <= 10 RETURNING id) \
         INSERT INTO log (acct, note) SELECT id, 'cte' FROM a",
    )
    .await?;
    c.execute(
        "WITH a AS (UPDATE acct SET v = v + $1 WHERE v % 2 = 0 RETURNING id) \
         INSERT INTO log (acct, note) SELECT id, 'cte bound' FROM a",
        &[&100i32],
    )
    .await?;
    let merged = c
        .execute(
            "MERGE INTO acct a USING src s ON a.name = s.name \
             WHEN MATCHED AND s.v > 5 THEN UPDATE SET v = s.v * $1 \
             WHEN MATCHED THEN DELETE \
             WHEN NOT MATCHED THEN INSERT (name, v) VALUES (s.name, $1)",
            &[&3i32],
        )
        .await?;
    ensure!(merged == 20, "MERGE touched {merged} rows");
    let sink = c
        .copy_in("COPY log (acct, note) FROM STDIN")
        .await
        .context("COPY through the extended protocol")?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"1\tcopied\n2\tcopied\n3\tcopied\n",
    ))
    .await?;
    let copied = sink.as_mut().finish().await?;
    ensure!(copied == 3, "COPY reported {copied} rows");
    psql_proxy(
        &s.proxy,
        "\\copy log (acct, note) FROM PROGRAM 'printf \"7\\tpsql copy\\n8\\tpsql copy\\n\"'",
    )
    .await?;
    assert_mirrored(&s.pair, &["acct", "log"])
}

/// Finding 6: a key changed by UPDATE and by ON CONFLICT DO UPDATE: the old key's row is
/// gone on new too, with no whole-table re-sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_by_update_and_on_conflict() -> Result<()> {
    let s = proxied(
        "CREATE TABLE kv (k int PRIMARY KEY, v text);
         INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 10) g;
         CREATE TABLE two (a int, b text, n int, PRIMARY KEY (a, b));
         INSERT INTO two VALUES (1, 'x', 0), (2, 'y', 0);",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("UPDATE kv SET k = k + 100 WHERE k <= 3")
        .await?;
    c.execute("UPDATE kv SET k = $1 WHERE k = $2", &[&50i32, &4i32])
        .await?;
    // Several keys moved by one statement.
    c.batch_execute("UPDATE kv SET k = k * 1000 WHERE k IN (5, 6)")
        .await?;
    c.batch_execute(
        "INSERT INTO kv VALUES (7, 'new') ON CONFLICT (k) DO UPDATE SET k = 700, v = 'moved'",
    )
    .await?;
    c.batch_execute("UPDATE two SET b = 'z', n = n + 1 WHERE a = 1")
        .await?;
    assert_same(&s.pair, &["kv", "two"])?;
    ensure!(
        on(
            &s.pair.new,
            "SELECT count(*) FROM kv WHERE k IN (1, 2, 3, 4, 7)"
        )? == "0"
    );
    assert_nothing_queued(&s.pair)
}

/// Finding 7: join tables without a key (duplicates included), changed with bound
/// parameters: new holds the same multiset of rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_a_key_keep_their_duplicates() -> Result<()> {
    let s = proxied("CREATE TABLE tags (post int, tag text, meta jsonb)").await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute(
        "INSERT INTO tags VALUES (1, 'a', '{}'), (1, 'a', '{}'), (1, 'b', NULL), (2, 'a', '[1]'), (2, 'a', '[1]')",
    )
    .await?;
    c.execute(
        "DELETE FROM tags WHERE post = $1 AND tag = $2 AND meta IS NULL",
        &[&1i32, &"b"],
    )
    .await?;
    c.execute("UPDATE tags SET tag = $1 WHERE post = $2", &[&"c", &2i32])
        .await?;
    c.batch_execute("DELETE FROM tags WHERE ctid = (SELECT min(ctid) FROM tags WHERE post = 1)")
        .await?;
    assert_same(&s.pair, &["tags"])?;
    ensure!(rows(&s.pair.new, "tags")?.lines().count() == 3);
    assert_nothing_queued(&s.pair)
}

/// Cascading foreign keys (delete and update) and TRUNCATE ... CASCADE, with the same
/// foreign keys on new: its own cascades stay quiet, old's arrive captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascades_and_truncate_cascade() -> Result<()> {
    let s = proxied(
        "CREATE TABLE parent (id int PRIMARY KEY, v text);
         CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent ON DELETE CASCADE ON UPDATE CASCADE, v text);
         CREATE TABLE other (id int PRIMARY KEY);",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute(
        "INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 5) g; \
         INSERT INTO child SELECT g, 1 + g % 5, 'c' FROM generate_series(1, 20) g; \
         INSERT INTO other VALUES (1)",
    )
    .await?;
    c.batch_execute("DELETE FROM parent WHERE id = 1").await?;
    c.batch_execute("UPDATE parent SET id = 20 WHERE id = 2")
        .await?;
    assert_same(&s.pair, &["parent", "child"])?;
    c.batch_execute("BEGIN; INSERT INTO other VALUES (2); TRUNCATE parent CASCADE; INSERT INTO parent VALUES (9, 'after'); COMMIT")
        .await?;
    assert_same(&s.pair, &["parent", "child", "other"])?;
    ensure!(on(&s.pair.new, "SELECT count(*) FROM child")? == "0");
    assert_nothing_queued(&s.pair)
}

/// Savepoints: what ROLLBACK TO undid never reaches new; a deferred constraint trigger
/// that writes at COMMIT is captured too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_and_deferred_triggers() -> Result<()> {
    let s = proxied(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE late (id bigserial PRIMARY KEY, seen int, at timestamptz DEFAULT clock_timestamp());
         CREATE FUNCTION note_late() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO late (seen) VALUES (NEW.id); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER t_late AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION note_late();",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute(
        "BEGIN; INSERT INTO t VALUES (1, 'kept'); SAVEPOINT a; INSERT INTO t VALUES (2, 'undone'); \
         UPDATE t SET v = 'undone too' WHERE id = 1; ROLLBACK TO a; INSERT INTO t VALUES (3, 'kept'); \
         SAVEPOINT b; INSERT INTO t VALUES (4, 'released'); RELEASE b; COMMIT",
    )
    .await?;
    c.batch_execute("BEGIN; INSERT INTO t VALUES (5, 'x'); ROLLBACK")
        .await?;
    c.batch_execute("INSERT INTO t VALUES (6, 'autocommit')")
        .await?;
    assert_same(&s.pair, &["t", "late"])?;
    ensure!(
        on(
            &s.pair.new,
            "SELECT string_agg(seen::text, ',' ORDER BY seen) FROM late"
        )? == "1,3,4,6"
    );
    assert_nothing_queued(&s.pair)
}

/// CREATE TABLE AS and SELECT INTO (rows with volatile values), a partitioned table written
/// through its root and through a partition, and a table dropped after writes in the same
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tables_partitions_and_drops() -> Result<()> {
    let s = proxied(
        "CREATE TABLE m (id int, region text, v float8, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
         CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    batch_each(
        &c,
        &[
            "CREATE TABLE made AS SELECT g AS id, random() AS r, clock_timestamp() AS at FROM generate_series(1, 30) g",
            "SELECT id, r * 2 AS r2 INTO made2 FROM made WHERE id <= 10",
            "INSERT INTO m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, random() FROM generate_series(1, 10) g",
            "INSERT INTO m_eu VALUES (100, 'eu', 1.5); UPDATE m SET region = 'eu' WHERE id = 1",
            "BEGIN; CREATE TABLE gone (id int PRIMARY KEY); INSERT INTO gone VALUES (1); DROP TABLE gone; \
             INSERT INTO m VALUES (200, 'us', 2); COMMIT",
        ],
    )
    .await?;
    assert_same(&s.pair, &["made", "made2", "m", "m_eu", "m_us"])?;
    ensure!(on(&s.pair.new, "SELECT to_regclass('gone') IS NULL")? == "t");
    assert_nothing_queued(&s.pair)
}

/// Deliverable 3: writes that bypass the proxy (a session straight on old) reach new
/// through the change log, and are counted as writes outside the proxy; a procedure that
/// commits by itself goes the same way and is counted as outside lockstep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_proxy_reach_new_and_are_counted() -> Result<()> {
    let s = proxied(
        "CREATE TABLE t (id int PRIMARY KEY, v text, at timestamptz DEFAULT clock_timestamp());
         CREATE TABLE loose (a int, b text);
         CREATE PROCEDURE batches() LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO t (id, v) VALUES (50, 'first batch'); COMMIT;
           INSERT INTO t (id, v) VALUES (51, 'second batch'); COMMIT;
         END $$;",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute("INSERT INTO t (id, v) VALUES (1, 'through the proxy')")
        .await?;
    on(
        &s.pair.old,
        "INSERT INTO t (id, v) VALUES (2, 'cron'); UPDATE t SET v = 'dba' WHERE id = 1; \
         INSERT INTO loose VALUES (1, 'x'), (1, 'x'); DELETE FROM t WHERE id = 2; INSERT INTO t (id, v) VALUES (3, 'kept')",
    )?;
    c.batch_execute("CALL batches()").await?;
    // A transaction that set the lockstep claim itself and committed without draining: its
    // rows are left in the lockstep table, applied from there and counted.
    on(
        &s.pair.old,
        "BEGIN; SET LOCAL switchyard.capture = lockstep; INSERT INTO t (id, v) VALUES (60, 'left over'); COMMIT",
    )?;
    let admin = s.proxy.admin_addr().context("admin")?;
    poll_until_async(
        "the change log to be drained",
        std::time::Duration::from_secs(20),
        || async {
            let (_, body) = switchyard_tests::http::get(admin, "/api/status").await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let cap = &v["mirror"]["capture"];
            Ok((cap["log_backlog"] == 0
                && cap["writes_outside_proxy"].as_u64() >= Some(5)
                && cap["writes_outside_lockstep"].as_u64() >= Some(3)
                && cap["lockstep_leftovers"].as_u64() >= Some(1))
            .then_some(()))
        },
    )
    .await?;
    assert_same(&s.pair, &["t", "loose"])?;
    ensure!(on(&s.pair.old, "SELECT count(*) FROM _switchyard.capture_log")? == "0");
    ensure!(
        on(
            &s.pair.old,
            "SELECT count(*) FROM _switchyard.capture_lockstep"
        )? == "0"
    );
    Ok(())
}

/// Large objects cannot be captured: counted and listed by default; refused with 0A000
/// under `mirror.strict`, which changes nothing on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_are_counted_or_refused_when_strict() -> Result<()> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    let proxy = start_proxy(pair.config()).await?;
    let c = connect_proxy(&proxy).await?;
    c.batch_execute("SELECT lo_from_bytea(0, 'abc')").await?;
    let status = admin_json(&proxy, "/api/status").await?;
    let flagged: Vec<String> = status["mirror"]["statement_mode"]
        .as_object()
        .context("statement_mode")?
        .values()
        .filter(|m| m["mirrored"] == false)
        .filter_map(|m| m["reason"].as_str().map(str::to_string))
        .collect();
    ensure!(flagged == ["large object"], "{flagged:?}");
    drop(c);
    drop(proxy);
    let mut cfg = pair.config();
    cfg.mirror.strict = true;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    // Strict mode refuses.
    let sql = "SELECT lo_from_bytea(0, 'def')";
    let db = batch_fails(&c, sql, &SqlState::FEATURE_NOT_SUPPORTED).await?;
    ensure!(db.message().contains("large objects"), "{db:?}");
    ensure!(on(&pair.old, "SELECT count(*) FROM pg_largeobject_metadata")? == "1");
    // The session goes on.
    ensure!(c.query_one("SELECT 1", &[]).await?.get::<_, i32>(0) == 1);
    Ok(())
}

/// A TRUNCATE made straight on old reaches new through the change log a little later (here:
/// while a session holds its log rows), after proxied transactions that wrote the same
/// tables were applied on new in lockstep. Applied in log order it emptied those rows on
/// new (a table without a key and keyed ones alike, one with an identity key and a generated
/// column: the copy that replaces them must carry the one and leave the other to new); new
/// must end with old's rows, and a row inserted straight on old after the TRUNCATE must not
/// arrive twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_outside_the_proxy_keeps_later_proxied_writes() -> Result<()> {
    let s = proxied(
        "CREATE TABLE history (account int, delta int, note text);
         CREATE TABLE k (id int PRIMARY KEY, v text);
         CREATE TABLE g (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int,
                         twice int GENERATED ALWAYS AS (v * 2) STORED);",
    )
    .await?;
    let tables = ["history", "k", "g"];
    let pair = &s.pair;
    let c = connect_proxy(&s.proxy).await?;
    c.batch_execute(
        "INSERT INTO history VALUES (1, 10, 'before'); INSERT INTO k VALUES (1, 'before'); \
         INSERT INTO g (v) VALUES (1), (2)",
    )
    .await?;
    assert_same(pair, &tables)?;
    drop(c);
    // No proxy drains the log while the DBA truncates and a cron job inserts straight on old.
    let Proxied { proxy, pair } = s;
    drop(proxy);
    on(
        &pair.old,
        "TRUNCATE history, k, g; INSERT INTO history VALUES (2, 20, 'cron, after the truncate'); \
         INSERT INTO g (v) VALUES (3)",
    )?;
    let holder = pair.old.connect(DB).await?;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM _switchyard.capture_log FOR UPDATE")
        .await?;
    let proxy = start_proxy(pair.config()).await?;
    let c = connect_proxy(&proxy).await?;
    c.batch_execute(
        "INSERT INTO history VALUES (3, 30, 'proxied'), (3, 30, 'proxied'); \
         INSERT INTO k VALUES (2, 'proxied'); INSERT INTO k VALUES (3, 'proxied'); \
         INSERT INTO g (v) VALUES (4)",
    )
    .await?;
    holder.batch_execute("COMMIT").await?;
    log_drained(&pair).await?;
    assert_same(&pair, &tables)?;
    ensure!(
        on(
            &pair.new,
            "SELECT string_agg(v::text || '/' || twice, ',' ORDER BY id) FROM g"
        )? == "3/6,4/8"
    );
    ensure!(rows(&pair.new, "history")?.lines().count() == 3);
    ensure!(
        on(
            &pair.new,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM k"
        )? == "2,3"
    );
    assert_nothing_queued(&pair)
}

/// TRUNCATE of a partitioned table, through the proxy (the whole table, one partition) and
/// straight on old (through the change log): new ends with old's rows in every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_a_partitioned_table() -> Result<()> {
    let s = proxied(
        "CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
         CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
         CREATE TABLE loose (region text, v int) PARTITION BY LIST (region);
         CREATE TABLE loose_eu PARTITION OF loose FOR VALUES IN ('eu');
         CREATE TABLE loose_us PARTITION OF loose FOR VALUES IN ('us');",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    let fill = "INSERT INTO m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 10) g \
                ON CONFLICT DO NOTHING; \
                INSERT INTO loose SELECT CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 6) g";
    let tables = ["m", "m_eu", "m_us", "loose", "loose_eu", "loose_us"];
    batch_each(
        &c,
        &[
            fill,
            "TRUNCATE m, loose",
            fill,
            "TRUNCATE m_eu, loose_us",
            "BEGIN; TRUNCATE m_us; INSERT INTO m VALUES (99, 'us', 99); COMMIT",
        ],
    )
    .await?;
    assert_mirrored(&s.pair, &tables)?;
    on(&s.pair.old, &format!("TRUNCATE m, loose; {fill}"))?;
    log_drained(&s.pair).await?;
    assert_same(&s.pair, &tables)?;
    ensure!(rows(&s.pair.new, "loose")?.lines().count() == 6);
    assert_nothing_queued(&s.pair)
}

/// A TRUNCATE undone by ROLLBACK TO never reaches new; one kept is followed by rows loaded
/// with COPY in the same transaction, and a TRUNCATE ... RESTART IDENTITY of a table with
/// an identity key refills with old's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncates_in_savepoints_and_before_copy() -> Result<()> {
    let s = proxied(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE idents (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);",
    )
    .await?;
    let c = connect_proxy(&s.proxy).await?;
    batch_each(
        &c,
        &[
            "INSERT INTO t SELECT g, 'first' FROM generate_series(1, 5) g; \
             INSERT INTO idents (v) SELECT 'first' FROM generate_series(1, 3)",
            "BEGIN; SAVEPOINT a; TRUNCATE t; ROLLBACK TO a; INSERT INTO t VALUES (6, 'kept'); COMMIT",
        ],
    )
    .await?;
    assert_mirrored(&s.pair, &["t", "idents"])?;
    ensure!(rows(&s.pair.new, "t")?.lines().count() == 6);
    c.batch_execute("BEGIN; TRUNCATE t").await?;
    let sink = c
        .copy_in("COPY t (id, v) FROM STDIN")
        .await
        .context("COPY after TRUNCATE")?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"10\tcopied\n11\tcopied\n"))
        .await?;
    sink.finish().await?;
    batch_each(
        &c,
        &[
            "COMMIT",
            "TRUNCATE idents RESTART IDENTITY; INSERT INTO idents (v) VALUES ('after restart')",
        ],
    )
    .await?;
    assert_mirrored(&s.pair, &["t", "idents"])?;
    ensure!(
        on(
            &s.pair.new,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        )? == "10,11"
    );
    ensure!(on(&s.pair.new, "SELECT id FROM idents")? == "1");
    Ok(())
}
