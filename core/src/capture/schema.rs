//! The capture's fixed SQL: its schema and tables, and the functions behind the triggers,
//! event triggers and the proxy's calls (`drain`, `note_statement`, `capture_all`). The
//! trigger functions themselves are generated in `install.rs`.

pub(super) const SCHEMA_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS _switchyard;
CREATE TABLE IF NOT EXISTS _switchyard.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE SEQUENCE IF NOT EXISTS _switchyard.capture_seq CACHE 1000;
CREATE SEQUENCE IF NOT EXISTS _switchyard.table_version;
-- Rows live only inside the transaction that wrote them: the proxy drains them before
-- PREPARE on the secondary. Unlogged: nothing in it has to survive a crash.
CREATE UNLOGGED TABLE IF NOT EXISTS _switchyard.capture_lockstep (
    xid xid8 NOT NULL,
    seq bigint NOT NULL,
    relid oid NOT NULL,
    op "char" NOT NULL,
    rows json
);
CREATE INDEX IF NOT EXISTS capture_lockstep_xid ON _switchyard.capture_lockstep (xid, seq);
-- Changes no proxy mirrored in lockstep: drained into the secondary afterwards.
CREATE TABLE IF NOT EXISTS _switchyard.capture_log (
    id bigserial PRIMARY KEY,
    xid xid8 NOT NULL,
    seq bigint NOT NULL,
    relid oid NOT NULL,
    op "char" NOT NULL,
    rows json,
    captured_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    -- The proxy instance whose session wrote it (NULL: a session outside every proxy).
    via text
);
-- One row per captured table; the version changes with every DDL on the table.
CREATE TABLE IF NOT EXISTS _switchyard.tables (
    relid oid PRIMARY KEY,
    version bigint NOT NULL,
    key_columns text[] NOT NULL
);
-- The image expression of a table with a column whose type has its own cast to json
-- (NULL: `to_json(r.*)`).
ALTER TABLE _switchyard.tables ADD COLUMN IF NOT EXISTS images text;
-- The key expression (text of a JSON object) of a table in `+text` mode.
ALTER TABLE _switchyard.tables ADD COLUMN IF NOT EXISTS keys text;
"#;

pub(super) const FUNCTIONS_SQL: &str = r#"
CREATE OR REPLACE FUNCTION _switchyard.key_of(r json, cols text[]) RETURNS json
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS
$f$ SELECT json_object_agg(c, r -> c) FROM unnest(cols) c $f$;

CREATE OR REPLACE FUNCTION _switchyard.exact_output() RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
DECLARE saved text[] := ARRAY[current_setting('extra_float_digits'), current_setting('IntervalStyle')];
BEGIN
  PERFORM set_config('extra_float_digits', '3', true);
  PERFORM set_config('IntervalStyle', 'postgres', true);
  RETURN saved;
END $f$;

