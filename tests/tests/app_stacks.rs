//! Real application stacks through the proxy (issue #20), as a new user would try them: a
//! Django project (migrations and ORM writes), SQLAlchemy 2 on psycopg 3, an asyncpg pool,
//! node-postgres and a DBA's psql session, with audit triggers, cascading foreign keys,
//! tables without a key and the statements such applications and their DBAs really send.
//! Each test runs the stack's script (`tests/python/`, `tests/node/`, psql) against a proxy
//! in front of two fresh clusters, then compares every user table of old and new row by
//! row, the user schemas, and runs the reconciler's verify on every table with a primary
//! key. Nothing is replayed: the retry log must stay empty, every change made through the
//! proxy must have gone through lockstep, and the only change-log traffic allowed is that of
//! sessions writing straight on old.
//!
//! Django and SQLAlchemy create their schema themselves, through the proxy, so the new
//! database starts empty for them; for the others the schema is made on both databases
//! first, as `pg_dump --schema-only` would (their own triggers and foreign keys included).
//!
//! The last section holds minimal reproductions of the proxy bugs the stacks ran into, one
//! test each; they fail until the bug is fixed, as do the stack tests that hit them.
//!
//! Needs what `.ci/setup` installs (Django and SQLAlchemy in the venv, node-postgres in the
//! cache). `SWITCHYARD_LOG=switchyard_proxy=trace` shows the proxy's steps (messages from
//! old, commit phases, drain errors) in the test output.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use switchyard_proxy::RunningProxy;
use switchyard_tests::clients::{
    node_bin, node_modules, node_script, psql_bin, python_bin, python_script, run_client,
    ClientOutput,
};
use switchyard_tests::mirror::{
    assert_all_tables_same, assert_same, assert_same_schema, assert_verified, init_tracing, on,
    reconciler, retry_records, rows, user_tables,
};
use switchyard_tests::proxy::{connect_proxy, proxy_url, start_proxy, Pair};
use switchyard_tests::wait::poll_until_async;
use switchyard_tests::PgCluster;
use tokio::process::Command;
use tokio_postgres::error::SqlState;

/// How long one stack's script may run (they take seconds; a hang must fail the test).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Fields drop in order: the proxy stops before the clusters it talks to.
struct Stack {
    proxy: RunningProxy,
    pair: Pair,
    url: String,
    started: Instant,
}

/// Fresh clusters, `schema` on both (none: the application makes its own through the
/// proxy), and a proxy in front.
async fn start(schema: Option<&str>) -> Result<Stack> {
    init_tracing();
    let started = Instant::now();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    if let Some(schema) = schema {
        on(&pair.old, schema).context("schema on old")?;
        on(&pair.new, schema).context("schema on new")?;
    }
    let proxy = start_proxy(pair.config()).await?;
    let url = proxy_url(&proxy, PgCluster::USER);
    Ok(Stack {
        pair,
        proxy,
        url,
        started,
    })
}

/// Runs a stack's script to completion; fails unless it exits 0 and prints `done`.
async fn run_script(cmd: &mut Command, what: &str, done: &str) -> Result<ClientOutput> {
    let started = Instant::now();
    let out = run_client(cmd, what, SCRIPT_TIMEOUT).await?.success(what)?;
    ensure!(
        out.stdout.contains(done),
        "{what} did not finish its checks\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.stdout,
        out.stderr
    );
    eprintln!("{what} ran in {:.1?}:\n{}", started.elapsed(), out.stdout);
    Ok(out)
}

async fn run_python_app(s: &Stack, script: &str, done: &str) -> Result<ClientOutput> {
    let python = python_bin()?;
    let path = python_script(script);
    ensure!(path.is_file(), "{} is missing", path.display());
    run_script(Command::new(python).arg(&path).arg(&s.url), script, done).await
}

/// The proxy's `/api/status`.
async fn api_status(proxy: &RunningProxy) -> Result<serde_json::Value> {
    let admin = proxy.admin_addr().context("admin address")?;
    let (_, body) = switchyard_tests::http::get(admin, "/api/status").await?;
    Ok(serde_json::from_str(&body)?)
}

/// `sql` on `c`, parsed as a number.
fn count(c: &PgCluster, sql: &str) -> Result<i64> {
    on(c, sql)?
        .parse()
        .with_context(|| format!("a number from {sql}"))
}

