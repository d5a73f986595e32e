-- The demo's application, run by pgbench through the proxy: place an order, read it back
-- and its customer, mark it paid. pgbench variable: customers.
\set cid random(1, :customers)
\set cents random(100, 50000)
INSERT INTO orders (customer_id, amount) VALUES (:cid, :cents / 100.0) RETURNING id AS order_id \gset
SELECT id, customer_id, amount, status FROM orders WHERE id = :order_id;
SELECT name, order_count, last_order_at FROM customers WHERE id = :cid;
UPDATE orders SET status = 'paid' WHERE id = :order_id;
