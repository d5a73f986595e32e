//! Reading the tail of a log file, for error messages that show why a process failed.

use std::path::Path;

/// Number of lines [`tail`] returns by default in error messages.
pub const TAIL_LINES: usize = 40;

/// The last `lines` lines of the file at `path`; a note instead if it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(err) => format!("<could not read log {}: {err}>", path.display()),
    }
}

/// Size of the file at `path` in bytes (0 when missing), to read only what a later step appends.
pub fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What was appended to the file at `path` after byte `from` (lossy UTF-8; empty when unreadable).
pub fn since(path: &Path, from: u64) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(_) => String::new(),
    }
}
