//! The cached `initdb` template: created once per machine, copied by every cluster.
//!
//! The template lives in `temp_dir()/switchyard-pg-template-MAJOR` (with `-uidN` appended when
//! not root). Creation is serialised across processes with `flock` on a sibling `.lock` file,
//! and atomic: `initdb` writes to a temporary name that is renamed into place.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::bin::{bin_dir, chown_to_postgres, server_command};
use crate::process::{is_root, run_checked};

/// `initdb` flags for the template.
pub const INITDB_ARGS: &[&str] = &[
    "-U",
    "postgres",
    "-A",
    "trust",
    "--no-sync",
    "-E",
    "UTF8",
    "--locale=C.UTF-8",
];

/// The major version of the binaries in [`bin_dir`], from `pg_ctl --version`.
pub fn major_version() -> Result<String> {
    let pg_ctl = bin_dir().join("pg_ctl");
    let out = run_checked(
        std::process::Command::new(&pg_ctl).arg("--version"),
        "pg_ctl --version",
    )
    .with_context(|| {
        format!(
            "PostgreSQL binaries not usable at {} (set SWITCHYARD_PG_BIN or run .ci/setup)",
            pg_ctl.display()
        )
    })?;
    // "pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    let version = out
        .split("(PostgreSQL)")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("unexpected pg_ctl --version output: {out:?}"))?;
    Ok(version.split('.').next().unwrap_or(version).to_string())
}

fn is_complete(dir: &Path, major: &str) -> bool {
    let version = std::fs::read_to_string(dir.join("PG_VERSION")).unwrap_or_default();
    version.trim() == major && dir.join("global/pg_control").is_file() && dir.join("base").is_dir()
}

/// The template data directory, created (under a file lock) if it does not exist yet.
pub fn template_dir() -> Result<PathBuf> {
    static CACHED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = match CACHED.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(dir) = cached.as_ref() {
        return Ok(dir.clone());
    }
    let dir = ensure_template()?;
    *cached = Some(dir.clone());
    Ok(dir)
}

fn ensure_template() -> Result<PathBuf> {
    let major = major_version()?;
    let mut name = format!("switchyard-pg-template-{major}");
    if !is_root() {
        name.push_str(&format!("-uid{}", nix::unistd::geteuid()));
    }
    let tmp = std::env::temp_dir();
    let dir = tmp.join(&name);
    let lock_path = tmp.join(format!("{name}.lock"));
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("flock {}", lock_path.display()))?;

    if is_complete(&dir, &major) {
        return Ok(dir);
    }
    if dir.exists() {
        // Incomplete (for example partly cleaned by a /tmp reaper): rebuild it.
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing stale template {}", dir.display()))?;
    }
    let staging = tmp.join(format!("{name}.tmp-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    chown_to_postgres(&staging)?;
    let result = run_checked(
        server_command("initdb", &tmp)
            .arg("-D")
            .arg(&staging)
            .args(INITDB_ARGS),
        "initdb (template)",
    );
    if let Err(err) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(err);
    }
    if !is_complete(&staging, &major) {
        let _ = std::fs::remove_dir_all(&staging);
        bail!(
            "initdb into {} left no usable data directory",
            staging.display()
        );
    }
    std::fs::rename(&staging, &dir)
        .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))?;
    Ok(dir)
}
