// node-postgres (pg) through the proxy: a Pool, parameterized queries (extended protocol),
// named prepared statements, transactions with COMMIT and ROLLBACK paths, multi-statement
// simple query strings.
//
// Usage: node pg_app.js URL     (pg resolved through NODE_PATH, see .ci/setup)
//
// Expects the schema the Rust test creates (app_stacks.rs, NODE_SCHEMA): products (serial
// key), stock_moves (ON DELETE CASCADE to products, AFTER trigger keeping products.on_hand
// and writing move_audit), product_tags without a primary key, "ProductNote" with quoted
// mixed-case names. Exits non-zero on any
// unexpected error or a wrong result; prints what it did.
'use strict';

const assert = require('node:assert/strict');
const { Pool } = require('pg');

function ok(label, got, expected) {
  assert.deepStrictEqual(got, expected, label);
  console.log(`  ok ${label}`);
}

// Expects `promise` to fail with SQLSTATE `code`.
async function failsWith(label, promise, code) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.code, code, `${label}: ${e.message}`);
    console.log(`  ok ${label} (${code})`);
    return;
  }
  throw new Error(`${label}: expected SQLSTATE ${code}, the statement succeeded`);
}

async function parameterized(pool) {
  // Unnamed statements: Parse/Bind/Execute/Sync per query, with typed values.
  const ids = [];
  for (let i = 1; i <= 20; i++) {
    const r = await pool.query(
      'INSERT INTO products (sku, name, price, attrs, photo, sizes) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at',
      [`sku-${i}`, `product ${i}`, (i * 1.25).toFixed(2), { color: i % 2 ? 'red' : 'blue', i }, Buffer.from([i, 0, 255]), [i, i + 1]],
    );
    ids.push(r.rows[0].id);
  }
  ok('serial ids', ids, Array.from({ length: 20 }, (_, i) => i + 1));
  const upd = await pool.query('UPDATE products SET price = price * $1 WHERE id = ANY($2::int[]) RETURNING id', [2, [1, 2, 3]]);
  ok('update rowCount', upd.rowCount, 3);
  const arr = await pool.query({ text: 'SELECT name FROM products WHERE id = $1', values: [5], rowMode: 'array' });
  ok('rowMode array', arr.rows, [['product 5']]);
  // A null, a JSON array parameter and a date.
  await pool.query('UPDATE products SET attrs = $1::jsonb, discontinued_at = $2 WHERE id = $3', [
    JSON.stringify([1, 'two', null]),
    new Date(Date.UTC(2024, 1, 29, 12, 0, 0)),
    4,
  ]);
  await pool.query('UPDATE products SET photo = $1 WHERE id = $2', [null, 6]);
}

async function prepared(pool) {
  // Named statements: each connection parses once, then only binds.
  const client = await pool.connect();
  try {
    for (let i = 0; i < 30; i++) {
      const r = await client.query({
        name: 'move-stock',
        text: 'INSERT INTO stock_moves (product_id, qty, reason) VALUES ($1, $2, $3) RETURNING id',
        values: [1 + (i % 10), i % 3 === 0 ? -2 : 5, `restock ${i}`],
      });
      assert.ok(r.rows[0].id > 0);
    }
    for (let i = 0; i < 10; i++) {
      await client.query({ name: 'rename', text: 'UPDATE products SET name = $1 WHERE id = $2', values: [`renamed ${i}`, 11 + i] });
    }
    const r = await client.query({ name: 'count-moves', text: 'SELECT count(*)::int AS n FROM stock_moves', values: [] });
    ok('named statements', r.rows[0].n, 30);
  } finally {
    client.release();
  }
  // The same names on other pooled connections, concurrently, on overlapping rows.
  await Promise.all(
    Array.from({ length: 24 }, (_, i) =>
      pool.query({
        name: 'move-stock',
        text: 'INSERT INTO stock_moves (product_id, qty, reason) VALUES ($1, $2, $3) RETURNING id',
        values: [1 + (i % 4), 1, `concurrent ${i}`],
      }),
    ),
  );
  const onHand = await pool.query('SELECT sum(on_hand)::int AS s FROM products');
  const moved = await pool.query('SELECT sum(qty)::int AS s FROM stock_moves');
  ok('trigger kept on_hand', onHand.rows[0].s, moved.rows[0].s);
}

