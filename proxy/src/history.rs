//! The dashboard's plots: once a second the proxy reads its counters into a bounded ring
//! (the last ten minutes), turning counter deltas into rates, and notes the cutover's phase
//! changes. Served as `/api/history`. Kept in memory only: a restarted proxy starts over,
//! which is fine for a page that answers "is it getting quiet?".

use crate::counters::Counters;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const INTERVAL: Duration = Duration::from_secs(1);
/// Ten minutes at one sample a second.
pub const CAPACITY: usize = 600;
/// Phase changes outlive the sample window: a flip an hour ago still explains the plots.
const PHASE_CHANGES_MAX: usize = 100;

/// The counters at one instant: totals since start (plotted as rates) and gauges.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub statements: u64,
    pub rows_mirrored: u64,
    pub rows_queued: u64,
    pub retry_backlog: u64,
    /// Shadow comparisons that agreed, and all that were compared; None while off.
    pub shadow: Option<(u64, u64)>,
    /// Rows copied by the backfill's finished chunks, and when the proxy read them (time
    /// since start): that summary is refreshed every few seconds only, so its rate is taken
    /// between two refreshes rather than between two samples.
    pub backfill: Option<(u64, Duration)>,
    pub phase: &'static str,
    pub epoch: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseChange {
    pub at_unix_ms: u64,
    /// None for the phase the history started in.
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub epoch: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    at_unix_ms: u64,
    statements_per_sec: f64,
    mirrored_rows_per_sec: f64,
    queued_rows_per_sec: f64,
    retry_backlog: u64,
    match_rate: Option<f64>,
    backfill_rows_per_sec: Option<f64>,
}

/// `/api/history`: one array per series, all lined up with `t` (fewer bytes than one
/// object per sample, and the shape the charts draw from).
#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub interval_secs: u64,
    pub capacity: usize,
    /// Unix milliseconds of each sample.
    pub t: Vec<u64>,
    pub statements_per_sec: Vec<f64>,
    pub mirrored_rows_per_sec: Vec<f64>,
    pub queued_rows_per_sec: Vec<f64>,
    pub retry_backlog: Vec<u64>,
    /// Share of the shadow comparisons finished in the interval that agreed; null when
    /// none finished (or shadow reads are off).
    pub match_rate: Vec<Option<f64>>,
    /// null while no backfill has reported progress.
    pub backfill_rows_per_sec: Vec<Option<f64>>,
    pub phases: Vec<PhaseChange>,
}

/// The samples and the rate arithmetic, apart from where the readings come from (so it is
/// tested with made-up readings and times).
pub struct Ring {
    capacity: usize,
    started_unix_ms: u64,
    samples: VecDeque<Sample>,
    phases: VecDeque<PhaseChange>,
    prev: Option<(Duration, Reading)>,
    backfill_rate: Option<f64>,
}

fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    // A counter that went down was reset (a restarted mirror): no negative rates.
    now.saturating_sub(before) as f64 / secs
}

impl Ring {
    pub fn new(capacity: usize, started_unix_ms: u64) -> Self {
        Ring {
            capacity: capacity.max(1),
            started_unix_ms,
            samples: VecDeque::with_capacity(capacity.max(1)),
            phases: VecDeque::new(),
            prev: None,
            backfill_rate: None,
        }
    }