/// Where the stack's writes came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writers {
    /// Only through the proxy: everything in lockstep, nothing through the change log.
    ProxyOnly,
    /// Also sessions straight on old: those arrive through the change log, drained.
    AlsoDirect,
}

/// Everything the stack wrote is on new, taken in lockstep: the same user tables with the
/// same rows and the same schema; no prepared transaction left; an empty retry log; the
/// proxy saw no write outside lockstep, applied nothing from the change log (unless
/// `writers` says sessions wrote straight on old; then the log is drained), queued no
/// commit, had no secondary error and mirrored every statement it handled as text; and
/// the reconciler's verify finds every table with a primary key equal.
async fn check_mirrored(s: &Stack, writers: Writers) -> Result<()> {
    let tables = tokio::task::block_in_place(|| assert_all_tables_same(&s.pair))?;
    tokio::task::block_in_place(|| assert_same_schema(&s.pair))?;
    let new = &s.pair.new;
    poll_until_async(
        "no prepared transaction left on new",
        Duration::from_secs(10),
        || async move { Ok((count(new, "SELECT count(*) FROM pg_prepared_xacts")? == 0).then_some(())) },
    )
    .await?;
    ensure!(retry_records(&s.pair)? == 0, "the retry log is not empty");

    let status = api_status(&s.proxy).await?;
    let m = &status["mirror"];
    let cap = &m["capture"];
    ensure!(cap["installed"] == true, "capture not installed: {cap}");
    ensure!(
        cap["writes_outside_lockstep"] == 0,
        "writes outside lockstep: {cap}"
    );
    ensure!(cap["log_backlog"] == 0, "change log not drained: {cap}");
    ensure!(
        cap["log_error"].is_null(),
        "change log drain failing: {cap}"
    );
    match writers {
        Writers::ProxyOnly => {
            for field in ["writes_outside_proxy", "log_applied"] {
                ensure!(cap[field] == 0, "capture.{field} is not 0: {cap}");
            }
        }
        Writers::AlsoDirect => {
            ensure!(
                cap["writes_outside_proxy"].as_u64() > Some(0)
                    && cap["log_applied"].as_u64() > Some(0),
                "the direct writes were not seen in the change log: {cap}"
            );
        }
    }
    for field in ["commits_queued", "retry_backlog", "in_doubt"] {
        ensure!(m[field] == 0, "mirror.{field} is not 0: {m}");
    }
    ensure!(
        m["commits_two_phase"].as_u64() > Some(0),
        "no two-phase commit: {m}"
    );
    ensure!(
        m["secondary_errors"]
            .as_object()
            .is_some_and(|e| e.is_empty()),
        "errors on new: {}",
        m["secondary_errors"]
    );
    if let Some(modes) = m["statement_mode"].as_object() {
        let unmirrored: Vec<_> = modes.values().filter(|v| v["mirrored"] != true).collect();
        ensure!(unmirrored.is_empty(), "not mirrored: {unmirrored:?}");
    }

    let keyed = user_tables(&s.pair.old, true)?;
    ensure!(!keyed.is_empty(), "no table with a primary key");
    assert_verified(&s.pair, &keyed.join(",")).await?;
    eprintln!(
        "{} tables compared row by row ({} verified by the reconciler); {:.1?} in all",
        tables.len(),
        keyed.len(),
        s.started.elapsed()
    );
    Ok(())
}

