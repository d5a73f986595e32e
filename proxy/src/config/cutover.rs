//! The `[cutover]` section: how an instance follows the cutover flag.

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CutoverConfig {
    /// How often an instance heartbeats and re-reads the flag (a NOTIFY wakes it sooner).
    pub poll_ms: u64,
    /// An instance not heard from this long is not live; one that cannot reach the control
    /// table this long stops taking writes.
    pub lease_secs: u64,
    /// How long a flip waits for every instance to confirm before it is abandoned.
    pub flip_timeout_secs: u64,
    /// A shadow mismatch confirmed this recently (by any instance) refuses a flip that
    /// moves reads to new.
    pub mismatch_window_secs: u64,
    /// A flip that moves writes holds new transactions while those in flight finish; if
    /// they have not within this, the instance does not confirm and the flip is abandoned.
    pub write_drain_ms: u64,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            poll_ms: 250,
            lease_secs: 5,
            flip_timeout_secs: 10,
            mismatch_window_secs: 600,
            write_drain_ms: 5000,
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
