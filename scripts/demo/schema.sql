-- The demo's "old" database: a shop's tables with what makes a move hard in practice.
-- psql variables: customers, orders, events (row counts).
\set ON_ERROR_STOP on

CREATE TABLE customers (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name          text NOT NULL,
  email         text UNIQUE,
  order_count   int NOT NULL DEFAULT 0,
  last_order_at timestamptz,
  created_at    timestamptz NOT NULL DEFAULT now()
);

-- A foreign key: new gets rows whose customer may not be copied yet.
CREATE TABLE orders (
  id          bigserial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers,
  amount      numeric(12,2) NOT NULL,
  status      text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped')),
  placed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id ON orders (customer_id);

-- A trigger: each order counts on its customer. Its row changes travel with the order's,
-- and it must not fire a second time on the side that follows.
CREATE FUNCTION count_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE customers SET order_count = order_count + 1, last_order_at = NEW.placed_at
  WHERE id = NEW.customer_id;
  RETURN NEW;
END $$;
CREATE TRIGGER orders_count AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION count_order();

-- A table without a key: an old import nobody writes any more (the backfill copies it
-- under a share lock, verify compares it as a multiset).
CREATE TABLE legacy_events (happened_at timestamptz, kind text, payload jsonb);

INSERT INTO customers (name, email)
SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, :customers) g;

-- Loaded with the trigger off and the counts set once: a row-by-row trigger would make the
-- load ten times slower.
ALTER TABLE orders DISABLE TRIGGER orders_count;
INSERT INTO orders (customer_id, amount, status, placed_at)
SELECT 1 + (g % :customers), (g % 500) + 0.99,
       (ARRAY['new', 'paid', 'shipped'])[1 + g % 3],
       now() - make_interval(mins => g)
FROM generate_series(1, :orders) g;
ALTER TABLE orders ENABLE TRIGGER orders_count;
UPDATE customers c SET order_count = o.n, last_order_at = o.last
FROM (SELECT customer_id, count(*) AS n, max(placed_at) AS last FROM orders GROUP BY 1) o
WHERE o.customer_id = c.id;

INSERT INTO legacy_events
SELECT now() - make_interval(hours => g), (ARRAY['signup', 'login', 'refund'])[1 + g % 3],
       jsonb_build_object('n', g, 'source', 'import-2019')
FROM generate_series(1, :events) g;

VACUUM ANALYZE;