/// Django: `migrate` through the proxy (contenttypes, auth and an app with a CASCADE
/// foreign key, a many-to-many, UUID and JSON fields, auto_now timestamps; RunSQL
/// migrations for a join table without a key and for an audit trigger; a later migration
/// adding a column with a default, an index and a model; a data migration: AddField,
/// RunPython, AlterField in one transaction), then ORM writes on both client- and
/// server-side binding: bulk_create (also with update_conflicts / ignore_conflicts),
/// update() with F(), save(), get_or_create, update_or_create, bulk_update,
/// select_for_update (also skip_locked) in atomic blocks with nested atomics (one failing
/// and caught), iterator() over a server-side cursor while writing, manual commit and
/// rollback, deletes cascading in Django and in the database, and last an atomic block
/// whose COMMIT fails on one of Django's deferred foreign keys, after which the connection
/// must go on (see `failed_commit_ends_the_transaction`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_migrations_and_orm() -> Result<()> {
    python_bin()?; // a missing venv fails before clusters start
    let s = start(None).await?;
    run_python_app(&s, "django_app.py", "django: all steps passed").await?;
    check_mirrored(&s, Writers::ProxyOnly).await?;
    let new = &s.pair.new;
    ensure!(
        on(
            new,
            "SELECT string_agg(name, ',' ORDER BY name) FROM django_migrations WHERE app = 'shop'"
        )? == "0001_initial,0002_readers,0003_audit,0004_review_book_isbn_book_pages,0005_author_slug"
    );
    // The script's writes are deterministic: these are what old has too (compared above),
    // pinned so that an empty or shortened run cannot pass.
    ensure!(count(new, "SELECT count(*) FROM shop_book_audit")? == 36);
    ensure!(count(new, "SELECT count(*) FROM shop_reader")? == 9);
    ensure!(count(new, "SELECT count(*) FROM shop_book WHERE pages = 100")? == 8);
    ensure!(count(new, "SELECT count(*) FROM auth_permission")? == 36);
    ensure!(count(new, "SELECT count(*) FROM shop_tag")? == 7);
    Ok(())
}

/// SQLAlchemy 2 on psycopg 3: create_all through the proxy (identity and serial keys, a
/// composite key, an enum type, server defaults, an audit table and AFTER trigger from DDL
/// events), Core insert().returning(), executemany (insertmanyvalues and plain), upserts
/// with on_conflict_do_update changing values, ORM cascades with delete-orphan, a database
/// cascade under passive_deletes, session.merge, begin_nested() savepoints rolled back and
/// released, yield_per streaming while writing, with_for_update(skip_locked=True), and a
/// bulk load through a temp table filled by COPY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_orm_and_core() -> Result<()> {
    python_bin()?;
    let s = start(None).await?;
    run_python_app(&s, "sqlalchemy_app.py", "sqlalchemy: all checks passed").await?;
    check_mirrored(&s, Writers::ProxyOnly).await?;
    let new = &s.pair.new;
    ensure!(count(new, "SELECT count(*) FROM order_audit")? == 11);
    ensure!(count(new, "SELECT count(*) FROM stock")? == 32);
    ensure!(
        on(
            new,
            "SELECT on_hand || ',' || version FROM stock WHERE sku = 'sku-1'"
        )? == "15,2"
    );
    ensure!(count(new, "SELECT count(*) FROM customers")? == 11);
    Ok(())
}

