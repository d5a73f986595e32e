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
//! The Python stacks are here; node-postgres in `node`, the DBA's psql session in `dba`.
//! `reproductions` holds minimal reproductions of the proxy bugs the stacks ran into, one
//! test each; they fail until the bug is fixed, as do the stack tests that hit them.
//!
//! Needs what `.ci/setup` installs (Django and SQLAlchemy in the venv, node-postgres in the
//! cache). `SWITCHYARD_LOG=switchyard_proxy=trace` shows the proxy's steps (messages from
//! old, commit phases, drain errors) in the test output.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use switchyard_proxy::RunningProxy;
use switchyard_tests::clients::{python_bin, python_script, run_client_ok, ClientOutput};
use switchyard_tests::mirror::{
    assert_all_tables_same, assert_nothing_queued, assert_same_schema, assert_verified,
    init_tracing, on, user_tables, wait_on,
};
use switchyard_tests::proxy::{proxy_url, start_proxy, Pair};
use switchyard_tests::PgCluster;
use tokio::process::Command;

#[path = "app_stacks/dba.rs"]
mod dba;
#[path = "app_stacks/node.rs"]
mod node;
#[path = "app_stacks/reproductions.rs"]
mod reproductions;

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
    let out = run_client_ok(cmd, what, SCRIPT_TIMEOUT).await?;
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
    wait_on(
        &s.pair.new,
        "no prepared transaction left on new",
        Duration::from_secs(10),
        "SELECT count(*) FROM pg_prepared_xacts",
        "0",
    )?;
    assert_nothing_queued(&s.pair)?;

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
