//! Locating the `tansu` broker binary.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The tansu version `.ci/setup` installs.
pub const TANSU_VERSION: &str = "0.6.0";

/// The tansu binary: `$SWITCHYARD_TANSU_BIN`, else
/// `${SWITCHYARD_CACHE:-/root/.cache/switchyard}/tansu-0.6.0/bin/tansu`, else `tansu` on `PATH`.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHYARD_TANSU_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "SWITCHYARD_TANSU_BIN={} does not exist; unset it or run .ci/setup",
            path.display()
        );
    }
    let cached = crate::clients::cache_dir()
        .join(format!("tansu-{TANSU_VERSION}"))
        .join("bin/tansu");
    if cached.is_file() {
        return Ok(cached);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&path)
            .map(|dir| dir.join("tansu"))
            .find(|candidate| candidate.is_file())
        {
            return Ok(found);
        }
    }
    bail!(
        "the tansu broker binary was not found (looked at $SWITCHYARD_TANSU_BIN, {} and PATH); \
         run .ci/setup to build it",
        cached.display()
    )
}