/// The schema the asyncpg script expects, on both databases.
const ASYNCPG_SCHEMA: &str = "
CREATE TABLE accounts (
    id int PRIMARY KEY,
    owner text NOT NULL,
    balance numeric(14, 2) NOT NULL CHECK (balance > -100000),
    version int NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE transfers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    src int NOT NULL REFERENCES accounts ON DELETE CASCADE,
    dst int NOT NULL REFERENCES accounts ON DELETE CASCADE,
    amount numeric(14, 2) NOT NULL,
    worker int,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE events (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account int REFERENCES accounts ON DELETE CASCADE,
    kind text NOT NULL,
    payload jsonb,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE readings (sensor int NOT NULL, at timestamptz NOT NULL, value float8);
CREATE TABLE balance_audit (
    id bigserial PRIMARY KEY,
    account int NOT NULL,
    old_balance numeric(14, 2),
    new_balance numeric(14, 2),
    txid bigint NOT NULL DEFAULT txid_current(),
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION audit_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO balance_audit (account, old_balance, new_balance)
  VALUES (coalesce(NEW.id, OLD.id), OLD.balance, NEW.balance);
  RETURN NULL;
END $$;
CREATE TRIGGER accounts_audit AFTER INSERT OR DELETE OR UPDATE OF balance ON accounts
    FOR EACH ROW EXECUTE FUNCTION audit_balance();
";

/// An asyncpg pool: twelve tasks on six connections moving money between eight accounts
/// (overlapping rows: row locks, REPEATABLE READ with serialization failures retried,
/// rollbacks, a CHECK failing inside a savepoint), binary COPY with copy_records_to_table
/// (a table without a key, duplicates included; server defaults), text COPY, executemany,
/// fetch of UPDATE/DELETE ... RETURNING, a cascading delete, a prepared statement reused,
/// a cursor read while its rows are updated, a multi-statement script, a binary jsonb
/// codec set up per pooled connection; audit rows from a trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_concurrent_transactions() -> Result<()> {
    python_bin()?;
    let s = start(Some(ASYNCPG_SCHEMA)).await?;
    run_python_app(&s, "asyncpg_app.py", "asyncpg: all checks passed").await?;
    check_mirrored(&s, Writers::ProxyOnly).await?;
    let new = &s.pair.new;
    // 120 committed transfers, less those of the account deleted at the end.
    let transfers = count(new, "SELECT count(*) FROM transfers")?;
    ensure!((1..120).contains(&transfers), "{transfers} transfers");
    ensure!(count(new, "SELECT count(*) FROM balance_audit")? > 2 * transfers);
    ensure!(
        count(
            new,
            "SELECT count(*) FROM readings WHERE sensor = 9 AND value >= 1"
        )? == 5
    );
    ensure!(count(new, "SELECT count(*) FROM events WHERE kind = 'seed'")? > 150);
    Ok(())
}

/// The schema the node-postgres script expects, on both databases.
const NODE_SCHEMA: &str = "
CREATE TABLE products (
    id serial PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    name text NOT NULL,
    price numeric(10, 2) NOT NULL,
    attrs jsonb,
    photo bytea,
    sizes int[],
    on_hand int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    discontinued_at timestamptz
);
CREATE TABLE stock_moves (
    id bigserial PRIMARY KEY,
    product_id int NOT NULL REFERENCES products ON DELETE CASCADE,
    qty int NOT NULL,
    reason text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE product_tags (product_id int NOT NULL REFERENCES products ON DELETE CASCADE, tag text NOT NULL);
CREATE TABLE move_audit (
    id bigserial PRIMARY KEY,
    move_id bigint NOT NULL,
    product_id int NOT NULL,
    op text NOT NULL,
    qty int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION apply_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE products SET on_hand = on_hand + NEW.qty WHERE id = NEW.product_id;
    INSERT INTO move_audit (move_id, product_id, op, qty) VALUES (NEW.id, NEW.product_id, TG_OP, NEW.qty);
  ELSE
    UPDATE products SET on_hand = on_hand - OLD.qty WHERE id = OLD.product_id;
    INSERT INTO move_audit (move_id, product_id, op, qty) VALUES (OLD.id, OLD.product_id, TG_OP, OLD.qty);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER stock_moves_apply AFTER INSERT OR DELETE ON stock_moves FOR EACH ROW EXECUTE FUNCTION apply_move();
CREATE TABLE \"ProductNote\" (
    id serial PRIMARY KEY,
    \"productId\" int NOT NULL REFERENCES products ON DELETE CASCADE,
    \"user\" text NOT NULL,
    \"Body\" text,
    \"createdAt\" timestamptz NOT NULL DEFAULT now()
);
";

/// node-postgres: a Pool, parameterized queries (unnamed extended-protocol statements,
/// JSON, bytea, arrays, dates, nulls), named prepared statements reused on several
/// connections concurrently, BEGIN/COMMIT with a ROLLBACK path on an error and one by
/// choice, a savepoint, multi-statement simple query strings (with their own transaction,
/// failing in the middle, DDL with data), quoted mixed-case names, a cascading delete; a
/// trigger that updates another table and writes an audit table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_pool() -> Result<()> {
    let node = node_bin()?;
    let modules = node_modules()?;
    let script = node_script("pg_app.js");
    ensure!(script.is_file(), "{} is missing", script.display());
    let s = start(Some(NODE_SCHEMA)).await?;
    run_script(
        Command::new(&node)
            .arg(&script)
            .arg(&s.url)
            .env("NODE_PATH", &modules),
        "pg_app.js",
        "node-postgres: all checks passed",
    )
    .await?;
    check_mirrored(&s, Writers::ProxyOnly).await?;
    let new = &s.pair.new;
    ensure!(count(new, "SELECT count(*) FROM move_audit")? == 62);
    ensure!(count(new, "SELECT count(*) FROM stock_moves")? == 50);
    ensure!(count(new, "SELECT count(*) FROM product_tags")? == 4);
    ensure!(
        on(
            new,
            "SELECT sum(on_hand) = (SELECT sum(qty) FROM stock_moves) FROM products"
        )? == "t"
    );
    ensure!(count(new, "SELECT count(*) FROM products WHERE weight_g = 500")? == 15);
    ensure!(
        count(
            new,
            "SELECT count(*) FROM \"ProductNote\" WHERE \"Body\" LIKE '%(edited)'"
        )? == 2
    );
    Ok(())
}

/// The tables a DBA session works on, on both databases (the application's data is written
/// through the proxy by the script itself).
const DBA_SCHEMA: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers ON DELETE CASCADE,
    status text NOT NULL,
    total numeric(12, 2) NOT NULL,
    placed_at timestamptz NOT NULL
);
CREATE TABLE order_items (order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE, sku text NOT NULL, qty int NOT NULL);
CREATE TABLE staging (email text, name text);
";

/// What a DBA runs with `psql -f` during a migration window, through the proxy.
const DBA_SCRIPT: &str = r#"-- The application's data.
INSERT INTO customers (email, name) SELECT 'c' || g || '@example.com', 'customer ' || g FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, status, total, placed_at)
  SELECT 1 + g % 200, CASE WHEN g % 5 = 0 THEN 'pending' ELSE 'paid' END, (g % 97) * 1.5,
         timestamptz '2023-06-01' + g * interval '1 hour'
  FROM generate_series(1, 2000) g;
