//! The last flip: `done` detaches old. The flag moves to new's `_switchyard` schema (old may
//! be switched off from now on, and an instance that starts later finds the flag there),
//! and change capture comes off new, since nobody applies what it would capture.

use super::request::{FlipError, FlipRequest};
use super::schema::{ensure_schema, CHANNEL};
use super::Phase;
use crate::catalog::tables_exist;
use std::time::Duration;
use tokio_postgres::Client;

/// Writes the committed `done` epoch into new's control table and tells its listeners.
/// Runs after old's commit: an instance that read `done` on old waits until new says so
/// too before it follows new.
pub(super) async fn move_control(
    new: &Client,
    req: &FlipRequest,
    epoch: i64,
) -> Result<(), FlipError> {
    ensure_schema(new).await?;
    new.execute(
        "UPDATE _switchyard.cutover SET phase = $1, epoch = $2, percent = 0, changed_by = $3,
           changed_at = clock_timestamp(), proposed_phase = NULL, proposed_epoch = NULL,
           proposed_percent = NULL, proposed_by = NULL, proposed_at = NULL",
        &[&Phase::Done.as_str(), &epoch, &req.by],
    )
    .await?;
    new.batch_execute(&format!("NOTIFY {CHANNEL}")).await?;
    Ok(())
}

/// Takes change capture off new, within `within`; says what it did (the flip is committed
/// either way: what is left can be removed by running it again).
pub(super) async fn remove_capture(new: &Client, within: Duration) -> String {
    match tokio::time::timeout(within, crate::capture::uninstall::uninstall(new)).await {
        Ok(Ok(n)) => format!("removed from {n} tables of new"),
        Ok(Err(e)) => format!("not removed: {e}"),
        Err(_) => format!("not removed within {within:?}: a transaction holds a table on new"),
    }
}

/// Whether new's control table says the cutover is done (an instance starting while old
/// is gone looks there).
pub async fn done_on(new: &Client) -> Result<Option<i64>, tokio_postgres::Error> {
    if !tables_exist(new, &["_switchyard.cutover"]).await? {
        return Ok(None);
    }
    Ok(new
        .query_opt(
            "SELECT epoch FROM _switchyard.cutover WHERE phase = 'done'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// New, as the place the flag lives once done (its schema made if the move was cut short).
pub(super) async fn control_for_done(new: &Client) -> Result<&Client, FlipError> {
    ensure_schema(new).await?;
    Ok(new)
}