CREATE OR REPLACE FUNCTION _switchyard.restore_output(saved text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  PERFORM set_config('extra_float_digits', saved[1], true);
  PERFORM set_config('IntervalStyle', saved[2], true);
END $f$;

-- The functions the proxy calls in a client's transaction run as whatever role the client
-- set (SET ROLE, SET LOCAL ROLE), so every role may call them; they then refuse unless the
-- session was opened by a role with the capture owner's rights (the proxy's login), so no
-- other role reads or writes capture rows through them. (Inside these SECURITY DEFINER
-- functions current_user is the owner; session_user is who logged in, unless the session
-- ran SET SESSION AUTHORIZATION: then the statistics entry still names the role that
-- authenticated, which no statement can change.)
CREATE OR REPLACE FUNCTION _switchyard.proxy_session_only(what text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF NOT pg_has_role(session_user, current_user, 'USAGE')
     AND NOT coalesce((SELECT pg_has_role(a.usesysid, current_user, 'USAGE')
                       FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()), false) THEN
    RAISE EXCEPTION 'switchyard: _switchyard.% is for the proxy''s own sessions', what
      USING ERRCODE = 'insufficient_privilege';
  END IF;
END $f$;

-- Up to n of this transaction's lockstep rows, oldest first, removed as they are read.
CREATE OR REPLACE FUNCTION _switchyard.drain(n int)
RETURNS TABLE (xid xid8, seq bigint, relid oid, version bigint, op "char", rows json)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  PERFORM _switchyard.proxy_session_only('drain');
  -- A transaction without an id wrote nothing, and may be read-only (where the DELETE below
  -- would be refused).
  IF pg_current_xact_id_if_assigned() IS NULL THEN
    RETURN;
  END IF;
  RETURN QUERY
  WITH d AS (
    DELETE FROM _switchyard.capture_lockstep c
    WHERE c.ctid = ANY (ARRAY(
      SELECT c2.ctid FROM _switchyard.capture_lockstep c2
      WHERE c2.xid = pg_current_xact_id_if_assigned() ORDER BY c2.seq LIMIT n))
    RETURNING c.xid, c.seq, c.relid, c.op, c.rows)
  SELECT d.xid, d.seq, d.relid, t.version, d.op, d.rows
  FROM d LEFT JOIN _switchyard.tables t ON t.relid = coalesce(pg_partition_root(d.relid)::oid, d.relid)
  ORDER BY d.seq;
END $f$;

-- A statement the proxy mirrors as text, at its place among the transaction's rows.
-- `path` is the caller's search_path (inside this function it is the function's own).
CREATE OR REPLACE FUNCTION _switchyard.note_statement(sql text, path text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  PERFORM _switchyard.proxy_session_only('note_statement');
  INSERT INTO _switchyard.capture_lockstep (xid, seq, relid, op, rows)
  VALUES (pg_current_xact_id(), nextval('_switchyard.capture_seq'), 0, 'S',
          json_build_object('sql', sql, 'search_path', path));
END $f$;


-- Puts the capture triggers on a table (or rebuilds them when its primary key changed),
-- and gives it a new version when `bump` or when something changed. False when the table
-- is not one capture watches (temporary, a view, a system table).
CREATE OR REPLACE FUNCTION _switchyard.watch(rel oid, bump boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  c record;
  key_cols text[];
  args text;
  name text;
  changed boolean;
  image_expr text;
  key_expr text;
  has_json boolean;
  mode text;
BEGIN
  SELECT cl.relkind, cl.relpersistence, n.nspname INTO c
  FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = rel;
  IF NOT FOUND OR c.relkind NOT IN ('r', 'p') OR c.relpersistence = 't'
     OR c.nspname IN ('_switchyard', 'pg_catalog', 'information_schema')
     OR c.nspname LIKE 'pg\_toast%' OR c.nspname LIKE 'pg\_temp%' THEN
    RETURN false;
  END IF;
  SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}') INTO key_cols
  FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
  WHERE i.indrelid = rel AND i.indisprimary;
  -- Columns whose type (or its element or base type) has its own cast to json are imaged
  -- as their text, which their type reads back (hstore's json cast gives an object, which
  -- hstore cannot read).
  SELECT CASE WHEN bool_or(x.own_cast) THEN
           '(''{'' || ' || string_agg(format('%L || coalesce(pg_catalog.to_json(r.%I%s)::text, ''null'')',
                                              to_json(x.attname::text)::text || ':', x.attname,
                                              CASE WHEN x.own_cast THEN '::text' ELSE '' END),
                                       ' || '','' || ' ORDER BY x.attnum) || ' || ''}'')::json'
         END INTO image_expr
  FROM (SELECT a.attnum, a.attname,
               EXISTS (SELECT 1 FROM pg_cast k JOIN pg_type ty ON ty.oid = a.atttypid
                       WHERE k.castsource IN (ty.oid, ty.typelem, ty.typbasetype)
                         AND k.casttarget IN ('json'::regtype, 'jsonb'::regtype) AND k.castfunc <> 0) AS own_cast
        FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped) x;
  -- A json column may hold \u0000, which the json parser behind `->` refuses: such a table
  -- gets its keys from columns, not from its image.
  has_json := EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
                      WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                        AND 'json'::regtype IN (ty.oid, ty.typelem, ty.typbasetype));
  key_expr := CASE WHEN key_cols = '{}' THEN NULL
                   ELSE 'pg_catalog.json_build_object(' ||
                        (SELECT string_agg(format('%L, r.%I', k, k), ', ') FROM unnest(key_cols) k) || ')::text' END;
  mode := CASE WHEN key_cols = '{}' THEN 'keyless' WHEN c.relkind = 'p' THEN 'always' ELSE 'flag' END
          || CASE WHEN image_expr IS NOT NULL OR has_json THEN '+text' ELSE '' END;
  changed := (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = rel AND t.tgenabled = 'A'
              AND t.tgname IN ('switchyard_capture_i', 'switchyard_capture_u',
                               'switchyard_capture_d', 'switchyard_capture_t',
                               'switchyard_capture_k'))
             <> CASE WHEN c.relkind = 'r' AND key_cols <> '{}' THEN 5 ELSE 4 END
             OR NOT EXISTS (SELECT 1 FROM _switchyard.tables s WHERE s.relid = rel AND s.key_columns = key_cols
                            AND (s.images IS NULL) = (image_expr IS NULL)
                            AND (s.keys IS NULL) = (NOT has_json OR key_expr IS NULL));
  IF changed OR bump THEN
    INSERT INTO _switchyard.tables (relid, version, key_columns, images, keys)
    VALUES (rel, nextval('_switchyard.table_version'), key_cols, image_expr, CASE WHEN has_json THEN key_expr END)
    ON CONFLICT (relid) DO UPDATE SET version = EXCLUDED.version, key_columns = EXCLUDED.key_columns,
                                      images = EXCLUDED.images, keys = EXCLUDED.keys;
  END IF;
  IF changed THEN
    PERFORM set_config('switchyard.watching', 'on', true);
    FOREACH name IN ARRAY ARRAY['switchyard_capture_i', 'switchyard_capture_u',
                                'switchyard_capture_d', 'switchyard_capture_t',
                                'switchyard_capture_k'] LOOP
      IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = rel AND t.tgname = name) THEN
        EXECUTE format('DROP TRIGGER %I ON %s', name, rel::regclass);
      END IF;
    END LOOP;
    -- Arguments: the mode, then the key columns.
    args := quote_literal(mode) || coalesce((SELECT ', ' || string_agg(quote_literal(k), ', ') FROM unnest(key_cols) k), '');
    EXECUTE format('CREATE TRIGGER switchyard_capture_i AFTER INSERT ON %s REFERENCING NEW TABLE AS sy_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION _switchyard.capture_insert(%s)', rel::regclass, args);
    EXECUTE format('CREATE TRIGGER switchyard_capture_u AFTER UPDATE ON %s REFERENCING OLD TABLE AS sy_old '
                   'NEW TABLE AS sy_new FOR EACH STATEMENT EXECUTE FUNCTION _switchyard.capture_update(%s)',
                   rel::regclass, args);
    EXECUTE format('CREATE TRIGGER switchyard_capture_d AFTER DELETE ON %s REFERENCING OLD TABLE AS sy_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION _switchyard.capture_delete(%s)', rel::regclass, args);
    EXECUTE format('CREATE TRIGGER switchyard_capture_t AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION _switchyard.capture_truncate()', rel::regclass);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER switchyard_capture_i, '
                   'ENABLE ALWAYS TRIGGER switchyard_capture_u, ENABLE ALWAYS TRIGGER switchyard_capture_d, '
                   'ENABLE ALWAYS TRIGGER switchyard_capture_t', rel::regclass);
    IF c.relkind = 'r' AND key_cols <> '{}' THEN
      EXECUTE format('CREATE TRIGGER switchyard_capture_k AFTER UPDATE ON %s FOR EACH ROW '
                     'WHEN ((%s) IS DISTINCT FROM (%s)) EXECUTE FUNCTION _switchyard.key_moved()',
                     rel::regclass,
                     (SELECT string_agg('OLD.' || quote_ident(k), ', ') FROM unnest(key_cols) k),
                     (SELECT string_agg('NEW.' || quote_ident(k), ', ') FROM unnest(key_cols) k));
      EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER switchyard_capture_k', rel::regclass);
    END IF;
    PERFORM set_config('switchyard.watching', '', true);
  END IF;
  RETURN true;
