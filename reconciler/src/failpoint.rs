//! The crash point of the at-least-once replay test
//! (`SWITCHYARD_FAILPOINT=replay-after-apply`).
//!
//! It exists only in builds with the `failpoints` feature (what `scripts/test.sh` builds): a
//! default or release build must not let an environment variable abort a replay between
//! applying a batch and committing its offsets, so there the check is a constant `false`.

/// `--version`, marked when the failpoints are compiled in.
pub const VERSION: &str = switchyard_core::version_with_failpoints!();

/// True when `SWITCHYARD_FAILPOINT` names `name`.
#[cfg(feature = "failpoints")]
pub fn armed(name: &str) -> bool {
    std::env::var("SWITCHYARD_FAILPOINT").as_deref() == Ok(name)
}

/// Without the feature nothing is armed; `const` so it cannot read the environment.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub const fn armed(_name: &str) -> bool {
    false
}

// The guarantee a release build relies on, checked by the compiler rather than a test run.
#[cfg(not(feature = "failpoints"))]
const _: () = assert!(!armed("replay-after-apply"));

/// Aborts the process (no cleanup, like a crash) when `name` is armed.
#[inline(always)]
pub fn abort_at(name: &str) {
    if armed(name) {
        eprintln!("switchyard-reconciler: failpoint {name} reached; aborting");
        std::process::abort();
    }
}
