//! What Switchyard installs on the primary to capture every row change, and the install
//! itself (idempotent; several proxy instances may run it at once).
//!
//! Per table, four statement-level `AFTER` triggers (insert, update, delete, truncate),
//! `ENABLE ALWAYS` so that a session running with `session_replication_role = replica`
//! (pg_restore's `--disable-triggers`, say) is captured too. An event trigger installs them
//! on every table created later and bumps the table's version in `_switchyard.tables` on
//! every DDL, in the DDL's own transaction.

use tokio_postgres::Client;

/// Bumped whenever the installed SQL changes; an instance installs when the primary has
/// another version.
pub const VERSION: &str = "capture-10";

/// Images per capture row are cut at about this many bytes (a single larger row travels
/// alone), so neither the primary nor the proxy ever holds one huge JSON value.
const CHUNK_BYTES: u32 = 262_144;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the role {role} may not install change capture on the old database ({detail}): \
         it creates an event trigger, which needs a superuser (on managed services, their \
         admin role such as rds_superuser or azure_pg_admin)"
    )]
    Privilege { role: String, detail: String },
    #[error("installing change capture on the old database: {}", db_message(.0))]
    Sql(#[source] tokio_postgres::Error),
}

/// The tables capture watches (alias `c`).
const USER_TABLES: &str = "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('_switchyard', 'pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// The server's own message (with its detail) when there is one.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.where_() {
            Some(w) => format!("{} ({w})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// What `install` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InstallReport {
    /// The functions and event triggers were (re)created (another version was there).
    pub upgraded: bool,
    /// User tables that now carry the capture triggers.
    pub tables: usize,
}

/// Chunks of JSON built from `expr` (a json or jsonb value per row) over `from`, each about
/// `CHUNK_BYTES`, in order. Row variables are always written `alias.*`: a bare alias would
/// mean a column when the table has one by that name.
fn chunks(expr: &str, from: &str) -> String {
    format!(
        "SELECT pg_catalog.json_agg(x) FROM (SELECT x, pg_catalog.sum(pg_catalog.pg_column_size(x)) \
         OVER (ROWS UNBOUNDED PRECEDING) / {CHUNK_BYTES} AS g FROM (SELECT {expr} AS x FROM {from}) i) s \
         GROUP BY g ORDER BY g"
    )
}

/// The key of row `r` (an alias of a transition table) as a JSON object's text, from the
/// key column names the trigger was created with (its arguments after the first, the mode).
/// Built from `json`, not `jsonb`: a json column may hold `\u0000`, which jsonb refuses.
fn key_of(r: &str) -> String {
    format!(
        "(CASE TG_NARGS WHEN 2 THEN pg_catalog.json_build_object(TG_ARGV[1], pg_catalog.to_json({r}.*) -> TG_ARGV[1]) \
         ELSE _switchyard.key_of(pg_catalog.to_json({r}.*), TG_ARGV[1:TG_NARGS - 1]) END)::text"
    )
}

/// Inserts the chunks of `query` as capture rows of operation `op`, into the lockstep
/// table or the log as the session's setting says.
fn emit(op: char, query: &str) -> String {
    format!(
        "IF lockstep THEN
      INSERT INTO _switchyard.capture_lockstep (xid, seq, relid, op, rows)
      SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), TG_RELID, '{op}', c.j
      FROM ({query}) c(j);
    ELSE
      INSERT INTO _switchyard.capture_log (xid, seq, relid, op, rows, via)
      SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), TG_RELID, '{op}', c.j,
             pg_catalog.current_setting('switchyard.session', true)
      FROM ({query}) c(j);
    END IF;"
    )
}

/// Row images of transition table `source` (`sy_new r` or `sy_old r`) as capture rows of
/// operation `op`. A table with a column whose type has its own cast to json (hstore, say)
/// gets its images from the expression `watch` stored for it (that column as its text, which
/// reads back), through dynamic SQL; every other table, `to_json(r.*)`.
fn emit_images(op: char, source: &str) -> String {
    let fixed = emit(op, &chunks("pg_catalog.to_json(r.*)", source));
    let dynamic = chunks("%s", source);
    format!(
        "IF text_images THEN
    image_expr := (SELECT coalesce(t.images, 'pg_catalog.to_json(r.*)') FROM _switchyard.tables t WHERE t.relid = TG_RELID);
    IF lockstep THEN
      EXECUTE pg_catalog.format($q$INSERT INTO _switchyard.capture_lockstep (xid, seq, relid, op, rows)
        SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), $1, '{op}', c.j
        FROM ({dynamic}) c(j)$q$, image_expr) USING TG_RELID;
    ELSE
      EXECUTE pg_catalog.format($q$INSERT INTO _switchyard.capture_log (xid, seq, relid, op, rows, via)
        SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), $1, '{op}', c.j, $2
        FROM ({dynamic}) c(j)$q$, image_expr) USING TG_RELID, pg_catalog.current_setting('switchyard.session', true);
    END IF;
  ELSE
    {fixed}
  END IF;"
    )
}

