//! A DBA's psql session through the proxy: maintenance statements, DDL, bulk edits and
//! \copy on the application's tables, then every table compared.

use super::*;
use anyhow::{ensure, Result};
use std::time::Duration;
use switchyard_tests::clients::psql_bin;
use switchyard_tests::mirror::{on, rows};
use switchyard_tests::wait::poll_until_async;
use tokio::process::Command;

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
