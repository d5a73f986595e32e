//! What Switchyard installs on the primary to capture every row change, and the install
//! itself (idempotent; several proxy instances may run it at once).
//!
//! Per table, four statement-level `AFTER` triggers (insert, update, delete, truncate),
//! `ENABLE ALWAYS` so that a session running with `session_replication_role = replica`
//! (pg_restore's `--disable-triggers`, say) is captured too. An event trigger installs them
//! on every table created later and bumps the table's version in `_switchyard.tables` on
//! every DDL, in the DDL's own transaction.

use super::schema::{FUNCTIONS_SQL, SCHEMA_SQL};
use tokio_postgres::Client;

/// Bumped whenever the installed SQL changes; an instance installs when the primary has
/// another version.
pub const VERSION: &str = "capture-12";

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

/// Runs a statement that takes a table's lock under a short `lock_timeout`, again while
/// the table is busy (up to about 14 s): short waits keep the statements queued behind the
/// lock moving.
pub(super) async fn with_lock_retries<T, F, Fut>(mut run: F) -> Result<T, InstallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut tries = 0;
    loop {
        match run().await {
            Ok(v) => return Ok(v),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                    && tries < 200 =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(InstallError::Sql(e)),
        }
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
    emit_text_or_fixed(
        op,
        "image_expr",
        "coalesce(t.images, 'pg_catalog.to_json(r.*)')",
        &chunks("%s", source),
        &emit(op, &chunks("pg_catalog.to_json(r.*)", source)),
    )
}

/// Keys (`D`) from `query`, or for a table in `+text` mode (it has a json column, whose
/// `\u0000` the json parser behind `->` refuses) from `dynamic`, a format() template whose
/// `%1$s` is the table's stored key expression.
fn emit_keys(query: &str, dynamic: &str) -> String {
    emit_text_or_fixed('D', "key_expr", "t.keys", dynamic, &emit('D', query))
}

/// For a table in `+text` mode, the chunks of `dynamic` as capture rows of operation `op`,
/// through dynamic SQL: `dynamic` is a format() template filled with the table's stored
/// expression, read into plpgsql variable `var` as `column` of `_switchyard.tables t`. For
/// every other table, `fixed`.
fn emit_text_or_fixed(op: char, var: &str, column: &str, dynamic: &str, fixed: &str) -> String {
    format!(
        "IF text_images THEN
    {var} := (SELECT {column} FROM _switchyard.tables t WHERE t.relid = TG_RELID);
    IF lockstep THEN
      EXECUTE pg_catalog.format($q$INSERT INTO _switchyard.capture_lockstep (xid, seq, relid, op, rows)
        SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), $1, '{op}', c.j
        FROM ({dynamic}) c(j)$q$, {var}) USING TG_RELID;
    ELSE
      EXECUTE pg_catalog.format($q$INSERT INTO _switchyard.capture_log (xid, seq, relid, op, rows, via)
        SELECT pg_catalog.pg_current_xact_id(), pg_catalog.nextval('_switchyard.capture_seq'), $1, '{op}', c.j, $2
        FROM ({dynamic}) c(j)$q$, {var}) USING TG_RELID, pg_catalog.current_setting('switchyard.session', true);
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
    // A short lock timeout, tried again: on a busy table (a secondary taking applied
    // changes, say) the trigger's lock waits behind transactions in flight, and everything
    // after it would wait behind the lock; briefly and often is what keeps them moving.
    client
        .batch_execute("SET lock_timeout = '50ms'")
        .await
        .map_err(InstallError::Sql)?;
    for row in rows {
        let oid: u32 = row.get(0);
        let watched: bool = with_lock_retries(|| async move {
            client
                .query_one("SELECT _switchyard.watch($1, false)", &[&oid])
                .await
        })
        .await?
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
