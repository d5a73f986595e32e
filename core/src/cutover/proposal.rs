//! The proposal's life in the control table: the commit that re-reads the confirmations
//! under the state row's lock, its withdrawal, and `cancel`.

use super::request::{withdrawn, FlipError, FlipRequest};
use super::schema::{ensure_schema, CHANNEL};
use super::status::{instances, Instance};
use tokio_postgres::Client;

/// Instances that must confirm `epoch` and have not (yet, or any more).
pub(super) fn unconfirmed(now: &[Instance], expected: &[String], epoch: i64) -> Vec<String> {
    now.iter()
        .filter(|i| (i.live || expected.contains(&i.id)) && i.ready_epoch != Some(epoch))
        .map(|i| i.id.clone())
        .collect()
}

/// Commits the proposal if every instance still confirms it, re-read under the state row's
/// lock (see `HEARTBEAT_SQL`); returns those that no longer do, and then commits nothing.
pub(super) async fn commit(
    old: &Client,
    req: &FlipRequest,
    expected: &[String],
    epoch: i64,
) -> Result<Vec<String>, FlipError> {
    old.batch_execute("BEGIN; SELECT 1 FROM _switchyard.cutover FOR UPDATE")
        .await?;
    let done = async {
        let now = instances(old, req.lease).await?;
        let waiting = unconfirmed(&now, expected, epoch);
        if !waiting.is_empty() {
            return Ok::<_, FlipError>(waiting);
        }
        let committed = old
            .execute(
                "UPDATE _switchyard.cutover SET phase = proposed_phase, epoch = proposed_epoch,
                   percent = proposed_percent, changed_by = proposed_by,
                   changed_at = clock_timestamp(), proposed_phase = NULL, proposed_epoch = NULL,
                   proposed_percent = NULL, proposed_by = NULL, proposed_at = NULL
                 WHERE proposed_epoch = $1",
                &[&epoch],
            )
            .await?;
        if committed == 0 {
            return Err(withdrawn(req, epoch - 1));
        }
        Ok(waiting)
    }
    .await;
    match done {
        Ok(waiting) => {
            old.batch_execute(if waiting.is_empty() {
                "COMMIT"
            } else {
                "ROLLBACK"
            })
            .await?;
            Ok(waiting)
        }
        Err(e) => {
            let _ = old.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Withdraws the proposal being confirmed, if any (a flip whose coordinator died, or one
/// the operator wants stopped): instances end their pause and stay on the epoch they run.
/// Safe to repeat; returns the withdrawn proposal's (phase, epoch), logged as cancelled.
pub async fn cancel(old: &Client, by: &str) -> Result<Option<(String, i64)>, FlipError> {
    ensure_schema(old).await?;
    let row = old
        .query_opt(
            "SELECT proposed_phase, proposed_epoch, phase, percent FROM _switchyard.cutover
             WHERE proposed_epoch IS NOT NULL",
            &[],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (to, epoch, from, percent): (String, i64, String, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    withdraw(old, epoch).await?;
    old.execute(
        "INSERT INTO _switchyard.cutover_log (by, from_phase, to_phase, percent, epoch, outcome)
         VALUES ($1, $2, $3, $4, $5, 'cancelled')",
        &[&by, &from, &to, &percent, &(epoch - 1)],
    )
    .await?;
    Ok(Some((to, epoch)))
}

pub(super) async fn withdraw(old: &Client, epoch: i64) -> Result<(), FlipError> {
    old.execute(
        "UPDATE _switchyard.cutover SET proposed_phase = NULL, proposed_epoch = NULL,
           proposed_percent = NULL, proposed_by = NULL, proposed_at = NULL
         WHERE proposed_epoch = $1",
        &[&epoch],
    )
    .await?;
    notify(old).await
}

pub(super) async fn notify(old: &Client) -> Result<(), FlipError> {
    old.batch_execute(&format!("NOTIFY {CHANNEL}")).await?;
    Ok(())
}
