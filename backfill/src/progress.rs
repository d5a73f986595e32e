//! Progress while running: on a terminal, a bar per table and one overall (rows, rows/s,
//! ETA) drawn by `indicatif` on stderr; otherwise a log line every few seconds. Rows are
//! counted as chunks finish, against the planner's estimate (a resumed run starts from
//! what the chunk table says is done).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::progress::{stderr_is_terminal, style};

/// Starting point of one table.
#[derive(Debug, Clone)]
pub struct TableStart {
    /// The table as the chunk table names it (quoted).
    pub key: String,
    /// The table for people.
    pub table: String,
    pub estimated_rows: u64,
    pub rows_done: u64,
    pub chunks: u64,
    pub chunks_done: u64,
}

struct Counters {
    rows: AtomicU64,
    chunks: AtomicU64,
    bar: Option<ProgressBar>,
}

/// Shared by the workers of a process.
pub struct Progress {
    bars: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    tables: HashMap<String, Counters>,
    rows_total: u64,
    chunks_total: u64,
    rows: AtomicU64,
    chunks: AtomicU64,
    started: Instant,
    rows_at_start: u64,
}

impl Progress {
    /// Bars when `bars` (stderr is a terminal and the output is for people), else quiet
    /// counters for the log lines.
    pub fn new(starts: &[TableStart], bars: bool) -> Arc<Progress> {
        let bars = bars && stderr_is_terminal();
        let multi = bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let rows_total: u64 = starts
            .iter()
            .map(|s| s.estimated_rows.max(s.rows_done))
            .sum();
        let rows_done: u64 = starts.iter().map(|s| s.rows_done).sum();
        let chunks_total: u64 = starts.iter().map(|s| s.chunks).sum();
        let chunks_done: u64 = starts.iter().map(|s| s.chunks_done).sum();
        let mut tables = HashMap::new();
        for s in starts {
            let bar = multi.as_ref().map(|m| {
                let b = m.add(ProgressBar::new(s.estimated_rows.max(s.rows_done)));
                b.set_style(style(
                    "{prefix:>24} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta}",
                ));
                b.set_prefix(s.table.clone());
                b.set_position(s.rows_done);
                b
            });
            tables.insert(
                s.key.clone(),
                Counters {
                    rows: AtomicU64::new(s.rows_done),
                    chunks: AtomicU64::new(s.chunks_done),
                    bar,
                },
            );
        }
        let overall = multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(rows_total));
            b.set_style(style(
                "{prefix:>24} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta} ({msg})",
            ));
            b.set_prefix("overall");
            b.set_position(rows_done);
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        Arc::new(Progress {
            bars: multi,
            overall,
            tables,
            rows_total,
            chunks_total,
            rows: AtomicU64::new(rows_done),
            chunks: AtomicU64::new(chunks_done),
            started: Instant::now(),
            rows_at_start: rows_done,
        })
    }

    /// A chunk of `table` (quoted, as in the chunk table) finished with `rows` rows.
    pub fn chunk_done(&self, table: &str, rows: u64) {
        let total = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let chunks = self.chunks.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(c) = self.tables.get(table) {
            c.rows.fetch_add(rows, Ordering::Relaxed);
            c.chunks.fetch_add(1, Ordering::Relaxed);
            if let Some(b) = &c.bar {
                if b.position() + rows > b.length().unwrap_or(0) {
                    b.set_length(b.position() + rows);
                }
                b.inc(rows);
            }
        }
        if let Some(b) = &self.overall {
            if total > b.length().unwrap_or(0) {
                b.set_length(total);
            }
            b.set_position(total);
            b.set_message(format!("{chunks}/{} chunks", self.chunks_total));
        }
    }

    /// Rows per second copied by this process since it started.
    pub fn rate(&self) -> f64 {
        let rows = self.rows.load(Ordering::Relaxed) - self.rows_at_start;
        rows as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    /// One line for the log.
    pub fn line(&self) -> String {
        let rows = self.rows.load(Ordering::Relaxed);
        let rate = self.rate();
        let left = self.rows_total.saturating_sub(rows);
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "?".into()
        };
        format!(
            "progress: {}/{} chunks, {rows}/{} rows, {rate:.0} rows/s, ETA {eta}",
            self.chunks.load(Ordering::Relaxed),
            self.chunks_total,
            self.rows_total
        )
    }

    /// True when bars are drawn (no log lines needed).
    pub fn has_bars(&self) -> bool {
        self.bars.is_some()
    }

    /// Removes the bars before the summary is printed.
    pub fn finish(&self) {
        for c in self.tables.values() {
            if let Some(b) = &c.bar {
                b.finish();
            }
        }
        if let Some(b) = &self.overall {
            b.finish();
        }
        if let Some(m) = &self.bars {
            let _ = m.clear();
        }
    }
}