async function transactions(pool) {
  const client = await pool.connect();
  try {
    // COMMIT path.
    await client.query('BEGIN');
    const p = await client.query('INSERT INTO products (sku, name, price) VALUES ($1, $2, $3) RETURNING id', ['sku-tx', 'in a transaction', '9.99']);
    await client.query('INSERT INTO stock_moves (product_id, qty, reason) VALUES ($1, 7, $2)', [p.rows[0].id, 'initial']);
    await client.query('INSERT INTO product_tags (product_id, tag) VALUES ($1, $2), ($1, $2), ($1, $3)', [p.rows[0].id, 'new', 'promo']);
    await client.query('COMMIT');

    // ROLLBACK path on an error (the usual try/catch/ROLLBACK of pg's documentation).
    try {
      await client.query('BEGIN');
      await client.query('UPDATE products SET price = 0 WHERE sku = $1', ['sku-1']);
      await client.query('INSERT INTO products (sku, name, price) VALUES ($1, $2, $3)', ['sku-2', 'duplicate', '1']);
      throw new Error('the duplicate sku was accepted');
    } catch (e) {
      await client.query('ROLLBACK');
      assert.equal(e.code, '23505', e.message);
      console.log('  ok rolled back after a unique violation');
    }
    // ROLLBACK chosen by the application, and a savepoint.
    await client.query('BEGIN');
    await client.query('DELETE FROM stock_moves WHERE product_id = $1', [2]);
    await client.query('ROLLBACK');
    await client.query('BEGIN');
    await client.query('UPDATE products SET price = price + 1 WHERE id = $1', [7]);
    await client.query('SAVEPOINT sp');
    await client.query('UPDATE products SET price = -1 WHERE id = $1', [8]);
    await client.query('ROLLBACK TO SAVEPOINT sp');
    await client.query('INSERT INTO product_tags (product_id, tag) VALUES ($1, $2)', [7, 'after savepoint']);
    await client.query('COMMIT');
    const r = await client.query('SELECT price::text AS p FROM products WHERE sku = $1', ['sku-1']);
    ok('price after rollback', r.rows[0].p, '2.50');
  } finally {
    client.release();
  }
}

async function multiStatement(pool) {
  const client = await pool.connect();
  try {
    // No values: pg sends the string as one simple Query.
    const res = await client.query(
      "INSERT INTO product_tags (product_id, tag) VALUES (1, 'multi'); " +
        "UPDATE products SET name = name || ' (multi)' WHERE id IN (1, 2); " +
        "INSERT INTO stock_moves (product_id, qty, reason) VALUES (3, 4, 'multi'); " +
        "SELECT count(*)::int AS n FROM product_tags WHERE tag = 'multi'",
    );
    ok('multi-statement results', res.length, 4);
    ok('multi-statement select', res[3].rows[0].n, 1);
    // A string with its own transaction, and one failing in the middle (all of it undone).
    await client.query("BEGIN; DELETE FROM product_tags WHERE tag = 'promo'; INSERT INTO product_tags VALUES (2, 'txn string'); COMMIT");
    await failsWith(
      'multi-statement string failing in the middle',
      client.query("INSERT INTO product_tags VALUES (3, 'never'); INSERT INTO products (sku, name, price) VALUES ('sku-3', 'dup', 1); INSERT INTO product_tags VALUES (3, 'never either')"),
      '23505',
    );
    const never = await client.query("SELECT count(*)::int AS n FROM product_tags WHERE tag LIKE 'never%'");
    ok('failed string left nothing', never.rows[0].n, 0);
    // DDL and data in one string, as migration tools send it.
    await client.query(
      'ALTER TABLE products ADD COLUMN weight_g int NOT NULL DEFAULT 500; ' +
        'UPDATE products SET weight_g = id * 100 WHERE id <= 5; ' +
        'CREATE INDEX products_weight ON products (weight_g)',
    );
  } finally {
    client.release();
  }
}

async function quotedNames(pool) {
  // Tables and columns as ORMs of the Node world name them (Prisma, TypeORM): mixed case,
  // quoted, a column named like a keyword.
  for (let i = 1; i <= 5; i++) {
    await pool.query('INSERT INTO "ProductNote" ("productId", "user", "Body") VALUES ($1, $2, $3)', [i, `user${i}`, `note ${i}`]);
  }
  await pool.query('UPDATE "ProductNote" SET "Body" = "Body" || $1 WHERE "productId" <= $2', [' (edited)', 2]);
  await pool.query('DELETE FROM "ProductNote" WHERE "user" = $1', ['user5']);
}

async function cleanup(pool) {
  // Deleting a product cascades to its stock moves (and the trigger audits them).
  const gone = await pool.query('DELETE FROM products WHERE id = ANY($1::int[]) RETURNING sku', [[9, 10]]);
  ok('deleted', gone.rows.map((r) => r.sku).sort(), ['sku-10', 'sku-9']);
  const left = await pool.query('SELECT count(*)::int AS n FROM stock_moves WHERE product_id IN (9, 10)');
  ok('cascade', left.rows[0].n, 0);
  await pool.query("DELETE FROM product_tags WHERE tag = 'new' AND ctid = (SELECT min(ctid) FROM product_tags WHERE tag = 'new')");
}

async function main() {
  const pool = new Pool({ connectionString: process.argv[2], max: 4, connectionTimeoutMillis: 10000 });
  pool.on('error', (e) => {
    console.error('idle client error', e);
    process.exitCode = 1;
  });
  const steps = [
    ['parameterized', parameterized],
    ['prepared', prepared],
    ['transactions', transactions],
    ['multi-statement strings', multiStatement],
    ['quoted names', quotedNames],
    ['cleanup', cleanup],
  ];
  try {
    for (const [name, step] of steps) {
      console.log(`== ${name}`);
      await step(pool);
    }
  } finally {
    await pool.end();
  }
  console.log('node-postgres: all checks passed');
}

main().catch((e) => {
  console.error('FAILED:', e);
  process.exit(1);
});