END $f$;

-- A row's key changed in the current statement: its statement trigger looks for the keys
-- that went away (only then: that costs as much as the rest of the capture).
CREATE OR REPLACE FUNCTION _switchyard.key_moved() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  PERFORM set_config('switchyard.moved_' || TG_RELID::text, 'on', true);
  RETURN NULL;
END $f$;

-- Every row of a table as images: the rows a CREATE TABLE AS / SELECT INTO loaded before
-- its table had triggers, or (`replace`) rows a DDL rewrote with values the secondary would
-- compute otherwise. A table without a key is replaced whole (truncated, then inserted).
CREATE OR REPLACE FUNCTION _switchyard.capture_all(rel oid, replace boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 3 SET IntervalStyle = 'postgres' AS $f$
DECLARE
  lockstep boolean := current_setting('switchyard.capture', true) = 'lockstep';
  target text := CASE WHEN lockstep
                      THEN '_switchyard.capture_lockstep (xid, seq, relid, op, rows)'
                      ELSE '_switchyard.capture_log (xid, seq, relid, op, rows)' END;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM _switchyard.tables t WHERE t.relid = rel) THEN
    RETURN;
  END IF;
  IF replace AND (SELECT t.key_columns = '{}' FROM _switchyard.tables t WHERE t.relid = rel) THEN
    EXECUTE format('INSERT INTO %s VALUES (pg_current_xact_id(), nextval(''_switchyard.capture_seq''), %s, ''T'', NULL)',
                   target, rel);
  END IF;
  EXECUTE format('INSERT INTO %s SELECT pg_current_xact_id(), nextval(''_switchyard.capture_seq''), %s, ''I'', c.j '
                 'FROM (SELECT json_agg(x) FROM (SELECT x, sum(pg_column_size(x)) OVER (ROWS UNBOUNDED PRECEDING) / %s AS g '
                 'FROM (SELECT %s AS x FROM %s r) i) s GROUP BY g ORDER BY g) c(j)', target, rel, CHUNK_BYTES_LITERAL,
                 coalesce((SELECT t.images FROM _switchyard.tables t WHERE t.relid = rel), 'to_json(r.*)'), rel::regclass);