INSERT INTO order_items SELECT o.id, 'sku-' || (o.id % 13), 1 + o.id % 3 FROM orders o, generate_series(1, 2);
UPDATE orders SET total = total + 1 WHERE id % 7 = 0;
UPDATE order_items SET qty = qty + 1 WHERE order_id % 3 = 0;
-- A new column backfilled in batches, then made NOT NULL; a constraint added NOT VALID
-- and validated; a comment; an index.
ALTER TABLE orders ADD COLUMN total_cents bigint;
UPDATE orders SET total_cents = (total * 100)::bigint WHERE id <= 1000;
UPDATE orders SET total_cents = (total * 100)::bigint WHERE total_cents IS NULL;
ALTER TABLE orders ALTER COLUMN total_cents SET NOT NULL;
ALTER TABLE orders ADD CONSTRAINT orders_total_nonneg CHECK (total >= 0) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_total_nonneg;
COMMENT ON COLUMN orders.total_cents IS 'total in cents';
CREATE INDEX orders_customer ON orders (customer_id, placed_at);
-- A data fix under an explicit lock, with a scratch table made from a query.
BEGIN;
LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE;
CREATE TEMP TABLE stale ON COMMIT DROP AS
  SELECT id FROM orders WHERE status = 'pending' AND placed_at < '2023-08-01';