/// Keys (`D`) from `query`, or for a table in `+text` mode (it has a json column, whose
/// `\u0000` the json parser behind `->` refuses) from `dynamic`, a format() template whose
/// `%1$s` is the table's stored key expression.
fn emit_keys(query: &str, dynamic: &str) -> String {
    let fixed = emit('D', query);
    format!(
        "IF text_images THEN
    key_expr := (SELECT t.keys FROM _switchyard.tables t WHERE t.relid = TG_RELID);
    IF lockstep THEN
      EXECUTE pg_catalog.format($q$INSERT INTO _switchyard.capture_lockstep (xid, seq, relid, op, rows)
        SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), $1, 'D', c.j
        FROM ({dynamic}) c(j)$q$, key_expr) USING TG_RELID;
    ELSE
      EXECUTE pg_catalog.format($q$INSERT INTO _switchyard.capture_log (xid, seq, relid, op, rows, via)
        SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), $1, 'D', c.j, $2
        FROM ({dynamic}) c(j)$q$, key_expr) USING TG_RELID, pg_catalog.current_setting('switchyard.session', true);
    END IF;
  ELSE
    {fixed}
  END IF;"
    )
}

/// A capture trigger function: `body` runs with `lockstep` set and output settings exact.
fn capture_function(name: &str, body: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION _switchyard.{name}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
  lockstep boolean;
  saved text[];
  text_images boolean := TG_NARGS > 0 AND TG_ARGV[0] LIKE '%+text';
  image_expr text;
  key_expr text;
BEGIN
  IF pg_catalog.current_setting('switchyard.apply', true) = 'on' THEN RETURN NULL; END IF;
  lockstep := pg_catalog.current_setting('switchyard.capture', true) = 'lockstep';
  -- Images must read back exactly on the secondary; only these settings can make the
  -- JSON text lossy, and changing them costs, so only when they are set so.
  IF pg_catalog.current_setting('extra_float_digits')::int < 1
     OR pg_catalog.current_setting('IntervalStyle') = 'sql_standard' THEN
    saved := _switchyard.exact_output();
  END IF;
  {body}
  IF saved IS NOT NULL THEN PERFORM _switchyard.restore_output(saved); END IF;
  RETURN NULL;
END $f$;
"
    )
}

/// The whole install script: schema, tables, functions, event triggers.
pub fn install_sql() -> String {
    let moved_keys = chunks(
        "d.k::json",
        &format!(
            "(SELECT {} AS k FROM sy_old o EXCEPT ALL SELECT {} FROM sy_new n) d",
            key_of("o"),
            key_of("n")
        ),
    );
    let deleted_keys = chunks(&format!("{}::json", key_of("o")), "sy_old o");
    let insert = capture_function("capture_insert", &emit_images('I', "sy_new r"));
    // Arguments: the mode (`keyless`, `flag` or `always`, with `+text` when the images come
    // from the table's stored expression), then the key columns.
    // Keys that went away are looked for only when a row's key changed: the table's
    // `switchyard_capture_k` row trigger (WHEN its key is distinct) says so. A partitioned
    // table always looks (a row moved between partitions fires no UPDATE row trigger).
    let update = capture_function(
        "capture_update",
        &format!(
            "IF TG_NARGS = 1 THEN
    {}
  ELSIF TG_ARGV[0] LIKE 'always%'
        OR pg_catalog.current_setting('switchyard.moved_' || TG_RELID::text, true) = 'on' THEN
    {}
    IF TG_ARGV[0] NOT LIKE 'always%' THEN
      PERFORM pg_catalog.set_config('switchyard.moved_' || TG_RELID::text, '', true);
    END IF;
  END IF;
  {}",
            emit_images('d', "sy_old r"),
            emit_keys(
                &moved_keys,
                &chunks(
                    "d.k::json",
                    "(SELECT %1$s AS k FROM sy_old r EXCEPT ALL SELECT %1$s FROM sy_new r) d"
                )
            ),
            emit_images('U', "sy_new r")
        ),
    );
    let delete = capture_function(
        "capture_delete",
        &format!(
            "IF TG_NARGS = 1 THEN
    {}
  ELSE
    {}
  END IF;",
            emit_images('d', "sy_old r"),
            emit_keys(&deleted_keys, &chunks("(%1$s)::json", "sy_old r"))
        ),
    );
    let truncate = capture_function("capture_truncate", &emit('T', "SELECT NULL::json"));
    let functions = FUNCTIONS_SQL.replace("CHUNK_BYTES_LITERAL", &CHUNK_BYTES.to_string());
    format!("{SCHEMA_SQL}\n{insert}\n{update}\n{delete}\n{truncate}\n{functions}")
}

