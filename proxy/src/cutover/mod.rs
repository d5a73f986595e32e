//! This instance's view of the cutover flag: the phase it runs (set by `follower` from the
//! control table), what sessions consult to route a read, and the admin endpoints that move
//! the flag (`api`).

pub mod api;
pub mod cli;
pub mod follower;
pub mod gate;
mod prepare;
pub mod types;
pub mod warm;

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};
use switchyard_core::cutover::Phase;

pub struct Live {
    phase: AtomicU8,
    epoch: AtomicI64,
    percent: AtomicU8,
    /// The proposal this instance confirmed, 0 if none.
    ready_epoch: AtomicI64,
    /// Commits wait for new's COMMIT PREPARED before the client hears of them: a read
    /// routed to new right after must see the write.
    ryw: AtomicBool,
    /// Milliseconds since `started` of the last heartbeat the control table took;
    /// `NEVER` before the first.
    last_ok_ms: AtomicU64,
    /// A follower keeps this instance on the flag (dual writes on). Without one the phase
    /// stays `shadow` and nothing depends on the control table.
    following: AtomicBool,
    started: Instant,
    lease: Duration,
    /// Query shapes whose shadow comparisons confirmed a mismatch while reads could go to
    /// new: they read from old from then on (fingerprint → the shape's text).
    sent_back: dashmap::DashMap<u64, String>,
    /// Shapes cleared by the operator, with the confirmed mismatches counted then: only a
    /// later one sends them back again.
    forgiven: dashmap::DashMap<u64, u64>,
    /// The write pause of a flip that moves writes.
    pub gate: gate::WriteGate,
    /// Bumped when writes moved to the other database (or old was detached): idle sessions
    /// move at once rather than at their next request (their connection to the former
    /// primary is let go).
    moved: tokio::sync::watch::Sender<u64>,
    /// User types numbered alike on both sides: reads of them may go to new.
    pub types: types::SameTypes,
}

#[derive(Debug, Clone, Serialize)]
pub struct SentBack {
    pub fingerprint: String,
    pub query: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveSnapshot {
    pub phase: &'static str,
    pub epoch: i64,
    pub percent: u8,
    pub ready_epoch: Option<i64>,
    pub read_your_writes: bool,
    /// The database sessions write to.
    pub primary: &'static str,
    /// A write flip holds new transactions at their start.
    pub write_pause: bool,
    pub sessions_busy: usize,
    pub sessions_pinned: usize,
    pub control_table_ok: bool,
    pub last_heartbeat_secs: Option<f64>,
    /// Query shapes the canary sent back to old.
    pub sent_back: Vec<SentBack>,
}

const NEVER: u64 = u64::MAX;

fn phase_index(p: Phase) -> u8 {
    Phase::ALL.iter().position(|x| *x == p).unwrap_or(0) as u8
}

impl Live {
    pub fn new(lease: Duration) -> Self {
        Live {
            phase: AtomicU8::new(0),
            epoch: AtomicI64::new(0),
            percent: AtomicU8::new(0),
            ready_epoch: AtomicI64::new(0),
            ryw: AtomicBool::new(false),
            last_ok_ms: AtomicU64::new(NEVER),
            following: AtomicBool::new(false),
            started: Instant::now(),
            lease,
            sent_back: dashmap::DashMap::new(),
            forgiven: dashmap::DashMap::new(),
            gate: gate::WriteGate::default(),
            moved: tokio::sync::watch::Sender::new(0),
            types: types::SameTypes::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::ALL[self.phase.load(Ordering::Acquire) as usize % Phase::ALL.len()]
    }

    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Which database sessions use as their primary now.
    pub fn direction(&self) -> switchyard_core::direction::Direction {
        self.phase().direction()
    }

    /// The cutover is done: old is detached, sessions write to new alone.
    pub fn detached(&self) -> bool {
        self.phase() == Phase::Done
    }

    pub fn percent(&self) -> u8 {
        self.percent.load(Ordering::Relaxed)
    }

    pub(crate) fn run_epoch(&self, phase: Phase, epoch: i64, percent: u8) {
        let moved = phase.direction() != self.direction()
            || (phase == Phase::Done && self.phase() != Phase::Done);
        self.percent.store(percent, Ordering::Relaxed);
        self.phase.store(phase_index(phase), Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
        if moved {
            self.moved.send_modify(|n| *n += 1);
        }
    }

    /// Wakes when writes move to the other database.
    pub fn watch_moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.subscribe()
    }

    pub(crate) fn set_ready(&self, epoch: Option<i64>) {
        self.ready_epoch
            .store(epoch.unwrap_or(0), Ordering::Release);
    }

    pub fn ready_epoch(&self) -> Option<i64> {
        Some(self.ready_epoch.load(Ordering::Acquire)).filter(|e| *e != 0)
    }

    pub(crate) fn set_ryw(&self, on: bool) {
        self.ryw.store(on, Ordering::SeqCst);
    }

    /// Whether a commit must wait for new's COMMIT PREPARED before answering the client.
    pub fn read_your_writes(&self) -> bool {
        self.ryw.load(Ordering::SeqCst)
    }

    pub(crate) fn heartbeat_ok(&self) {
        self.last_ok_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Release);
    }

