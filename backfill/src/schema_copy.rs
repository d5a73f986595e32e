//! `--schema copy`: new's schema made from old's by PostgreSQL's own `pg_dump` and
//! `pg_restore`, so that every kind of object (types, functions, views, sequences,
//! policies, ...) comes across as PostgreSQL itself would dump it rather than as a
//! catalog reader here would have to re-implement.
//!
//! Old's schema is dumped once (custom format, `_switchyard` and the capture triggers
//! left out: they belong to the proxy on old) and restored into new in one transaction,
//! pre-data and post-data together, so new holds either nothing of it or all of it. The
//! indexes and constraints are then dropped again by the backfill's own deferral
//! ([`crate::indexes`]) while the tables are still empty, and built once the rows are
//! in, which is what pgcopydb's clone does, without a second mechanism for it.
//!
//! New is compared first: its pre-data as pg_dump prints it must be either empty (a fresh
//! database) or exactly old's (a run resumed after the copy). Pre-data holds no index or
//! key, so a resumed run whose indexes are deferred still compares equal. Anything else
//! is refused before a thing is written.
//!
//! The tools connect with a libpq conninfo string that has no password; the password goes
//! in `PGPASSWORD`, so it is neither in the process list nor in their messages.

use crate::session_lock::release_after;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use switchyard_core::connect::{shown, Db};
use switchyard_core::dsn::Dsn;
use tokio_postgres::Client;

/// Session advisory lock on new held while one process compares and restores
/// ("switchyard.schema"): a second process started at once waits, then finds the schema.
const SCHEMA_LOCK: i64 = 0x5357_5343_4845_4d41;

/// What [`prepare`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// New was empty; old's schema was restored into it.
    Copied,
    /// New held old's schema already (a resumed run): nothing was done.
    AlreadyThere,
}

/// The PostgreSQL client programs used.
#[derive(Debug, Clone)]
pub struct Tools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
}

impl Tools {
    /// `pg_dump` and `pg_restore` in `dir`, else on `path` (the PATH's value).
    pub fn find(dir: Option<&Path>, path: Option<&std::ffi::OsStr>) -> Result<Tools> {
        let one = |name: &str| -> Result<PathBuf> {
            match dir {
                Some(dir) => {
                    let p = dir.join(name);
                    if p.is_file() {
                        Ok(p)
                    } else {
                        bail!(
                            "--schema copy needs {name}, which is not in {} (--pg-bin, \
                             backfill.pg_bin); name the directory of PostgreSQL's client \
                             programs, as new as old's server or newer",
                            dir.display()
                        )
                    }
                }
                None => path
                    .into_iter()
                    .flat_map(std::env::split_paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
                    .with_context(|| {
                        format!(
                            "--schema copy needs {name}, which is not on the PATH; install \
                             PostgreSQL's client programs (as new as old's server or newer) \
                             or name their directory with --pg-bin (backfill.pg_bin)"
                        )
                    }),
            }
        };
        Ok(Tools {
            pg_dump: one("pg_dump")?,
            pg_restore: one("pg_restore")?,
        })
    }
}

/// A libpq connection target without its password.
struct Target {
    conninfo: String,
    password: Option<String>,
    shown: String,
    db: Db,
}

impl Target {
    fn new(db: Db, url: &str) -> Result<Target> {
        let dsn = Dsn::parse(url).with_context(|| format!("the {db} database's URL"))?;
        let mut conninfo = format!(
            "host={} port={} dbname={}",
            conninfo_value(&dsn.host),
            dsn.port,
            conninfo_value(&dsn.dbname)
        );
        if !dsn.user.is_empty() {
            conninfo.push_str(&format!(" user={}", conninfo_value(&dsn.user)));
        }
        for (k, v) in &dsn.params {
            conninfo.push_str(&format!(" {k}={}", conninfo_value(v)));
        }
        Ok(Target {
            conninfo,
            password: dsn.password.clone(),
            shown: shown(url),
            db,
        })
    }

    /// Runs `program args...` against this database; its stdout, or an error with its
    /// stderr (the password, which it never had, scrubbed all the same).
    async fn run(&self, program: &Path, args: &[&str], what: &str) -> Result<Vec<u8>> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .arg(format!("--dbname={}", self.conninfo))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(pw) = &self.password {
            cmd.env("PGPASSWORD", pw);
        }
        run(
            cmd,
            program,
            what,
            &format!("{} database at {}", self.db, self.shown),
            self.password.as_deref(),
        )
        .await
    }
}

async fn run(
    mut cmd: tokio::process::Command,
    program: &Path,
    what: &str,
    on: &str,
    password: Option<&str>,
) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .await
        .with_context(|| format!("starting {} to {what}", program.display()))?;
    if !out.status.success() {
        let mut err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(pw) = password.filter(|p| !p.is_empty()) {
            err = err.replace(pw, "***");
        }
        bail!(
            "{} failed to {what} on the {on} ({}): {err}",
            program.display(),
            out.status
        );
    }
    Ok(out.stdout)
}