const SCHEMA_SQL: &str = r#"
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

const FUNCTIONS_SQL: &str = r#"
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

-- Up to n of this transaction's lockstep rows, oldest first, removed as they are read.
CREATE OR REPLACE FUNCTION _switchyard.drain(n int)
RETURNS TABLE (xid xid8, seq bigint, relid oid, version bigint, op "char", rows json)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
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
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
  INSERT INTO _switchyard.capture_lockstep (xid, seq, relid, op, rows)
  VALUES (pg_current_xact_id(), nextval('_switchyard.capture_seq'), 0, 'S',
          json_build_object('sql', sql, 'search_path', path));
$f$;


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
"#;

/// Installs (or upgrades) capture on the database `client` is connected to, then puts the
/// triggers on every user table that lacks them.
pub async fn install(client: &Client) -> Result<InstallReport, InstallError> {
    let mut report = InstallReport::default();
    client
        .batch_execute("SET lock_timeout = '10s'; SET client_min_messages = warning")
        .await
        .map_err(InstallError::Sql)?;
    let installed = client
        .query_opt(
            "SELECT value FROM _switchyard.meta WHERE key = 'capture' AND to_regclass('_switchyard.meta') IS NOT NULL",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get::<_, String>(0));
    if installed.as_deref() != Some(VERSION) {
        let sql = install_sql();
        // An upgrade rebuilds every table's triggers in the same transaction as the
        // functions: triggers and functions of two versions never meet.
        let rebuild = if installed.is_some() {
            format!("DELETE FROM _switchyard.tables; SELECT _switchyard.watch(c.oid, false) FROM {USER_TABLES};")
        } else {
            String::new()
        };
        let script = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('switchyard.capture.install')); {sql}
             {rebuild}
             INSERT INTO _switchyard.meta VALUES ('capture', '{VERSION}')
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value; COMMIT;"
        );
        if let Err(e) = client.batch_execute(&script).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(privilege_or_sql(client, e).await);
        }
        report.upgraded = true;
    }
    // One short transaction per table: a busy table waits at most the lock timeout and
    // holds no other table's lock meanwhile.
    let rows = client
        .query(
            &format!("SELECT c.oid FROM {USER_TABLES} ORDER BY c.oid"),
            &[],
        )
        .await
        .map_err(InstallError::Sql)?;
    for row in rows {
        let oid: u32 = row.get(0);
        let watched: bool = client
            .query_one("SELECT _switchyard.watch($1, false)", &[&oid])
            .await
            .map_err(InstallError::Sql)?
            .get(0);
        report.tables += usize::from(watched);
    }
    client
        .batch_execute("RESET lock_timeout; RESET client_min_messages")
        .await
        .map_err(InstallError::Sql)?;
    Ok(report)
}

async fn privilege_or_sql(client: &Client, e: tokio_postgres::Error) -> InstallError {
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        let role = client
            .query_one("SELECT current_user::text", &[])
            .await
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|_| "(unknown)".into());
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        return InstallError::Privilege { role, detail };
    }
    InstallError::Sql(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capture_function_routes_both_ways() {
        let sql = install_sql();
        for f in [
            "capture_insert",
            "capture_update",
            "capture_delete",
            "capture_truncate",
        ] {
            let start = sql
                .find(&format!("FUNCTION _switchyard.{f}()"))
                .expect("function present");
            let body = &sql[start..];
            let body = &body[..body.find("END $f$").expect("function ends")];
            assert!(
                body.contains("capture_lockstep") && body.contains("capture_log"),
                "{f}"
            );
            assert!(body.contains("switchyard.apply"), "{f} skips appliers");
        }
        assert!(!sql.contains("CHUNK_BYTES"), "placeholders are filled");
    }
}