    pub(crate) fn follow(&self) {
        self.following.store(true, Ordering::Release);
    }

    /// None before the first heartbeat.
    fn since_heartbeat(&self) -> Option<Duration> {
        let last = self.last_ok_ms.load(Ordering::Acquire);
        (last != NEVER).then(|| {
            self.started
                .elapsed()
                .saturating_sub(Duration::from_millis(last))
        })
    }

    /// False until the state was read, and once the control table was out of reach for
    /// longer than the lease: the instance may be running a stale epoch, so it takes no
    /// writes (and reads stay on old).
    pub fn control_ok(&self) -> bool {
        !self.following.load(Ordering::Acquire)
            || self.since_heartbeat().is_some_and(|d| d <= self.lease)
    }

    /// Whether a session whose canary draw is `draw` reads from new now.
    pub fn reads_from_new(&self, draw: u8) -> bool {
        self.phase().reads_from_new(self.percent(), draw) && self.control_ok()
    }

    /// Keeps a query shape on old for good (a confirmed mismatch); true the first time.
    pub fn send_back(&self, fingerprint: u64, query: &str) -> bool {
        if self.sent_back.contains_key(&fingerprint) {
            return false;
        }
        self.sent_back
            .insert(fingerprint, query.to_string())
            .is_none()
    }

    /// Forgets every shape sent back (the data was repaired); how many there were.
    /// `confirmed_count` says how many mismatches each had confirmed so far.
    pub fn clear_sent_back(&self, confirmed_count: impl Fn(u64) -> u64) -> usize {
        let shapes: Vec<u64> = self.sent_back.iter().map(|e| *e.key()).collect();
        for fp in &shapes {
            self.forgiven.insert(*fp, confirmed_count(*fp));
            self.sent_back.remove(fp);
        }
        shapes.len()
    }

    /// Confirmed mismatches of a shape the operator already cleared.
    pub fn forgiven(&self, fingerprint: u64) -> u64 {
        self.forgiven.get(&fingerprint).map_or(0, |n| *n)
    }

    pub fn is_sent_back(&self, fingerprint: u64) -> bool {
        self.sent_back.contains_key(&fingerprint)
    }

    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            phase: self.phase().as_str(),
            epoch: self.epoch(),
            percent: self.percent(),
            ready_epoch: self.ready_epoch(),
            read_your_writes: self.read_your_writes(),
            primary: self.direction().primary().as_str(),
            write_pause: self.gate.is_closed(),
            sessions_busy: self.gate.busy(),
            sessions_pinned: self.gate.pinned(),
            control_table_ok: self.control_ok(),
            last_heartbeat_secs: self.since_heartbeat().map(|d| d.as_secs_f64()),
            sent_back: self
                .sent_back
                .iter()
                .map(|e| SentBack {
                    fingerprint: format!("{:016x}", e.key()),
                    query: e.value().clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_without_a_heartbeat_past_its_lease_routes_nothing_to_new() {
        let live = Live::new(Duration::from_millis(50));
        assert!(live.control_ok(), "not following: nothing to lose");
        live.follow();
        assert!(!live.control_ok(), "following, before the first heartbeat");
        live.run_epoch(Phase::ReadsNew, 3, 0);
        live.heartbeat_ok();
        assert!(live.reads_from_new(99));
        assert_eq!(live.phase(), Phase::ReadsNew);
        std::thread::sleep(Duration::from_millis(80));
        assert!(!live.control_ok());
        assert!(!live.reads_from_new(99));
        live.heartbeat_ok();
        assert!(live.reads_from_new(99));
    }

    #[test]
    fn canary_routes_by_draw() {
        let live = Live::new(Duration::from_secs(5));
        live.follow();
        live.heartbeat_ok();
        live.run_epoch(Phase::Canary, 1, 25);
        assert!(live.reads_from_new(24));
        assert!(!live.reads_from_new(25));
    }
}