    /// Adds the reading taken `at` (time since start). The first reading only sets the
    /// baseline the next one's rates are taken from.
    pub fn record(&mut self, at: Duration, r: Reading) {
        let at_unix_ms = self.started_unix_ms + at.as_millis() as u64;
        let Some((prev_at, prev)) = self.prev.take() else {
            self.push_phase(at_unix_ms, None, &r);
            self.prev = Some((at, r));
            return;
        };
        let secs = at.saturating_sub(prev_at).as_secs_f64();
        if secs <= 0.0 {
            self.prev = Some((prev_at, prev));
            return;
        }
        if (prev.phase, prev.epoch) != (r.phase, r.epoch) {
            self.push_phase(at_unix_ms, Some(prev.phase), &r);
        }
        self.backfill_rate = match (prev.backfill, r.backfill) {
            (_, None) => None,
            (Some((rows0, read0)), Some((rows1, read1))) if read1 > read0 => {
                Some(per_sec(rows1, rows0, (read1 - read0).as_secs_f64()))
            }
            (_, Some(_)) => self.backfill_rate,
        };
        let match_rate = match (prev.shadow, r.shadow) {
            (Some((agreed0, compared0)), Some((agreed1, compared1))) if compared1 > compared0 => {
                let agreed = agreed1.saturating_sub(agreed0) as f64;
                Some((agreed / (compared1 - compared0) as f64).min(1.0))
            }
            _ => None,
        };
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_unix_ms,
            statements_per_sec: per_sec(r.statements, prev.statements, secs),
            mirrored_rows_per_sec: per_sec(r.rows_mirrored, prev.rows_mirrored, secs),
            queued_rows_per_sec: per_sec(r.rows_queued, prev.rows_queued, secs),
            retry_backlog: r.retry_backlog,
            match_rate,
            backfill_rows_per_sec: self.backfill_rate,
        });
        self.prev = Some((at, r));
    }

    fn push_phase(&mut self, at_unix_ms: u64, from: Option<&'static str>, r: &Reading) {
        if self.phases.len() == PHASE_CHANGES_MAX {
            self.phases.pop_front();
        }
        self.phases.push_back(PhaseChange {
            at_unix_ms,
            from,
            to: r.phase,
            epoch: r.epoch,
        });
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn view(&self) -> HistoryView {
        let s = &self.samples;
        HistoryView {
            interval_secs: INTERVAL.as_secs(),
            capacity: self.capacity,
            t: s.iter().map(|x| x.at_unix_ms).collect(),
            statements_per_sec: s.iter().map(|x| x.statements_per_sec).collect(),
            mirrored_rows_per_sec: s.iter().map(|x| x.mirrored_rows_per_sec).collect(),
            queued_rows_per_sec: s.iter().map(|x| x.queued_rows_per_sec).collect(),
            retry_backlog: s.iter().map(|x| x.retry_backlog).collect(),
            match_rate: s.iter().map(|x| x.match_rate).collect(),
            backfill_rows_per_sec: s.iter().map(|x| x.backfill_rows_per_sec).collect(),
            phases: self.phases.iter().cloned().collect(),
        }
    }
}

/// The ring as the proxy holds it.
pub struct History {
    ring: Mutex<Ring>,
}

impl Default for History {
    fn default() -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        History {
            ring: Mutex::new(Ring::new(CAPACITY, now_ms)),
        }
    }
}

impl History {
    pub fn view(&self) -> Option<HistoryView> {
        self.ring.lock().ok().map(|r| r.view())
    }

    fn record(&self, at: Duration, r: Reading) {
        if let Ok(mut ring) = self.ring.lock() {
            ring.record(at, r);
        }
    }
}

/// What the history samples: each source is shared with whoever updates it.
pub struct Sources {
    pub counters: Arc<Counters>,
    pub cutover: Arc<crate::cutover::Live>,
    /// Both directions' dual writes, those set up.
    pub mirrors: Vec<Arc<crate::mirror::Mirror>>,
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
    pub progress: Arc<crate::progress::Progress>,
}

/// The counters of this proxy now. Both directions' dual writes are summed: their counters
/// only grow, while the direction sessions use flips with the cutover.
pub fn reading(sources: &Sources) -> Reading {
    let mut r = Reading {
        statements: sources.counters.statements_total.load(Ordering::Relaxed),
        phase: sources.cutover.phase().as_str(),
        epoch: sources.cutover.epoch(),
        ..Reading::default()
    };
    for m in &sources.mirrors {
        r.rows_mirrored += m.status.rows_mirrored.load(Ordering::Relaxed);
        r.rows_queued += m.status.rows_queued.load(Ordering::Relaxed);
        r.retry_backlog += m.status.retry_backlog.load(Ordering::Relaxed);
    }
    if let Some(s) = &sources.shadow {
        let (t, _) = s.stats.totals();
        // As on the page: an accepted (collation) difference counts as agreeing.
        let agreed = t.matched + t.transient + t.accepted;
        r.shadow = Some((agreed, agreed + t.confirmed));
    }
    r.backfill = sources.progress.backfill_rows().map(|(rows, read_at)| {
        (
            u64::try_from(rows).unwrap_or(0),
            read_at.saturating_duration_since(sources.counters.started),
        )
    });
    r
}

/// Samples every [`INTERVAL`] while the proxy runs.
pub async fn run(history: Arc<History>, sources: Sources) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        history.record(sources.counters.started.elapsed(), reading(&sources));
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
