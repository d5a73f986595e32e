//! What verify, repair and replay show while they run (`switchyard_core::progress` draws
//! it): on a terminal by default, as lines on stderr with `--progress`, else nothing, so
//! that the output of a piped or logged run is what it always was.

use crate::replay::ReplayReport;
use crate::report::TableReport;
use crate::verify::Event;
use std::time::{Duration, Instant};
use switchyard_core::progress::{Display, Progress};

/// Seconds between progress lines when they are asked for without a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// How progress is shown: `for_people` is the human output format, `asked` the
/// `--progress` flag.
pub fn display(for_people: bool, asked: bool) -> Display {
    Display::choose(for_people, asked, LINE_EVERY)
}

/// Verify's (and repair's) progress: tables done of all, rows compared, rows differing, and
/// the table being compared.
pub struct VerifyProgress {
    progress: Progress,
    tables: usize,
    done: usize,
    rows: u64,
    differing: u64,
}

impl VerifyProgress {
    pub fn new(display: Display, command: &str) -> VerifyProgress {
        VerifyProgress {
            progress: Progress::new(display, command, None),
            tables: 0,
            done: 0,
            rows: 0,
            differing: 0,
        }
    }

    /// Takes one event of the run; `print` is called with each finished table's report,
    /// out of the bar's way.
    pub fn event(&mut self, event: Event<'_>, print: impl FnOnce(&TableReport)) {
        match event {
            Event::Tables(n) => {
                self.tables = n;
                self.show(None);
            }
            Event::Started(table) => self.show(Some(table)),
            Event::Finished(t) => {
                self.done += 1;
                self.rows += t.rows_old.max(t.rows_new);
                self.differing += t.missing_in_new + t.extra_in_new + t.different;
                self.progress.suspend(|| print(t));
                self.show(None);
            }
        }
    }

    fn show(&self, current: Option<&str>) {
        self.progress.update(
            None,
            verify_line(self.done, self.tables, self.rows, self.differing, current),
        );
    }

    pub fn finish(&self) {
        self.progress.finish();
    }
}

/// `3/10 tables, 120000 rows compared, 2 differing; comparing public.orders`
pub fn verify_line(
    done: usize,
    tables: usize,
    rows: u64,
    differing: u64,
    current: Option<&str>,
) -> String {
    let mut line = format!("{done}/{tables} tables, {rows} rows compared, {differing} differing");
    if let Some(t) = current {
        line.push_str("; comparing ");
        line.push_str(t);
    }
    line
}

/// Replay's progress: records replayed so far (and their rate), failures, dead letters.
pub struct ReplayProgress {
    progress: Progress,
    started: Instant,
    records: u64,
    failed: u64,
}

impl ReplayProgress {
    pub fn new(display: Display) -> ReplayProgress {
        ReplayProgress {
            progress: Progress::new(display, "replay", None),
            started: Instant::now(),
            records: 0,
            failed: 0,
        }
    }

    /// A batch of the embedded log: `done` records applied, `failed` to be tried again.
    pub fn batch(&mut self, done: u64, failed: u64) {
        self.records += done;
        self.failed += failed;
        self.progress.update(
            None,
            replay_line(self.records, self.failed, None, self.started.elapsed()),
        );
    }

    /// The whole run's figures so far (the Kafka path reports them every second).
    pub fn report(&mut self, r: &ReplayReport) {
        self.records = r.records_done;
        self.failed = r.records_failed;
        let lag = r.partitions.iter().map(|p| p.lag.max(0) as u64).sum();
        self.progress.update(
            None,
            replay_line(
                r.records_done,
                r.records_failed,
                Some(lag),
                self.started.elapsed(),
            ),
        );
    }

    pub fn finish(&self) {
        self.progress.finish();
    }
}

/// `1200 records replayed (400/s), 3 failed, backlog 250`
pub fn replay_line(records: u64, failed: u64, backlog: Option<u64>, elapsed: Duration) -> String {
    let rate = records as f64 / elapsed.as_secs_f64().max(1e-3);
    let mut line = format!("{records} records replayed ({rate:.0}/s), {failed} failed");
    if let Some(b) = backlog {
        line.push_str(&format!(", backlog {b}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_line_counts_tables_rows_and_names_the_current_table() {
        assert_eq!(
            verify_line(3, 10, 120_000, 2, Some("public.orders")),
            "3/10 tables, 120000 rows compared, 2 differing; comparing public.orders"
        );
        assert_eq!(
            verify_line(0, 4, 0, 0, None),
            "0/4 tables, 0 rows compared, 0 differing"
        );
    }

    #[test]
    fn replay_line_gives_the_rate_and_the_backlog_when_known() {
        assert_eq!(
            replay_line(1200, 3, Some(250), Duration::from_secs(3)),
            "1200 records replayed (400/s), 3 failed, backlog 250"
        );
        assert_eq!(
            replay_line(0, 0, None, Duration::ZERO),
            "0 records replayed (0/s), 0 failed"
        );
    }

    #[test]
    fn finished_tables_are_counted_and_printed() {
        let mut p = VerifyProgress::new(Display::Off, "verify");
        p.event(Event::Tables(2), |_| panic!("nothing finished yet"));
        let mut t = TableReport::new("public.a".into(), crate::report::Status::Different);
        t.rows_old = 10;
        t.rows_new = 9;
        t.missing_in_new = 1;
        let mut printed = Vec::new();
        p.event(Event::Finished(&t), |t| printed.push(t.table.clone()));
        assert_eq!(printed, ["public.a"]);
        assert_eq!((p.done, p.tables, p.rows, p.differing), (1, 2, 10, 1));
    }
}
