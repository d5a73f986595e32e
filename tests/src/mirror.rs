//! Helpers for tests of dual writes: SQL on one cluster, the reconciler against a pair,
//! and polling the new side (COMMIT PREPARED reaches it a moment after the client's answer).

use crate::pg::PgCluster;
use crate::proxy::{Pair, DB};
use crate::reconciler::{run_reconciler, ReconcilerRun};
use crate::wait::poll_until;
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_proxy::RunningProxy;

/// How long the reconciler may run in a test.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long new may take to show what the client was told is committed.
const SETTLE: Duration = Duration::from_secs(10);

/// The proxy's log in test output, filtered by `SWITCHYARD_LOG` (default `warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// `sql` through psql on database [`DB`] of `c`; lets the runtime move its other tasks
/// (an in-process proxy) off this worker meanwhile.
pub fn on(c: &PgCluster, sql: &str) -> Result<String> {
    tokio::task::block_in_place(|| c.psql(DB, sql))
}

/// A pair of clusters with `schema` run on both (none when empty).
pub async fn pair_with(schema: &str) -> Result<Pair> {
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    if !schema.is_empty() {
        on(&pair.old, schema).context("schema on old")?;
        on(&pair.new, schema).context("schema on new")?;
    }
    for c in [&pair.old, &pair.new] {
        on(c, CHECKPOINT)?;
    }
    Ok(pair)
}

/// An in-process proxy in front of a pair (fields drop in order: the proxy stops before
/// the clusters it talks to).
pub struct Proxied {
    pub proxy: RunningProxy,
    pub pair: Pair,
}

/// [`pair_with`] `schema`, and a proxy with the pair's default configuration in front.
pub async fn proxied(schema: &str) -> Result<Proxied> {
    init_tracing();
    let pair = pair_with(schema).await?;
    let proxy = crate::proxy::start_proxy(pair.config()).await?;
    Ok(Proxied { proxy, pair })
}

/// The test clusters run with `synchronous_commit = off`: a commit can sit in WAL buffers
/// for a few hundred milliseconds, and a test that soon after stops a cluster with
/// `stop_immediate` loses it (the schema is gone from new after the restart, and replay
/// fails on a missing table). A checkpoint writes the setup out.
const CHECKPOINT: &str = "CHECKPOINT";

/// `switchyard-reconciler CMD --old .. --new .. EXTRA...` against the pair.
pub async fn reconciler(pair: &Pair, cmd: &str, extra: &[&str]) -> Result<ReconcilerRun> {
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    let mut args = vec![cmd, "--old", &old, "--new", &new];
    args.extend_from_slice(extra);
    run_reconciler(&args, RUN_TIMEOUT).await
}

/// [`reconciler`] with `--format json`: the exit code and stdout parsed.
pub async fn reconciler_json(
    pair: &Pair,
    cmd: &str,
    extra: &[&str],
) -> Result<(i32, serde_json::Value)> {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let run = reconciler(pair, cmd, &args).await?;
    let code = run.code().with_context(|| run.text())?;
    let json = serde_json::from_str(&run.stdout)
        .with_context(|| format!("stdout is not JSON:\n{}", run.text()))?;
    Ok((code, json))
}

/// The reconciler's verify must find `tables` (comma-separated) equal on both sides, row
/// by row. Sequences are left out: while old takes the writes new's stay behind by design
/// (the cutover's write flip advances them), and these checks are about rows.
pub async fn assert_verified(pair: &Pair, tables: &str) -> Result<()> {
    let run = reconciler(pair, "verify", &["--tables", tables, "--skip-sequences"]).await?;
    ensure!(
        run.code() == Some(0),
        "verify found differences:\n{}",
        run.text()
    );
    Ok(())
}

/// Polls `sql` on `c` until it returns `want`, for up to 10 s.
pub fn eventually(c: &PgCluster, sql: &str, want: &str) -> Result<()> {
    let mut got = String::new();
    poll_until(&format!("{sql} to return {want:?}"), SETTLE, || {
        got = on(c, sql)?;
        Ok((got == want).then_some(()))
    })
    .with_context(|| format!("{sql}: got {got:?}, want {want:?}"))
}

