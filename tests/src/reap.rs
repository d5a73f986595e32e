//! Cleaning up after test processes that died without running destructors (killed by a
//! timeout, SIGKILL, `abort`): their servers would otherwise keep running.
//!
//! Every harness directory holds an `owner.pid` file with the pid of the test process that
//! made it. Before making a new directory, the harness looks (once per process and kind) for
//! directories whose owner is dead, stops what runs there and removes them. Directories kept
//! with `SWITCHYARD_KEEP_CLUSTERS=1` lose their `owner.pid` on drop and are left alone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::process::pid_alive;

const OWNER_FILE: &str = "owner.pid";

/// Records the current process as the owner of `dir`.
pub fn write_owner(dir: &Path) -> Result<()> {
    let path = dir.join(OWNER_FILE);
    std::fs::write(&path, std::process::id().to_string())
        .with_context(|| format!("writing {}", path.display()))
}

/// Forgets the owner of `dir` so that it is never reaped (for kept directories).
pub fn forget_owner(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(OWNER_FILE));
}

/// A new directory `parent/prefix*` (`what`, for the error), once the orphans of dead owners
/// there are reaped (see [`reap_orphans`]). It outlives its handle: the owner's drop
/// removes it through [`release_dir`].
pub fn new_dir(parent: &Path, prefix: &str, stop: impl Fn(&Path), what: &str) -> Result<PathBuf> {
    reap_orphans(parent, prefix, stop);
    Ok(tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .with_context(|| format!("creating {what}"))?
        .keep())
}

/// Done with `dir`: with `SWITCHYARD_KEEP_CLUSTERS` it is kept (and never reaped) and its
/// place printed, `what` saying what it holds; else it is removed.
pub fn release_dir(dir: &Path, what: &str) -> std::io::Result<()> {
    if crate::keep_dirs() {
        forget_owner(dir);
        eprintln!("SWITCHYARD_KEEP_CLUSTERS: kept {what} in {}", dir.display());
        Ok(())
    } else {
        std::fs::remove_dir_all(dir)
    }
}

fn owner_dead(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
        return false;
    };
    match text.trim().parse::<i32>() {
        Ok(pid) => pid != std::process::id() as i32 && !pid_alive(pid),
        Err(_) => false,
    }
}

/// Once per process for each (`parent`, `prefix`): for every `parent/prefix*` directory whose
/// owner is dead, calls `stop(dir)` and removes the directory. Errors are ignored: this is
/// best effort.
pub fn reap_orphans(parent: &Path, prefix: &str, stop: impl Fn(&Path)) {
    static DONE: Mutex<Option<HashSet<(PathBuf, String)>>> = Mutex::new(None);
    {
        let mut done = match DONE.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !done
            .get_or_insert_with(HashSet::new)
            .insert((parent.to_path_buf(), prefix.to_string()))
        {
            return;
        }
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let matches = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(prefix));
        if matches && dir.is_dir() && owner_dead(&dir) {
            tracing::info!("removing orphaned harness directory {}", dir.display());
            stop(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
