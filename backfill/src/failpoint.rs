//! Test failpoints (`BACKFILL_TEST_FAILPOINT`): stop the run at a chosen step, or hold it
//! there, so the tests can prove what a restart or a concurrent writer meets.
//!
//! They exist only in builds with the `failpoints` feature (what `scripts/test.sh` builds):
//! a default or release build must not let an environment variable stop or stall a copy.
//! There every check is a constant `false`, and what a failpoint does is behind
//! `#[cfg(feature = "failpoints")]` at its site, so no failpoint code is compiled at all
//! (leaving it to the optimizer kept the failpoints' log lines in the release binary).

/// `--version`, marked when the failpoints are compiled in.
pub const VERSION: &str = switchyard_core::version_with_failpoints!();

/// The failpoint set for this run, if any (some carry an argument after a `:`).
#[cfg(feature = "failpoints")]
pub fn value() -> Option<&'static str> {
    // Read once: the process never changes it, and some checks sit on hot paths.
    static VALUE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    VALUE
        .get_or_init(|| std::env::var("BACKFILL_TEST_FAILPOINT").ok())
        .as_deref()
}

/// Without the feature nothing is set; `const` so it cannot read the environment.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub const fn value() -> Option<&'static str> {
    None
}

/// True when the failpoint set is `name`.
#[cfg(feature = "failpoints")]
pub fn armed(name: &str) -> bool {
    value() == Some(name)
}

/// Without the feature nothing is armed; `const` so it cannot read the environment.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub const fn armed(_name: &str) -> bool {
    false
}

// The guarantee a release build relies on, checked by the compiler rather than a test run.
#[cfg(not(feature = "failpoints"))]
const _: () = assert!(value().is_none() && !armed("exit-mid-scan"));

/// Ends the process with status 3, as a crash at this step would, when `name` is armed.
#[cfg(feature = "failpoints")]
pub fn exit_at(name: &str) {
    if armed(name) {
        tracing::warn!("Failpoint {name}: exiting.");
        std::process::exit(3);
    }
}

/// Without the feature there is nothing to stop at.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn exit_at(_name: &str) {}
