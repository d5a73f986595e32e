//! node-postgres's pool through the proxy: the node script against its schema on both
//! databases, then every table compared.

use super::*;
use anyhow::{ensure, Result};
use switchyard_tests::clients::{node_bin, node_modules, node_script};
use switchyard_tests::mirror::on;
use tokio::process::Command;

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
