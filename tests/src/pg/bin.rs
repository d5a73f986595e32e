//! Locating the PostgreSQL binaries and running them as the `postgres` user when we are root.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use nix::unistd::{chown, User};

use crate::process::is_root;

/// Default location of the server binaries (Debian's PostgreSQL 15).
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `$SWITCHYARD_PG_BIN` or
/// `/usr/lib/postgresql/15/bin`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR))
}

/// The `psql` client: the one next to the server binaries, else `/usr/bin/psql`.
pub(crate) fn psql_path() -> PathBuf {
    let beside = bin_dir().join("psql");
    if beside.exists() {
        beside
    } else {
        PathBuf::from("/usr/bin/psql")
    }
}

/// A command for the server program `name` from [`bin_dir`]; wrapped in
/// `runuser -u postgres --` when the current user is root (PostgreSQL refuses to run as root).
/// Runs in `cwd`, which must be readable by `postgres`.
pub(crate) fn server_command(name: &str, cwd: &Path) -> Command {
    let program = bin_dir().join(name);
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    };
    cmd.current_dir(cwd);
    cmd
}

/// Gives `path` to the `postgres` user when we are root (a no-op otherwise).
pub(crate) fn chown_to_postgres(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let user = User::from_name("postgres")
        .context("looking up the postgres user")?
        .context("there is no `postgres` user: install postgresql-15 (see .ci/setup)")?;
    chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown postgres {}", path.display()))
}