UPDATE orders o SET status = 'cancelled' FROM stale s WHERE s.id = o.id;
DELETE FROM order_items i USING orders o WHERE o.id = i.order_id AND o.status = 'cancelled';
COMMIT;
-- Archiving with a writable CTE into a table made LIKE the original.
CREATE TABLE orders_archive (LIKE orders INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
WITH moved AS (DELETE FROM orders WHERE status = 'cancelled' RETURNING *)
  INSERT INTO orders_archive SELECT * FROM moved;
-- A staging reload: TRUNCATE, COPY, upsert.
TRUNCATE staging;
COPY staging (email, name) FROM STDIN;
c1@example.com	first customer, renamed
new1@example.com	new one
new2@example.com	new two
\.
INSERT INTO customers (email, name) SELECT email, name FROM staging
  ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name;
-- Maintenance (old only: physical, nothing to mirror).
VACUUM (ANALYZE) orders;
ANALYZE customers;
REINDEX TABLE customers;
CLUSTER orders USING orders_pkey;
SELECT setval('customers_id_seq', (SELECT max(id) FROM customers)) \g /dev/null
-- A materialized view, refreshed after a change.
CREATE MATERIALIZED VIEW customer_totals AS
  SELECT customer_id, count(*) AS n, sum(total) AS total FROM orders GROUP BY customer_id;
UPDATE orders SET total = total * 2 WHERE customer_id = 1;
REFRESH MATERIALIZED VIEW customer_totals;
-- A type change with USING, a generated column, a column with a default for existing
-- rows (when the row was first seen).
ALTER TABLE orders ALTER COLUMN status TYPE varchar(20) USING upper(status);
ALTER TABLE customers ADD COLUMN domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED;
ALTER TABLE customers ADD COLUMN first_seen timestamptz NOT NULL DEFAULT now();
-- A fix with the application's triggers off, pg_restore style.
SET session_replication_role = replica;
UPDATE customers SET name = name || ' (fixed)' WHERE id <= 3;
RESET session_replication_role;
-- A read-only role.
CREATE ROLE reporting NOLOGIN;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO reporting;
-- Partition maintenance.
CREATE TABLE events (id bigint, at timestamptz, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO events SELECT g, timestamptz '2023-12-31' + g * interval '1 hour', 'e' FROM generate_series(1, 48) g;
ALTER TABLE events DETACH PARTITION events_2023;
DROP TABLE events_2023;
TRUNCATE staging;
\echo dba session done
"#;

/// A DBA's psql session through the proxy: a batched backfill of a new column, NOT VALID
/// then VALIDATE, a data fix under LOCK TABLE with a scratch table made by CREATE TEMP
/// TABLE ... AS, archiving with a writable CTE, TRUNCATE + COPY + upsert, VACUUM, ANALYZE,
/// REINDEX, CLUSTER, setval, a materialized view refreshed, a type change with USING, a
/// generated column, a column added with `DEFAULT now()`, a fix under
/// `session_replication_role = replica`, a role and grants, partitions created, detached
/// and dropped. Then a job writes straight on old (as cron would): it reaches new through
/// the change log. The materialized view is compared too.
///
/// Fails today on two proxy bugs, each reproduced alone below:
/// `temp_table_as_select_leaves_the_change_log_working` and
/// `column_added_with_volatile_default_has_old_values_on_new`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dba_session_through_psql() -> Result<()> {
    let s = start(Some(DBA_SCHEMA)).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dba.sql");
    std::fs::write(&path, DBA_SCRIPT)?;
    run_script(
        Command::new(psql_bin())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&path)
            .arg(&s.url),
        "psql (DBA session)",
        "dba session done",
    )
    .await?;
    // A job straight on the old database, without the proxy.
    on(
        &s.pair.old,
        "UPDATE customers SET name = 'set by cron' WHERE id = 7",
    )?;
    let new = &s.pair.new;
    poll_until_async(
        "the write made straight on old to reach new through the change log",
        Duration::from_secs(20),
        || async move {
            Ok(
                (on(new, "SELECT name FROM customers WHERE id = 7")? == "set by cron")
                    .then_some(()),
            )
        },
    )
    .await?;
    check_mirrored(&s, Writers::AlsoDirect).await?;
    ensure!(
        rows(&s.pair.old, "customer_totals")? == rows(new, "customer_totals")?,
        "the materialized view differs"
    );
    ensure!(count(new, "SELECT count(*) FROM orders_archive")? > 0);
    ensure!(count(new, "SELECT count(*) FROM events")? == 25);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Minimal reproductions of the proxy bugs the stacks found. Each fails on the proxy as of
// this branch; its comment says what happens and where.
// ------------------------------------------------------------------------------------------

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
    let err = c
        .batch_execute("COMMIT")
        .await
        .err()
        .context("COMMIT must fail on the deferred foreign key")?;
    ensure!(
        err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION),
        "COMMIT failed otherwise: {err:?}"
    );
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
    let new = &s.pair.new;
    poll_until_async(
        "the write made straight on old to reach new",
        Duration::from_secs(20),
        || async move { Ok((count(new, "SELECT count(*) FROM t")? == 2).then_some(())) },
    )
    .await?;
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
    let run = reconciler(&s.pair, "replay", &[]).await?;
    ensure!(run.code() == Some(0), "{}", run.text());
    tokio::task::block_in_place(|| assert_all_tables_same(&s.pair))?;
    ensure!(retry_records(&s.pair)? == 0);
    Ok(())
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
    ensure!(retry_records(&s.pair)? == 0, "the retry log is not empty");
    ensure!(count(&s.pair.new, "SELECT count(*) FROM item_log")? == 2);
    Ok(())
}