/// Polls `sql` on `c` until it returns `want`, for up to `timeout`, off the runtime's
/// threads (what is awaited, a lock taken or a build started, may need them); `what` names
/// the wait in the error.
pub fn wait_on(c: &PgCluster, what: &str, timeout: Duration, sql: &str, want: &str) -> Result<()> {
    let mut got = String::new();
    tokio::task::block_in_place(|| {
        poll_until(what, timeout, || {
            got = on(c, sql)?;
            Ok((got == want).then_some(()))
        })
    })
    .with_context(|| format!("{sql}: got {got:?}, want {want:?}"))
}

/// The tables `pgbench -i` makes.
pub const PGBENCH_TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

/// The pgbench tables with a primary key (`pgbench_history` has none), for `--tables`.
pub const PGBENCH_KEYED: &str = "pgbench_accounts,pgbench_branches,pgbench_tellers";

/// A pair of clusters, each with `pgbench -i -s 1` (the same accounts, branches, tellers).
pub async fn pgbench_pair() -> Result<Pair> {
    pgbench_pair_from(Pair::start).await
}

/// The same on clusters that cannot prepare transactions (`mirror.mode = "lockstep"`).
pub async fn pgbench_pair_without_prepare() -> Result<Pair> {
    pgbench_pair_from(Pair::start_without_prepare).await
}

async fn pgbench_pair_from(start: fn() -> Result<Pair>) -> Result<Pair> {
    let pair = tokio::task::spawn_blocking(start).await??;
    tokio::task::block_in_place(|| -> Result<()> {
        for c in [&pair.old, &pair.new] {
            let out = std::process::Command::new(crate::clients::pgbench_bin())
                .args(["-i", "-s", "1", "-q"])
                .arg(c.url(DB))
                .output()?;
            ensure!(
                out.status.success(),
                "pgbench -i: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            c.psql(DB, CHECKPOINT)?;
        }
        Ok(())
    })?;
    Ok(pair)
}

/// Runs one `INSERT INTO t VALUES (id, 'x')` through a proxy binary (started with `args`
/// besides the pair's URLs) that aborts at `failpoint`; returns once the process is gone.
pub async fn crash_at(pair: &Pair, args: &[&str], failpoint: &str, id: i32) -> Result<()> {
    let (old, new) = (pair.old.url(DB), pair.new.url(DB));
    let mut all = vec!["--old", old.as_str(), "--new", new.as_str()];
    all.extend_from_slice(args);
    let mut proxy = tokio::task::block_in_place(|| {
        crate::proxy::ProxyProcess::spawn(&all, &[("SWITCHYARD_FAILPOINT", failpoint)])
    })?;
    let client = proxy.client().await?;
    let r = client
        .execute("INSERT INTO t VALUES ($1, 'x')", &[&id])
        .await;
    ensure!(r.is_err(), "the proxy should have died at {failpoint}");
    tokio::task::block_in_place(|| {
        poll_until("the proxy to exit", Duration::from_secs(10), || {
            Ok(proxy.try_wait()?.map(|_| ()))
        })
    })?;
    Ok(())
}

/// [`crash_at`] `after-primary-commit` on an empty `t`: old committed the row, new has none
/// yet (its half is left to recovery or replay).
pub async fn crash_between_commits(pair: &Pair, args: &[&str]) -> Result<()> {
    crash_at(pair, args, "after-primary-commit", 1).await?;
    ensure!(
        on(&pair.old, "SELECT count(*) FROM t")? == "1",
        "committed on old"
    );
    ensure!(
        on(&pair.new, "SELECT count(*) FROM t")? == "0",
        "not yet visible on new"
    );
    Ok(())
}

/// pgbench (tpcb-like, 4 clients, 6 s, prepared) through `url`, with new stopped
/// (immediate) once the load reaches it and started again 2 s later. Fails unless pgbench
/// ran without a failed transaction; returns its output.
pub async fn pgbench_across_secondary_restart(pair: &Pair, url: &str) -> Result<String> {
    let load = {
        let url = url.to_string();
        tokio::spawn(async move {
            let args = ["-c", "4", "-T", "6", "-M", "prepared", "-n"];
            crate::clients::pgbench_clean(&url, &args).await
        })
    };
    tokio::task::block_in_place(|| {
        poll_until("the load to reach new", Duration::from_secs(10), || {
            let n: i64 = on(&pair.new, "SELECT count(*) FROM pgbench_history")?.parse()?;
            Ok((n > 50).then_some(()))
        })
    })?;
    tokio::task::block_in_place(|| pair.new.stop_immediate())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pair.new.start())?;
    load.await?
        .context("pgbench while the secondary was killed")
}

