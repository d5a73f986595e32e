-- bench/capture_cost.sh's "notices" prototype: the update and insert capture functions
-- hand the images to the session as INFO messages (sent whatever client_min_messages
-- says), numbered by a transaction-local setting that a rolled-back subtransaction rolls
-- back too; the transaction reads that number before COMMIT instead of draining a table.
CREATE OR REPLACE FUNCTION _switchyard.capture_update() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE n int; j json;
BEGIN
  IF pg_catalog.current_setting('switchyard.apply', true) = 'on' THEN RETURN NULL; END IF;
  FOR j IN SELECT pg_catalog.json_agg(x) FROM (SELECT x, pg_catalog.sum(pg_catalog.pg_column_size(x))
             OVER (ROWS UNBOUNDED PRECEDING) / 262144 AS g
           FROM (SELECT pg_catalog.to_json(r.*) AS x FROM sy_new r) i) s GROUP BY g ORDER BY g LOOP
    n := coalesce(nullif(pg_catalog.current_setting('switchyard.captured', true), ''), '0')::int + 1;
    PERFORM pg_catalog.set_config('switchyard.captured', n::text, true);
    RAISE INFO USING MESSAGE = n::text || ' ' || TG_RELID::text || ' U', DETAIL = j::text, ERRCODE = 'SY001';
  END LOOP;
  RETURN NULL;
END $f$;
CREATE OR REPLACE FUNCTION _switchyard.capture_insert() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE n int; j json;
BEGIN
  IF pg_catalog.current_setting('switchyard.apply', true) = 'on' THEN RETURN NULL; END IF;
  FOR j IN SELECT pg_catalog.json_agg(x) FROM (SELECT x, pg_catalog.sum(pg_catalog.pg_column_size(x))
             OVER (ROWS UNBOUNDED PRECEDING) / 262144 AS g
           FROM (SELECT pg_catalog.to_json(r.*) AS x FROM sy_new r) i) s GROUP BY g ORDER BY g LOOP
    n := coalesce(nullif(pg_catalog.current_setting('switchyard.captured', true), ''), '0')::int + 1;
    PERFORM pg_catalog.set_config('switchyard.captured', n::text, true);
    RAISE INFO USING MESSAGE = n::text || ' ' || TG_RELID::text || ' I', DETAIL = j::text, ERRCODE = 'SY001';
  END LOOP;
  RETURN NULL;
END $f$;
