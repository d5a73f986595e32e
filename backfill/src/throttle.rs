//! How fast the backfill may go: a rows-per-second limit shared by the process's workers
//! (a reservation clock: each batch of rows books the time it is worth), a pause flag
//! (set through the control row), and an adaptive brake that adds a delay per batch while
//! a probe query on the old database is slow and takes it away again when it is fast.
//!
//! Pause takes effect between chunks: pausing inside a chunk would hold the source
//! snapshot of its COPY open for as long as the pause lasts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Rows per throttle step while streaming a chunk.
pub const BATCH_ROWS: u64 = 512;

/// Smallest and largest brake delay per batch.
const BRAKE_MIN: Duration = Duration::from_millis(2);
const BRAKE_MAX: Duration = Duration::from_millis(1000);

/// Shared by every worker of a process.
#[derive(Debug)]
pub struct Throttle {
    /// Rows per second; 0 means no limit.
    rate: AtomicU64,
    paused: AtomicBool,
    /// Extra delay per batch, in microseconds (the brake).
    brake_us: AtomicU64,
    /// When the next batch may start under the rate limit.
    next: Mutex<Option<Instant>>,
}

impl Throttle {
    pub fn new(rate: u64) -> Self {
        Throttle {
            rate: AtomicU64::new(rate),
            paused: AtomicBool::new(false),
            brake_us: AtomicU64::new(0),
            next: Mutex::new(None),
        }
    }

    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// The brake's current delay per batch.
    pub fn brake(&self) -> Duration {
        Duration::from_micros(self.brake_us.load(Ordering::Relaxed))
    }

    /// Feeds one probe latency to the brake: over `threshold`, the delay doubles (from
    /// 2 ms, up to 1 s per batch); under half of it, the delay halves (and ends below 2 ms).
    /// Between the two it stays, so it does not flap around the threshold.
    pub fn observe_probe(&self, latency: Duration, threshold: Duration) {
        let current = self.brake();
        let next = if latency > threshold {
            (current * 2).clamp(BRAKE_MIN, BRAKE_MAX)
        } else if latency < threshold / 2 {
            let half = current / 2;
            if half < BRAKE_MIN {
                Duration::ZERO
            } else {
                half
            }
        } else {
            current
        };
        self.brake_us
            .store(next.as_micros() as u64, Ordering::Relaxed);
    }

    /// Waits while paused, polling the flag (the control poller sets it).
    pub async fn wait_unpaused(&self) {
        while self.paused() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Books `rows` against the rate limit and waits until they may go, plus the brake.
    pub async fn take(&self, rows: u64) {
        let rate = self.rate();
        if rate > 0 {
            let start = {
                let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                // A limit does not bank unused time beyond one second.
                let start = match *next {
                    Some(t) if t > now => t,
                    Some(t) if now - t < Duration::from_secs(1) => t,
                    _ => now,
                };
                *next = Some(start + Duration::from_secs_f64(rows as f64 / rate as f64));
                start
            };
            tokio::time::sleep_until(start).await;
        }
        let brake = self.brake();
        if !brake.is_zero() {
            tokio::time::sleep(brake).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brake_doubles_and_releases() {
        let t = Throttle::new(0);
        let limit = Duration::from_millis(100);
        t.observe_probe(Duration::from_millis(300), limit);
        assert_eq!(t.brake(), BRAKE_MIN);
        t.observe_probe(Duration::from_millis(300), limit);
        t.observe_probe(Duration::from_millis(300), limit);
        assert_eq!(t.brake(), BRAKE_MIN * 4);
        t.observe_probe(Duration::from_millis(70), limit);
        assert_eq!(
            t.brake(),
            BRAKE_MIN * 4,
            "between half and the limit it holds"
        );
        for _ in 0..4 {
            t.observe_probe(Duration::from_millis(1), limit);
        }
        assert_eq!(t.brake(), Duration::ZERO);
        for _ in 0..20 {
            t.observe_probe(Duration::from_secs(5), limit);
        }
        assert_eq!(t.brake(), BRAKE_MAX);
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_batches() {
        let t = Throttle::new(10_000);
        let started = Instant::now();
        for _ in 0..5 {
            t.take(500).await;
        }
        // 2500 rows at 10000/s: the fifth batch starts after 0.2 s.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
    }
}