END $f$;

-- A statement of the proxy's own on `_switchyard`'s tables (the transaction's intent, its
-- retry-log records), run as the capture's owner whatever role the session has set. Only
-- the proxy's sessions get here, and they log in as a role that could run it anyway.
CREATE OR REPLACE FUNCTION _switchyard.run_own(statement text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  PERFORM _switchyard.proxy_session_only('run_own');
  EXECUTE statement;
END $f$;

-- `capture_all(rel, true)` for the proxy, after a DDL that rewrote the table's rows.
CREATE OR REPLACE FUNCTION _switchyard.refill(rel oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  PERFORM _switchyard.proxy_session_only('refill');
  PERFORM _switchyard.capture_all(rel, true);
END $f$;

CREATE OR REPLACE FUNCTION _switchyard.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE r record;
BEGIN
  IF current_setting('switchyard.watching', true) = 'on' THEN RETURN; END IF;
  FOR r IN SELECT DISTINCT d.objid, d.command_tag FROM pg_event_trigger_ddl_commands() d
           WHERE d.classid = 'pg_class'::regclass AND d.object_type IN ('table', 'table column') LOOP
    -- Only tables capture watches (not a temporary CREATE TABLE AS) get their rows captured.
    IF _switchyard.watch(r.objid, true) AND r.command_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
      PERFORM _switchyard.capture_all(r.objid);
    END IF;
  END LOOP;
END $f$;

CREATE OR REPLACE FUNCTION _switchyard.on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  DELETE FROM _switchyard.tables t
  WHERE t.relid IN (SELECT o.objid FROM pg_event_trigger_dropped_objects() o WHERE o.object_type = 'table');
END $f$;

DROP EVENT TRIGGER IF EXISTS switchyard_ddl;
CREATE EVENT TRIGGER switchyard_ddl ON ddl_command_end EXECUTE FUNCTION _switchyard.on_ddl();
ALTER EVENT TRIGGER switchyard_ddl ENABLE ALWAYS;
DROP EVENT TRIGGER IF EXISTS switchyard_drop;
CREATE EVENT TRIGGER switchyard_drop ON sql_drop EXECUTE FUNCTION _switchyard.on_drop();
ALTER EVENT TRIGGER switchyard_drop ENABLE ALWAYS;

-- Who may use what: every function is the capture's own (triggers and event triggers run
-- them whatever their EXECUTE rights) except the four the proxy calls in the client's
-- transaction, which check their caller themselves. The table facts are no secret.
GRANT USAGE ON SCHEMA _switchyard TO PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA _switchyard FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _switchyard.drain(int), _switchyard.note_statement(text, text),
  _switchyard.refill(oid), _switchyard.run_own(text) TO PUBLIC;
GRANT SELECT ON _switchyard.tables TO PUBLIC;
"#;
