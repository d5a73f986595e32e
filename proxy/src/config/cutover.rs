//! The `[cutover]` section: how an instance follows the cutover flag.

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// How often an instance heartbeats and re-reads the flag (a NOTIFY wakes it sooner).
    #[serde(default = "default_cutover_poll_ms")]
    pub poll_ms: u64,
    /// An instance not heard from this long is not live; one that cannot reach the control
    /// table this long stops taking writes.
    #[serde(default = "default_cutover_lease_secs")]
    pub lease_secs: u64,
    /// How long a flip waits for every instance to confirm before it is abandoned.
    #[serde(default = "default_cutover_timeout_secs")]
    pub flip_timeout_secs: u64,
    /// A shadow mismatch confirmed this recently (by any instance) refuses a flip that
    /// moves reads to new.
    #[serde(default = "default_mismatch_window_secs")]
    pub mismatch_window_secs: u64,
    /// A flip that moves writes holds new transactions while those in flight finish; if
    /// they have not within this, the instance does not confirm and the flip is abandoned.
    #[serde(default = "default_write_drain_ms")]
    pub write_drain_ms: u64,
}

fn default_write_drain_ms() -> u64 {
    5000
}

fn default_mismatch_window_secs() -> u64 {
    600
}

fn default_cutover_poll_ms() -> u64 {
    250
}

fn default_cutover_lease_secs() -> u64 {
    5
}

fn default_cutover_timeout_secs() -> u64 {
    10
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            poll_ms: default_cutover_poll_ms(),
            lease_secs: default_cutover_lease_secs(),
            flip_timeout_secs: default_cutover_timeout_secs(),
            mismatch_window_secs: default_mismatch_window_secs(),
            write_drain_ms: default_write_drain_ms(),
        }
    }
}

impl CutoverConfig {
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(10))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(1))
    }

    /// Never past the flip's own timeout, so an instance gives up before the coordinator.
    pub fn write_drain(&self) -> Duration {
        Duration::from_millis(self.write_drain_ms.max(1)).min(self.flip_timeout() / 2)
    }

    pub fn flip_timeout(&self) -> Duration {
        Duration::from_secs(self.flip_timeout_secs.max(1))
    }
}
