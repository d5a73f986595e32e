//! The control row: pause and rate, changed while processes run (each follows within a
//! second).

use super::{err, ChunkTableError};
use tokio_postgres::Client;

/// Pause flag and rate override of the control row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    pub paused: bool,
    pub max_rows_per_sec: Option<i64>,
}

/// Reads the control row.
pub async fn read_control(client: &Client) -> Result<Control, ChunkTableError> {
    let row = client
        .query_opt(
            "SELECT paused, max_rows_per_sec FROM _switchyard.backfill_control WHERE id = 1",
            &[],
        )
        .await
        .map_err(err("reading the control row"))?;
    Ok(row
        .map(|r| Control {
            paused: r.get(0),
            max_rows_per_sec: r.get(1),
        })
        .unwrap_or_default())
}

/// Sets the pause flag of the control row (every process on the pair follows within a
/// second).
pub async fn set_paused(client: &Client, paused: bool) -> Result<(), ChunkTableError> {
    client
        .execute(
            "UPDATE _switchyard.backfill_control SET paused = $1, updated_at = now() WHERE id = 1",
            &[&paused],
        )
        .await
        .map_err(err("setting the pause flag"))?;
    Ok(())
}
