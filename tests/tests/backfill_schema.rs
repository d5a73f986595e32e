//! `switchyard-backfill --schema copy` against real clusters: old's schema (a foreign key,
//! a serial column, an index, a view, a function; capture installed) made on an empty new
//! without old's capture, the rows copied
//! and equal, the indexes and constraints there afterwards; a second run finds the schema
//! and goes on; a new database holding another schema is refused and left untouched; a
//! missing pg_dump is named.

use anyhow::{ensure, Context, Result};
use switchyard_tests::backfill::{
    backfill, backfill_command, pair_args, wait_backfill, BACKFILL_TIMEOUT,
};
use switchyard_tests::mirror::{assert_verified, on};
use switchyard_tests::pg::bin_dir;
use switchyard_tests::proxy::Pair;
use switchyard_tests::{Auth, PgCluster, PgClusterBuilder};

const OLD_SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE, mood mood);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    total numeric(10, 2) NOT NULL CHECK (total >= 0)
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE FUNCTION order_count(c int) RETURNS bigint LANGUAGE sql STABLE
    AS 'SELECT count(*) FROM public.orders WHERE customer_id = c';
CREATE VIEW customer_totals AS
    SELECT c.id, c.email, sum(o.total) AS total FROM customers c JOIN orders o ON o.customer_id = c.id
    GROUP BY c.id, c.email;
INSERT INTO customers (email, mood) SELECT 'c' || g || '@example.com', CASE WHEN g % 2 = 0 THEN 'calm'::mood ELSE 'busy'::mood END
    FROM generate_series(1, 2000) g;
INSERT INTO orders (customer_id, total) SELECT 1 + g % 2000, (g % 500) / 7.0 FROM generate_series(1, 12000) g;
";

/// The schema's objects as the catalogs print them: equal on both sides when the copy
/// made new as old is.
const CATALOG: &str = "
SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
  SELECT indexdef AS x FROM pg_indexes WHERE schemaname = 'public'
  UNION ALL SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'view ' || pg_get_viewdef('customer_totals'::regclass)
  UNION ALL SELECT 'default ' || pg_get_expr(adbin, adrelid) FROM pg_attrdef
    WHERE adrelid IN ('customers'::regclass, 'orders'::regclass)
  UNION ALL SELECT 'owned ' || s.relname || ' by ' || t.relname FROM pg_depend d
    JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
      AND s.relnamespace = 'public'::regnamespace
    JOIN pg_class t ON t.oid = d.refobjid WHERE d.deptype = 'a'
) o";

const ROWS: &str = "SELECT md5(string_agg(c::text, ',' ORDER BY c.id)) || ' ' || \
     (SELECT md5(string_agg(o::text, ',' ORDER BY o.id)) FROM orders o) FROM customers c";

