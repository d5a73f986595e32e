//! Progress of the command-line tools (backfill, verify, replay) on stderr, so that stdout
//! keeps only the result (a table for people, or one JSON document for programs).
//!
//! On a terminal it is drawn by `indicatif` and redrawn in place; elsewhere nothing is
//! printed unless asked for, because a log file or a CI transcript full of redraws is
//! noise, and then it is a plain line now and then.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Drawn in place on the terminal.
    Bars,
    /// One line on stderr at most this often.
    Lines(Duration),
    /// Nothing.
    Off,
}

impl Display {
    /// Bars when stderr is a terminal and either the output is for people or progress
    /// was asked for; lines when asked for without a terminal; else nothing (the output
    /// of a run piped or logged stays as it was).
    pub fn choose(for_people: bool, asked: bool, interval: Duration) -> Display {
        Self::choose_for(std::io::stderr().is_terminal(), for_people, asked, interval)
    }

    /// [`Display::choose`] with the terminal test given (for tests).
    pub fn choose_for(
        terminal: bool,
        for_people: bool,
        asked: bool,
        interval: Duration,
    ) -> Display {
        match (terminal, for_people || asked, asked) {
            (true, true, _) => Display::Bars,
            (_, _, true) => Display::Lines(interval),
            _ => Display::Off,
        }
    }
}

/// True when stderr is a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A style from `template`, falling back to indicatif's plain bar should the template be
/// refused (it is a constant, so that would be a bug, not a reason to stop the run).
pub fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// One line of progress that a tool updates as it goes: a bar with `len`, or a spinner
/// without; or lines; or nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The interval and when the last line was printed (none yet: the first is at once).
    lines: Option<(Duration, Mutex<Option<Instant>>)>,
    label: String,
}

impl Progress {
    /// `label` names the work ("verify", "replay"); `len` is the total when known.
    pub fn new(display: Display, label: &str, len: Option<u64>) -> Progress {
        let bar = (display == Display::Bars).then(|| {
            let b = match len {
                Some(n) => {
                    let b = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr());
                    b.set_style(style(
                        "{prefix:>8} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
                    ));
                    b
                }
                None => {
                    let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>8} {spinner} {elapsed_precise} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b
                }
            };
            b.set_prefix(label.to_string());
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        let lines = match display {
            Display::Lines(every) => Some((every, Mutex::new(None))),
            _ => None,
        };
        Progress {
            bar,
            lines,
            label: label.to_string(),
        }
    }

    /// A progress that shows nothing.
    pub fn off() -> Progress {
        Progress::new(Display::Off, "", None)
    }

    /// The position (when there is a bar of known length) and the message.
    pub fn update(&self, position: Option<u64>, message: String) {
        if let Some(b) = &self.bar {
            if let Some(p) = position {
                if b.length().is_some_and(|l| p > l) {
                    b.set_length(p);
                }
                b.set_position(p);
            }
            b.set_message(message);
        } else if let Some((every, last)) = &self.lines {
            let Ok(mut last) = last.lock() else { return };
            if last.is_none_or(|t| t.elapsed() >= *every) {
                *last = Some(Instant::now());
                eprintln!("{}: {message}", self.label);
            }
        }
    }

    /// Runs `f` (which prints to stdout) with the bar out of the way, so that the two do
    /// not draw over each other on one terminal.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// Removes the bar before the result is printed.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_drawn_on_a_terminal_and_printed_only_when_asked_for_elsewhere() {
        let every = Duration::from_secs(10);
        assert_eq!(Display::choose_for(true, true, false, every), Display::Bars);
        assert_eq!(
            Display::choose_for(true, false, false, every),
            Display::Off,
            "JSON on a terminal: quiet unless asked"
        );
        assert_eq!(Display::choose_for(true, false, true, every), Display::Bars);
        assert_eq!(
            Display::choose_for(false, true, false, every),
            Display::Off,
            "piped or logged: unchanged"
        );
        assert_eq!(
            Display::choose_for(false, false, true, every),
            Display::Lines(every)
        );
    }
}
