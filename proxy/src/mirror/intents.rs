//! `mirror.mode = "lockstep"`: the intents the primary's transactions record instead of a
//! PREPARE on the secondary (see `switchyard_core::intents`). Sessions hand over the intents
//! whose secondary COMMIT succeeded; one task per direction deletes them in batches on the
//! primary, off every client's path. An intent whose deletion is lost (the proxy stops, the
//! primary does not answer) is cleared by recovery, which finds the secondary committed.

use super::Mirror;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most intents deleted by one statement.
const BATCH: usize = 1000;
/// Deletions waiting beyond this are left to recovery (memory stays bounded while the
/// primary does not answer).
const MAX_WAITING: usize = 100_000;
const EVERY: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct Sweeper {
    /// Primary transaction ids whose secondary committed.
    done: Mutex<Vec<String>>,
    wake: tokio::sync::Notify,
    pub cleared: AtomicU64,
    /// Secondary COMMITs that failed (or whose answer was lost): left to recovery.
    pub unfinished: AtomicU64,
    /// Secondary COMMITs sent and not answered yet.
    in_flight: AtomicU64,
}

/// One secondary COMMIT in flight, until dropped (answered or not: a lost connection drops
/// it unanswered).
pub struct InFlight(Arc<Mirror>);

impl InFlight {
    pub fn new(m: Arc<Mirror>) -> Self {
        m.intents.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(m)
    }

    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.intents.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Sweeper {
    pub fn committed(&self, primary_xid: String) {
        if let Ok(mut d) = self.done.lock() {
            if d.len() < MAX_WAITING {
                d.push(primary_xid);
                if d.len() >= BATCH {
                    self.wake.notify_one();
                }
            }
        }
    }

    /// Every secondary COMMIT sent has been answered (or its connection lost), within
    /// `within`: a write flip waits for this before the other side takes writes.
    pub async fn settled(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Intents waiting to be deleted.
    pub fn waiting(&self) -> usize {
        self.done.lock().map(|d| d.len()).unwrap_or(0)
    }

    fn take(&self) -> Vec<String> {
        self.done
            .lock()
            .map(|mut d| {
                let n = d.len().min(BATCH);
                d.drain(..n).collect()
            })
            .unwrap_or_default()
    }
}

/// Deletes the intents the secondary committed, every `EVERY` or as soon as a batch is full,
/// once those commits are durable there.
pub async fn sweep_loop(m: Arc<Mirror>) {
    let mut secondary: Option<tokio_postgres::Client> = None;
    // Cleared on the primary; their marks on the secondary go with the next flush.
    let mut marks: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = m.intents.wake.notified() => {}
            _ = tokio::time::sleep(EVERY) => {}
        }
        loop {
            let batch = m.intents.take();
            if batch.is_empty() {
                if let (false, Some(c)) = (marks.is_empty(), &secondary) {
                    if switchyard_core::intents::flush_commits(c, &marks, &[])
                        .await
                        .is_ok()
                    {
                        marks.clear();
                    }
                }
                break;
            }
            let n = batch.len() as u64;
            if secondary.as_ref().is_none_or(|c| c.is_closed()) {
                secondary = super::control::connect(
                    m.direction.secondary(),
                    &m.secondary,
                    "switchyard-sweep",
                    None,
                    Duration::from_secs(5),
                )
                .await
                .ok();
            }
            let confirmed = match &secondary {
                Some(c) => switchyard_core::intents::flush_commits(c, &marks, &batch)
                    .await
                    .ok(),
                None => None,
            };
            let Some(confirmed) = confirmed else {
                // The secondary may have lost them in a crash: recovery asks it about each.
                tracing::debug!(n, "The secondary's commits could not be made durable; recovery settles their intents.");
                secondary = None;
                continue;
            };
            let lost = batch.len() - confirmed.len();
            if lost > 0 {
                // Acknowledged, then lost in a restart of the secondary: their intents stay.
                tracing::warn!(lost, secondary = %m.direction.secondary(),
                    "The secondary restarted and lost commits it had acknowledged; recovery applies them from their intents.");
                m.intents
                    .unfinished
                    .fetch_add(lost as u64, Ordering::Relaxed);
                metrics::counter!(crate::metrics::MIRROR_INTENTS_UNFINISHED_TOTAL)
                    .increment(lost as u64);
                m.status.retry_backlog.fetch_add(1, Ordering::Relaxed);
            }
            let (batch, n) = (confirmed, n - lost as u64);
            let cleared = match m.control.client().await {
                Ok(c) => switchyard_core::intents::clear(&c, &batch)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            marks.clear();
            match cleared {
                Ok(_) => {
                    marks = batch;
                    m.intents.cleared.fetch_add(n, Ordering::Relaxed);
                    metrics::counter!(crate::metrics::MIRROR_INTENTS_CLEARED_TOTAL).increment(n);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Deleting settled intents failed; recovery clears them.");
                    break;
                }
            }
        }
    }
}
