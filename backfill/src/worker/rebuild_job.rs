//! Bulk mode's rebuild: the keys and indexes of tables whose chunks are all copied.

use super::Shared;
use crate::indexes;
use anyhow::Result;

/// Rebuilds what `tables` deferred, unless another worker of this process is at it
/// (between processes the rebuild's advisory lock decides). False when this worker
/// rebuilt nothing: it waits for a change instead.
pub(super) async fn run(shared: &Shared, tables: &[String]) -> Result<bool> {
    let Ok(_guard) = shared.rebuild_guard.try_lock() else {
        return Ok(false);
    };
    let rebuilt = indexes::rebuild(&shared.cfg, &shared.control, tables).await?;
    if rebuilt.is_empty() {
        return Ok(false);
    }
    tracing::info!(objects = ?rebuilt, "Rebuilt after the bulk load; verifying the chunks.");
    if let Ok(mut all) = shared.rebuilt.lock() {
        all.extend(rebuilt);
    }
    Ok(true)
}
