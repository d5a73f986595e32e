//! The write pause of a flip that moves writes from one database to the other. While it is
//! closed, a session that is between transactions holds its next request (the client sees
//! a short delay, never an error); sessions inside a transaction go on until it ends. The
//! flip is confirmed once no session is busy, so nothing runs on the old primary when the
//! new one takes over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Default)]
pub struct WriteGate {
    closed: AtomicBool,
    opened: Notify,
    /// Sessions inside a transaction, with a request in flight, or being mediated.
    busy: Arc<AtomicUsize>,
    /// Sessions holding state on their primary that another connection cannot have
    /// (temporary tables): they cannot move.
    pinned: AtomicUsize,
    /// Sessions holding at the gate now, and the most at once in this pause.
    waiting: AtomicUsize,
    peak_waiting: AtomicUsize,
    closed_at: std::sync::Mutex<Option<Instant>>,
}

impl WriteGate {
    pub fn close(&self) {
        if let Ok(mut at) = self.closed_at.lock() {
            *at = Some(Instant::now());
        }
        self.peak_waiting.store(0, Ordering::Relaxed);
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Ends the pause; how long it lasted and the most sessions it held at once.
    pub fn open(&self) -> Option<(Duration, usize)> {
        if !self.closed.swap(false, Ordering::SeqCst) {
            return None;
        }
        self.opened.notify_waiters();
        let lasted = self
            .closed_at
            .lock()
            .ok()
            .and_then(|mut at| at.take())
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let held = self.peak_waiting.load(Ordering::Relaxed);
        metrics::histogram!(crate::metrics::CUTOVER_WRITE_PAUSE_SECONDS)
            .record(lasted.as_secs_f64());
        metrics::histogram!(crate::metrics::CUTOVER_WRITE_PAUSE_HELD).record(held as f64);
        Some((lasted, held))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Holds until the gate opens, or `limit` passed (the follower opens it within its own
    /// deadline; the limit only guards against a follower that died).
    pub async fn pass(&self, limit: Duration) {
        if !self.is_closed() {
            return;
        }
        let now_waiting = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_waiting.fetch_max(now_waiting, Ordering::Relaxed);
        let until = Instant::now() + limit;
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if !self.is_closed() || Instant::now() >= until {
                break;
            }
            if tokio::time::timeout_at(until.into(), opened).await.is_err() {
                break;
            }
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// The counter a session's flow keeps up to date.
    pub fn busy_counter(&self) -> Arc<AtomicUsize> {
        self.busy.clone()
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn pin(&self) {
        self.pinned.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unpin(&self) {
        self.pinned.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn pinned(&self) -> usize {
        self.pinned.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_gate_holds_until_opened() {
        let gate = Arc::new(WriteGate::default());
        gate.close();
        let g = gate.clone();
        let held = tokio::spawn(async move {
            let t = Instant::now();
            g.pass(Duration::from_secs(30)).await;
            t.elapsed()
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!held.is_finished());
        gate.open();
        let waited = held.await.expect("task");
        assert!(waited < Duration::from_secs(30));
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test]
    async fn an_open_gate_and_the_limit_do_not_hold() {
        let gate = WriteGate::default();
        gate.pass(Duration::from_secs(30)).await;
        gate.close();
        gate.pass(Duration::from_millis(20)).await;
        assert!(gate.is_closed());
    }
}
