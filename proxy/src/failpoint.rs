//! Crash points for the tests of recovery from a crash mid-commit
//! (`SWITCHYARD_FAILPOINT=after-prepare|after-primary-commit`).
//!
//! They exist only in builds with the `failpoints` feature (what `scripts/test.sh` builds):
//! a default or release build must not let an environment variable kill it mid-commit, so
//! there the check is a constant `false` and the code behind it is dropped.

/// `--version`, marked when the failpoints are compiled in.
pub const VERSION: &str = switchyard_core::version_with_failpoints!();

/// True when `SWITCHYARD_FAILPOINT` names `name`.
#[cfg(feature = "failpoints")]
pub fn armed(name: &str) -> bool {
    // Read once: commits pass here constantly and the variable cannot change underneath.
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("SWITCHYARD_FAILPOINT").ok());
    point.as_deref() == Some(name)
}

/// Without the feature nothing is armed; `const` so it cannot read the environment.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub const fn armed(_name: &str) -> bool {
    false
}

// The guarantee a release build relies on, checked by the compiler rather than a test run.
#[cfg(not(feature = "failpoints"))]
const _: () = assert!(!armed("after-prepare") && !armed("after-primary-commit"));

/// Aborts the process (no cleanup, like a crash) when `name` is armed.
#[inline(always)]
pub fn abort_at(name: &str) {
    if armed(name) {
        eprintln!("switchyard: failpoint {name} reached; aborting");
        std::process::abort();
    }
}