/// A conninfo value in single quotes, with `\` and `'` escaped as libpq wants.
fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Copies old's schema into new unless new holds it already; refuses a new database
/// that holds anything else. `control` is a session on new (for the lock).
pub async fn prepare(
    old_url: &str,
    new_url: &str,
    pg_bin: Option<&Path>,
    control: &Client,
) -> Result<Outcome> {
    let tools = Tools::find(pg_bin, std::env::var_os("PATH").as_deref())?;
    let old = Target::new(Db::Old, old_url)?;
    let new = Target::new(Db::New, new_url)?;
    control
        .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
        .await
        .context("taking the schema lock on new")?;
    let result = compare_and_restore(&tools, &old, &new).await;
    release_after(control, SCHEMA_LOCK, "schema lock on new", result).await
}

/// Only reads: what `prepare` would do (`--dry-run`).
pub async fn check(old_url: &str, new_url: &str, pg_bin: Option<&Path>) -> Result<Outcome> {
    let tools = Tools::find(pg_bin, std::env::var_os("PATH").as_deref())?;
    let old = Target::new(Db::Old, old_url)?;
    let new = Target::new(Db::New, new_url)?;
    let dir = work_dir()?;
    let (_, old_pre) = dump(&tools, &old, dir.path()).await?;
    let (_, new_pre) = dump(&tools, &new, dir.path()).await?;
    decide(&old_pre, &new_pre)
}

async fn compare_and_restore(tools: &Tools, old: &Target, new: &Target) -> Result<Outcome> {
    let dir = work_dir()?;
    let (old_files, old_pre) = dump(tools, old, dir.path()).await?;
    let (_, new_pre) = dump(tools, new, dir.path()).await?;
    let outcome = decide(&old_pre, &new_pre)?;
    if outcome == Outcome::Copied {
        let dump = path_arg(&old_files.dump)?;
        let list = format!("--use-list={}", path_arg(&old_files.list)?);
        new.run(
            &tools.pg_restore,
            &[
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
                &list,
                dump,
            ],
            "restore old's schema",
        )
        .await?;
    }
    Ok(outcome)
}

fn work_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("switchyard-schema-")
        .tempdir()
        .context("creating a directory for the schema dump")
}

fn path_arg(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("the temporary path {} is not UTF-8", p.display()))
}

/// A schema dump of one side and the list of its entries to restore.
struct Dumped {
    dump: PathBuf,
    list: PathBuf,
}

/// Dumps `target`'s schema into `dir` and returns the files and its pre-data as SQL,
/// reduced by [`statements`].
async fn dump(tools: &Tools, target: &Target, dir: &Path) -> Result<(Dumped, Vec<String>)> {
    let side = target.db.to_string();
    let files = Dumped {
        dump: dir.join(format!("{side}.dump")),
        list: dir.join(format!("{side}.list")),
    };
    let file = format!("--file={}", path_arg(&files.dump)?);
    target
        .run(
            &tools.pg_dump,
            &[
                "--format=custom",
                "--schema-only",
                "--exclude-schema=_switchyard",
                &file,
            ],
            "dump the schema",
        )
        .await?;
    let dump = path_arg(&files.dump)?;
    let toc = local(&tools.pg_restore, &["--list", dump], "list the schema dump").await?;
    let toc = String::from_utf8_lossy(&toc);
    std::fs::write(&files.list, restorable(&toc))
        .with_context(|| format!("writing {}", files.list.display()))?;
    let list = format!("--use-list={}", path_arg(&files.list)?);
    let sql = local(
        &tools.pg_restore,
        &[
            "--section=pre-data",
            "--no-owner",
            "--no-privileges",
            &list,
            "--file=-",
            dump,
        ],
        "print the schema dump",
    )
    .await?;
    Ok((files, statements(&String::from_utf8_lossy(&sql))))
}

/// pg_restore on a local file (no database).
async fn local(program: &Path, args: &[&str], what: &str) -> Result<Vec<u8>> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    run(cmd, program, what, "dump file", None).await
}

