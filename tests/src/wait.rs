//! Polling a condition until a deadline, instead of sleeping as synchronisation.
//!
//! A probe returns `Ok(Some(value))` when the condition holds, `Ok(None)` when it does not hold
//! yet, and `Err` to give up at once (for example when the process being waited for exited).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

/// Longest pause between two probes; the first pauses are shorter.
pub const MAX_INTERVAL: Duration = Duration::from_millis(100);

const FIRST_INTERVAL: Duration = Duration::from_millis(5);

fn next_interval(interval: Duration) -> Duration {
    (interval * 2).min(MAX_INTERVAL)
}

fn timed_out(what: &str, timeout: Duration) -> anyhow::Error {
    anyhow!("timed out after {timeout:?} waiting for {what}")
}

/// Calls `probe` until it yields a value, fails, or `timeout` has passed (blocking).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut interval = FIRST_INTERVAL;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(what, timeout));
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = next_interval(interval);
    }
}

/// Async twin of [`poll_until`]: `probe` is called again until it yields a value, fails, or
/// `timeout` has passed; the pauses between calls use `tokio::time::sleep`.
pub async fn poll_until_async<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = FIRST_INTERVAL;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(what, timeout));
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = next_interval(interval);
    }
}