/// `pg_dump --schema-only` of new without the random `\\restrict` key of each dump.
fn new_schema(pair: &Pair) -> Result<String> {
    let dump = pair.new.schema_dump(switchyard_tests::proxy::DB)?;
    Ok(dump
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn pg_bin() -> String {
    bin_dir().to_string_lossy().into_owned()
}

async fn old_with_schema(new: PgClusterBuilder) -> Result<Pair> {
    let pair =
        tokio::task::spawn_blocking(move || Pair::start_with(PgCluster::builder(), new)).await??;
    on(&pair.old, OLD_SCHEMA)?;
    Ok(pair)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_schema_then_backfill_gives_equal_tables_and_a_second_run_resumes() -> Result<()> {
    let pair = old_with_schema(PgCluster::builder()).await?;
    // Old as the proxy leaves it: capture triggers on every table, event triggers and
    // `_switchyard`, none of which is the application's schema to copy.
    let old = pair.old.connect(switchyard_tests::proxy::DB).await?;
    switchyard_core::capture::install::install(&old).await?;
    ensure!(
        on(
            &pair.old,
            "SELECT count(*) > 0 FROM pg_trigger WHERE tgname LIKE 'switchyard_capture%'"
        )? == "t",
        "capture installed on old"
    );
    let bin = pg_bin();
    let copying = ["--schema", "copy", "--pg-bin", &bin, "--chunk-rows", "500"];
    // First only one table: a run stopped before the rest is what the second one resumes.
    backfill(&pair, &[&copying[..], &["--tables", "customers"]].concat())
        .await?
        .exits(0)
        .context("first run")?
        .stdout_has("schema copied from old")?;
    ensure!(
        on(&pair.new, "SELECT count(*) FROM orders")? == "0",
        "orders is made but not loaded yet"
    );
    backfill(&pair, &[&copying[..], &["--jobs", "2"]].concat())
        .await?
        .exits(0)
        .context("second run")?
        .stdout_has("schema: old's already on new")?
        // The index is built after the load.
        .stdout_has("rebuilt orders_customer")?;
    let (old_rows, new_rows) = (on(&pair.old, ROWS)?, on(&pair.new, ROWS)?);
    ensure!(
        old_rows == new_rows,
        "rows differ: {old_rows} vs {new_rows}"
    );
    let (old_cat, new_cat) = (on(&pair.old, CATALOG)?, on(&pair.new, CATALOG)?);
    ensure!(
        old_cat == new_cat,
        "schema differs:\n--- old ---\n{old_cat}\n--- new ---\n{new_cat}"
    );
    ensure!(old_cat.contains("FOREIGN KEY (customer_id)"), "{old_cat}");
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'switchyard%'"
        )? == "0"
            && on(&pair.new, "SELECT count(*) FROM pg_event_trigger")? == "0",
        "old's capture is not copied"
    );
    ensure!(
        on(&pair.new, "SELECT order_count(7)")? == on(&pair.old, "SELECT order_count(7)")?,
        "the function works on new"
    );
    ensure!(
        on(&pair.new, "SELECT count(*) FROM customer_totals")? == "2000",
        "the view reads the copied rows"
    );
    assert_verified(&pair, "customers,orders").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_with_another_schema_is_refused_and_left_untouched() -> Result<()> {
    let pair = old_with_schema(PgCluster::builder().auth(Auth::Scram)).await?;
    let password = pair.new.password().unwrap_or_default().to_string();
    ensure!(!password.is_empty(), "new asks for a password");
    on(
        &pair.new,
        "CREATE TABLE customers (id int PRIMARY KEY, name text)",
    )?;
    let before = new_schema(&pair)?;
    let run = backfill(
        &pair,
        &["--schema", "copy", "--pg-bin", &pg_bin(), "--dry-run"],
    )
    .await?;
    ensure!(
        run.code() == Some(2) && run.stderr.contains("refuses the new database"),
        "a dry run refuses too:\n{}",
        run.text()
    );
    let run = backfill(&pair, &["--schema", "copy", "--pg-bin", &pg_bin()]).await?;
    ensure!(run.code() == Some(2), "refused:\n{}", run.text());
    ensure!(
        run.stderr.contains("refuses the new database")
            && run
                .stderr
                .contains("only on new: CREATE TABLE public.customers ("),
        "the refusal says why:\n{}",
        run.text()
    );
    ensure!(
        !run.text().contains(&password),
        "password in the output:\n{}",
        run.text()
    );
    let after = new_schema(&pair)?;
    ensure!(before == after, "new changed:\n{before}\n---\n{after}");
    ensure!(
        on(&pair.new, "SELECT to_regnamespace('_switchyard') IS NULL")? == "t",
        "no chunk table either"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pg_dump_is_named() -> Result<()> {
    let pair = old_with_schema(PgCluster::builder()).await?;
    let empty = tempfile::tempdir()?;
    let dir = empty.path().to_string_lossy().into_owned();
    let run = backfill(&pair, &["--schema", "copy", "--pg-bin", &dir])
        .await?
        .exits(2)?;
    ensure!(
        run.stderr.contains("pg_dump") && run.stderr.contains(&dir),
        "{}",
        run.text()
    );
    // Found on neither the PATH.
    let args = pair_args(&pair, &["--schema", "copy"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = backfill_command(&refs)?.env("PATH", &dir).spawn()?;
    let run = wait_backfill(child, BACKFILL_TIMEOUT).await?.exits(2)?;
    ensure!(
        run.stderr.contains("pg_dump") && run.stderr.contains("PATH"),
        "{}",
        run.text()
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )? == "0",
        "nothing made on new"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_only_makes_the_whole_schema_and_copies_no_row() -> Result<()> {
    let pair = old_with_schema(PgCluster::builder()).await?;
    let bin = pg_bin();
    backfill(&pair, &["--schema-only", "--pg-bin", &bin])
        .await?
        .exits(0)?
        .stdout_has("schema copied from old")?;
    ensure!(
        on(&pair.new, "SELECT count(*) FROM customers")? == "0",
        "no rows"
    );
    let (old_cat, new_cat) = (on(&pair.old, CATALOG)?, on(&pair.new, CATALOG)?);
    ensure!(
        old_cat == new_cat,
        "indexes and constraints are there for the proxy:\n{old_cat}\n---\n{new_cat}"
    );
    backfill(&pair, &["--schema-only", "--pg-bin", &bin])
        .await?
        .exits(0)?
        .stdout_has("already on new")?;
    backfill(&pair, &["--schema", "copy", "--pg-bin", &bin])
        .await?
        .exits(0)?;
    ensure!(on(&pair.old, ROWS)? == on(&pair.new, ROWS)?, "rows equal");
    ensure!(
        on(&pair.new, CATALOG)? == old_cat,
        "indexes rebuilt after the load"
    );
    Ok(())
}