/// The table of contents without the capture triggers the proxy puts on old's tables
/// (their functions live in `_switchyard`, which is not copied) and its event triggers.
fn restorable(toc: &str) -> String {
    toc.lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let trigger = fields.windows(2).position(|w| w == ["EVENT", "TRIGGER"]);
            match (trigger, fields.iter().position(|f| *f == "TRIGGER")) {
                // `ID; CLASS OID EVENT TRIGGER - NAME OWNER`
                (Some(i), _) => !fields
                    .get(i + 3)
                    .is_some_and(|n| n.starts_with("switchyard_")),
                // `ID; CLASS OID TRIGGER SCHEMA TABLE NAME OWNER`
                (None, Some(i)) => !fields
                    .get(i + 3)
                    .is_some_and(|n| n.starts_with("switchyard_")),
                (None, None) => true,
            }
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The SQL statements that make objects, one string each: comments, blank lines, the
/// session settings every dump starts with and the `\\restrict` guard (a random key per
/// dump) of newer pg_dump releases left out: they carry versions and nothing of the
/// schema.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines().map(str::trim_end) {
        let noise = line.is_empty()
            || line.starts_with("--")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config(")
            || line.starts_with("\\restrict ")
            || line.starts_with("\\unrestrict ");
        if noise && current.is_empty() {
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
        // Function bodies hold semicolons too, but pg_dump ends every statement with
        // one at the end of a line, which is all the comparison needs.
        if line.ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The first lines of up to five of `these` that `others` lacks.
fn first_lines_missing<'a>(these: &'a [String], others: &[String]) -> Vec<&'a str> {
    these
        .iter()
        .filter(|l| !others.contains(l))
        .map(|s| first_line(s))
        .take(5)
        .collect()
}

/// Empty new: copy. New with old's schema: nothing to do. Else the refusal, naming a few
/// lines that differ.
fn decide(old: &[String], new: &[String]) -> Result<Outcome> {
    if new.is_empty() {
        return Ok(Outcome::Copied);
    }
    if old == new {
        return Ok(Outcome::AlreadyThere);
    }
    let only_new = first_lines_missing(new, old);
    let only_old = first_lines_missing(old, new);
    bail!(
        "--schema copy refuses the new database: it already holds a schema that is not old's \
         (nothing was changed). Use an empty database, or the default --schema existing if \
         new's schema was made on purpose.\n  only on new: {}\n  only on old: {}",
        if only_new.is_empty() {
            "(the same lines in another order)".to_string()
        } else {
            only_new.join(" | ")
        },
        if only_old.is_empty() {
            "-".to_string()
        } else {
            only_old.join(" | ")
        },
    )
}

fn first_line(statement: &str) -> &str {
    statement.lines().next().unwrap_or(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_triggers_are_left_out_of_the_restore() {
        let toc = "; Archive created at 2026-12-07\n\
            215; 1259 16385 TABLE public orders postgres\n\
            3254; 2620 16410 TRIGGER public orders switchyard_capture_i postgres\n\
            3255; 2620 16411 TRIGGER public orders audit_orders postgres\n\
            3260; 3466 16420 EVENT TRIGGER - switchyard_ddl postgres\n\
            3261; 3466 16421 EVENT TRIGGER - app_ddl postgres\n";
        let kept = restorable(toc);
        assert!(kept.contains("TABLE public orders"));
        assert!(
            kept.contains("audit_orders"),
            "the application's trigger stays"
        );
        assert!(kept.contains("app_ddl"));
        assert!(!kept.contains("switchyard_capture_i"), "{kept}");
        assert!(!kept.contains("switchyard_ddl"), "{kept}");
    }

    #[test]
    fn an_empty_new_is_copied_an_equal_one_kept_any_other_refused() {
        let dump =
            "\\restrict abc\n--\n-- PostgreSQL database dump\n--\nSET statement_timeout = 0;\n\
            SELECT pg_catalog.set_config('search_path', '', false);\n\n\
            CREATE TABLE public.t (\n    id integer NOT NULL\n);\n";
        let old = statements(dump);
        assert_eq!(
            old,
            ["CREATE TABLE public.t (\n    id integer NOT NULL\n);"]
        );
        let empty = statements("\\restrict xyz\n--\nSET x = 1;\n\\unrestrict xyz\n");
        assert_eq!(decide(&old, &empty).expect("copy"), Outcome::Copied);
        assert_eq!(decide(&old, &old).expect("same"), Outcome::AlreadyThere);
        let other = statements("CREATE TABLE public.other (\n    x text\n);\n");
        let err = decide(&old, &other).expect_err("refused").to_string();
        assert!(
            err.contains("only on new: CREATE TABLE public.other ("),
            "{err}"
        );
        assert!(
            err.contains("only on old: CREATE TABLE public.t ("),
            "{err}"
        );
        assert!(err.contains("nothing was changed"), "{err}");
    }

    #[test]
    fn the_password_stays_out_of_the_conninfo() {
        let t = Target::new(
            Db::New,
            "postgres://app:s3cr%27t@db.example:6432/shop?sslmode=require",
        )
        .expect("valid");
        assert!(!t.conninfo.contains("s3cr"), "{}", t.conninfo);
        assert_eq!(t.password.as_deref(), Some("s3cr't"));
        assert_eq!(
            t.conninfo,
            "host='db.example' port=6432 dbname='shop' user='app' sslmode='require'"
        );
        assert_eq!(conninfo_value("a'b\\c"), "'a\\'b\\\\c'");
    }

    #[test]
    fn missing_tools_are_named() {
        let empty = tempfile::tempdir().expect("temp dir");
        let err = Tools::find(Some(empty.path()), None).expect_err("missing");
        assert!(err.to_string().contains("pg_dump"), "{err}");
        let err = Tools::find(None, Some(empty.path().as_os_str())).expect_err("missing");
        assert!(
            err.to_string().contains("pg_dump") && err.to_string().contains("PATH"),
            "{err}"
        );
    }
}
