-- bench/capture_cost.sh's "lean" prototype: the same table and drain as the installed
-- capture, in functions with only the applier check (no output-settings check, no key-move
-- flag, no text-image branch, no chunking by size): what that logic costs a one-row
-- statement.
-- The update and insert functions differ only in their name and the op they record.
DO $do$ DECLARE v record; BEGIN
FOR v IN SELECT * FROM (VALUES ('capture_update', 'U'), ('capture_insert', 'I')) AS t (fn, op) LOOP
EXECUTE format($sql$CREATE OR REPLACE FUNCTION _switchyard.%I() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF pg_catalog.current_setting('switchyard.apply', true) = 'on' THEN RETURN NULL; END IF;
  INSERT INTO _switchyard.capture_lockstep (xid, seq, relid, op, rows)
  SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), TG_RELID, %L,
         (SELECT pg_catalog.json_agg(pg_catalog.to_json(r.*)) FROM sy_new r);
  RETURN NULL;
END $f$ $sql$, v.fn, v.op);
END LOOP;
END $do$;
