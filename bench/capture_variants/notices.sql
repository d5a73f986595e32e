-- bench/capture_cost.sh's "notices" prototype: the update and insert capture functions
-- hand the images to the session as INFO messages (sent whatever client_min_messages
-- says), numbered by a transaction-local setting that a rolled-back subtransaction rolls
-- back too; the transaction reads that number before COMMIT instead of draining a table.
-- The update and insert functions differ only in their name and the op they report.
DO $do$ DECLARE v record; BEGIN
FOR v IN SELECT * FROM (VALUES ('capture_update', 'U'), ('capture_insert', 'I')) AS t (fn, op) LOOP
EXECUTE format($sql$CREATE OR REPLACE FUNCTION _switchyard.%I() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE n int; j json;
BEGIN
  IF pg_catalog.current_setting('switchyard.apply', true) = 'on' THEN RETURN NULL; END IF;
  FOR j IN SELECT pg_catalog.json_agg(x) FROM (SELECT x, pg_catalog.sum(pg_catalog.pg_column_size(x))
             OVER (ROWS UNBOUNDED PRECEDING) / 262144 AS g
           FROM (SELECT pg_catalog.to_json(r.*) AS x FROM sy_new r) i) s GROUP BY g ORDER BY g LOOP
    n := coalesce(nullif(pg_catalog.current_setting('switchyard.captured', true), ''), '0')::int + 1;
    PERFORM pg_catalog.set_config('switchyard.captured', n::text, true);
    RAISE INFO USING MESSAGE = n::text || ' ' || TG_RELID::text || ' %s', DETAIL = j::text, ERRCODE = 'SY001';
  END LOOP;
  RETURN NULL;
END $f$ $sql$, v.fn, v.op);
END LOOP;
END $do$;