/// Every row of `table` on `c` as text, sorted.
pub fn rows(c: &PgCluster, table: &str) -> Result<String> {
    on(c, &format!("SELECT t::text FROM {table} t ORDER BY 1"))
}

/// Asserts every table in `tables` holds the same rows on both clusters, compared row by
/// row. COMMIT PREPARED reaches new a moment after the client's answer, so new is polled
/// for up to 10 s; nothing is replayed.
pub fn assert_same(pair: &Pair, tables: &[&str]) -> Result<()> {
    for table in tables {
        same_rows(pair, table)?;
    }
    Ok(())
}

/// Asserts `table` holds the same rows on both clusters, compared row by row (new polled
/// for up to 10 s, as in [`assert_same`]); returns them.
pub fn same_rows(pair: &Pair, table: &str) -> Result<String> {
    let mut last = (String::new(), String::new());
    poll_until(&format!("{table} to match on both sides"), SETTLE, || {
        last = (rows(&pair.old, table)?, rows(&pair.new, table)?);
        Ok((last.0 == last.1).then(|| last.0.clone()))
    })
    .with_context(|| {
        let (old, new) = &last;
        format!("{table} differs:\n--- old\n{old}\n--- new\n{new}")
    })
}

/// [`assert_same`] `tables`, and [`assert_nothing_queued`]: new took every write in
/// lockstep, nothing was replayed.
pub fn assert_mirrored(pair: &Pair, tables: &[&str]) -> Result<()> {
    assert_same(pair, tables)?;
    assert_nothing_queued(pair)
}

/// Nothing queued in the retry log on old: new took every write in lockstep.
pub fn assert_nothing_queued(pair: &Pair) -> Result<()> {
    let queued = retry_records(pair)?;
    ensure!(queued == 0, "{queued} records in the retry log, want none");
    Ok(())
}

/// After pgbench through the proxy (and any replay): nothing queued, the keyed tables
/// verified equal, and `pgbench_history`, which has no key for verify to compare by,
/// equal by row count and sum.
pub async fn assert_pgbench_level(pair: &Pair) -> Result<()> {
    assert_nothing_queued(pair)?;
    assert_verified(pair, PGBENCH_KEYED).await?;
    let hist = |c: &PgCluster| on(c, "SELECT count(*), sum(delta) FROM pgbench_history");
    ensure!(
        hist(&pair.old)? == hist(&pair.new)?,
        "history (no primary key, mirrored by image) differs"
    );
    Ok(())
}

/// Rows in the retry log on old (nothing should be queued when new took everything).
pub fn retry_records(pair: &Pair) -> Result<i64> {
    Ok(on(&pair.old, "SELECT count(*) FROM _switchyard.retry_log")?.parse()?)
}

