//! What a flip that moves writes does around its pause. Before anything waits: change
//! capture installed on the side that becomes the primary (a brief lock per table, tried
//! often, so a long transaction refuses the flip instead of stalling it), and that side's
//! sequences set `MARGIN` steps past the other's. Inside the pause, when no proxied write
//! runs anywhere: the sequences checked again and moved once more if writes raced the first
//! setting.

use super::sequences::{advance, behind, SequenceMove};
use super::Phase;
use crate::direction::Direction;
use std::time::Duration;
use tokio_postgres::Client;

/// Steps each sequence of the new primary is set ahead of the old one's, before the pause:
/// room for what the old primary hands out until it stops, so the check inside the pause
/// normally finds nothing to do.
pub const MARGIN: i64 = 1000;

/// The (old primary, new primary) of a flip to `to`.
fn sides<'c>(old: &'c Client, new: &'c Client, to: Phase) -> (&'c Client, &'c Client) {
    match to.direction() {
        Direction::NewToOld => (old, new),
        Direction::OldToNew => (new, old),
    }
}

/// Before the proposal: capture on the next primary, its sequences past the current one's.
pub(super) async fn before(
    old: &Client,
    new: &Client,
    to: Phase,
    install_within: Duration,
) -> Result<Vec<SequenceMove>, String> {
    let (current, next) = sides(old, new, to);
    let name = to.direction().primary();
    match tokio::time::timeout(install_within, crate::capture::install::install(next)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("installing change capture on {name}: {e}")),
        Err(_) => {
            return Err(format!(
                "change capture could not be installed on {name} within {install_within:?}: \
                 a transaction holds a table there (see pg_stat_activity), which a brief \
                 lock per table waits for"
            ))
        }
    }
    advance(current, next, MARGIN)
        .await
        .map_err(|e| format!("setting the sequences of {name}: {e}"))
}

/// Inside the pause: the next primary's sequences are past every value the current one
/// handed out, or are set so now.
pub(super) async fn inside(old: &Client, new: &Client, to: Phase) -> Result<usize, String> {
    let (current, next) = sides(old, new, to);
    let name = to.direction().primary();
    let lagging = behind(current, next)
        .await
        .map_err(|e| format!("checking the sequences of {name}: {e}"))?;
    if lagging.is_empty() {
        return Ok(0);
    }
    tracing::info!(sequences = %lagging.join(", "), "Sequences moved during the flip; setting them again inside the pause.");
    advance(current, next, 1)
        .await
        .map_err(|e| format!("setting the sequences of {name}: {e}"))?;
    Ok(lagging.len())
}
