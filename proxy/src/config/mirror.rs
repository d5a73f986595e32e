//! The `[mirror]` section: dual writes to the secondary.

use serde::Deserialize;

/// How writes reach the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorMode {
    /// Passthrough: nothing is written to the new database.
    Off,
    /// Lockstep secondary transaction, PREPARE TRANSACTION on the secondary before the
    /// primary commits, COMMIT PREPARED after.
    TwoPhase,
    /// The same lockstep transaction without PREPARE: the primary's transaction records an
    /// intent (what it changed, and the secondary transaction's id); the primary commits,
    /// then the secondary. For secondaries with `max_prepared_transactions = 0`.
    Lockstep,
    /// `two-phase` when the secondary can prepare transactions; otherwise the proxy does not
    /// start and says which modes it can run.
    Auto,
}

/// What happens to DDL while mirroring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DdlPolicy {
    /// Run it on the secondary too, as text, in the lockstep transaction.
    Mirror,
    /// Run it on the primary only (counted and flagged).
    PrimaryOnly,
    /// Refuse it with an error.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    pub mode: MirrorMode,
    pub ddl: DdlPolicy,
    /// Bound on each statement on the secondary (server-side statement_timeout), in ms; the
    /// most a slow secondary can add to a client's statement.
    pub secondary_statement_timeout_ms: u64,
    /// lock_timeout on the secondary, in ms.
    pub secondary_lock_timeout_ms: u64,
    /// Refuse (SQLSTATE 0A000, naming the reason) writes the proxy cannot capture, such as
    /// large objects; when false they run on the old database and are counted and listed
    /// in `/api/status` under `statement_mode`.
    pub strict: bool,
    /// How often each instance drains the change log (writes no proxy mirrored in lockstep:
    /// sessions connected straight to the old database, procedures that commit by
    /// themselves), in ms.
    pub log_poll_ms: u64,
    /// Keys remembered per transaction for re-sync orders; beyond this a table is re-synced
    /// whole, so memory stays bounded for huge transactions.
    pub max_tracked_keys: usize,
    /// Write statements a claimed transaction runs before the proxy drains what they
    /// captured behind the next one (otherwise at its commit). Each drain is a statement on
    /// the primary (about 0.09 ms of its CPU); draining early lets the secondary apply while
    /// the client goes on. 1 drains behind every write; the default lets short transactions
    /// drain once, at their commit, and long ones stream (docs/benchmarks.md, "Drain
    /// timing").
    pub drain_every_writes: u32,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            mode: MirrorMode::Auto,
            ddl: DdlPolicy::Mirror,
            secondary_statement_timeout_ms: 2000,
            secondary_lock_timeout_ms: 1000,
            strict: false,
            log_poll_ms: 250,
            max_tracked_keys: 100_000,
            drain_every_writes: 16,
        }
    }
}

impl MirrorConfig {
    /// Every bad value, as (key below `mirror.`, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        [
            ("log_poll_ms", self.log_poll_ms),
            (
                "secondary_statement_timeout_ms",
                self.secondary_statement_timeout_ms,
            ),
            ("secondary_lock_timeout_ms", self.secondary_lock_timeout_ms),
        ]
        .into_iter()
        .filter(|(_, v)| *v == 0)
        .map(|(key, _)| (key, "must be at least 1".to_string()))
        .collect()
    }
}