/// The user tables of `c` (ordinary and partitioned, outside the system schemas and
/// Switchyard's own `_switchyard`) as `schema.table`, each part quoted when it needs it
/// (what SQL and the reconciler's `--tables` both read), sorted. `keyed` keeps only tables
/// with a primary key.
pub fn user_tables(c: &PgCluster, keyed: bool) -> Result<Vec<String>> {
    let filter = if keyed {
        "AND EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p')"
    } else {
        ""
    };
    let out = on(
        c,
        &format!(
            "SELECT format('%I.%I', n.nspname, c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_switchyard') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' {filter} \
             ORDER BY 1"
        ),
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Asserts both clusters have the same user tables and that every one of them holds the
/// same rows (all of them as text, sorted; see [`assert_same`]). Returns the tables.
pub fn assert_all_tables_same(pair: &Pair) -> Result<Vec<String>> {
    let old = user_tables(&pair.old, false)?;
    let new = user_tables(&pair.new, false)?;
    ensure!(
        old == new,
        "the databases have different tables:\n--- old\n{old:?}\n--- new\n{new:?}"
    );
    let names: Vec<&str> = old.iter().map(String::as_str).collect();
    assert_same(pair, &names)?;
    Ok(old)
}

/// One line per schema object a migration can create in the user's schemas: relations,
/// columns (type, NOT NULL, identity, default), constraints, indexes, triggers, routines,
/// enum/domain/range types, schemas. Switchyard's own schema and its capture triggers on
/// the old database are left out: they are what the proxy adds, not the application.
const SCHEMA_OUTLINE: &str = r#"
WITH rels AS (
  SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '_switchyard')
    AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
)
SELECT line FROM (
  SELECT format('relation %s kind %s', name, relkind) AS line FROM rels
  UNION ALL
  SELECT format('column %s.%I %s%s%s%s%s', r.name, a.attname, format_type(a.atttypid, a.atttypmod),
         CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
         CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END,
         CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END,
         coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''))
  FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f')
  UNION ALL
  SELECT format('constraint %s %I %s', r.name, co.conname, pg_get_constraintdef(co.oid))
  FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM rels r JOIN pg_index i ON i.indrelid = r.oid
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
  FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid
  WHERE NOT t.tgisinternal AND t.tgname NOT LIKE 'switchyard\_capture\_%'
  UNION ALL
  SELECT 'routine ' || replace(pg_get_functiondef(p.oid), E'\n', ' ')
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '_switchyard') AND p.prokind IN ('f', 'p')
  UNION ALL
  SELECT format('type %I.%I %s %s', n.nspname, t.typname, t.typtype,
         (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid))
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE t.typtype IN ('e', 'd', 'r') AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_switchyard')
  UNION ALL
  SELECT format('schema %I', nspname) FROM pg_namespace
  WHERE nspname NOT IN ('pg_catalog', 'information_schema', '_switchyard') AND nspname NOT LIKE 'pg\_%'
) s ORDER BY line COLLATE "C""#;

/// The user schema of `c`, one object per line (see `SCHEMA_OUTLINE`).
pub fn schema_outline(c: &PgCluster) -> Result<String> {
    on(c, SCHEMA_OUTLINE)
}

/// Asserts old and new have the same user schema (DDL that went through the proxy was
/// mirrored); the error lists the lines only one side has.
pub fn assert_same_schema(pair: &Pair) -> Result<()> {
    let old = schema_outline(&pair.old)?;
    let new = schema_outline(&pair.new)?;
    if old == new {
        return Ok(());
    }
    let (o, n): (
        std::collections::BTreeSet<&str>,
        std::collections::BTreeSet<&str>,
    ) = (old.lines().collect(), new.lines().collect());
    let only = |a: &std::collections::BTreeSet<&str>, b: &std::collections::BTreeSet<&str>| {
        a.difference(b).copied().collect::<Vec<_>>().join("\n")
    };
    anyhow::bail!(
        "the schemas differ\n--- only on old\n{}\n--- only on new\n{}",
        only(&o, &n),
        only(&n, &o)
    )
}

/// The id of the transaction `c` is in (`pg_current_xact_id()`, which assigns one).
pub async fn current_xid(c: &tokio_postgres::Client) -> Result<String> {
    Ok(c.query_one("SELECT pg_current_xact_id()::text", &[])
        .await?
        .get(0))
}

/// A session of its own on `c` with a transaction running `sql`, left open; the session
/// and the transaction's id.
pub async fn open_transaction(
    c: &PgCluster,
    sql: &str,
) -> Result<(tokio_postgres::Client, String)> {
    let session = c.connect(DB).await?;
    session.batch_execute(&format!("BEGIN; {sql}")).await?;
    let xid = current_xid(&session).await?;
    Ok((session, xid))
}
