//! How an instance gets ready for a proposed phase (the confirmation it then heartbeats):
//! read-your-writes for a phase that reads from new; for one that moves writes, the other
//! direction's dual writes set up and the write pause (new transactions hold at their start
//! until the flip commits or is given up, those in flight finish first); and every commit
//! on the secondary that nobody waited for finished there.

use super::follower::Follower;
use crate::mirror::Mirror;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::cutover::Phase;
use switchyard_core::direction::Direction;
use tokio_postgres::Client;

impl Follower {
    /// Gets ready for `phase`: if it reads from new, commits wait for new from now on; if
    /// it moves writes, the other direction's dual writes are set up, new transactions
    /// hold at their start and those in flight finish; and every commit on the secondary
    /// that nobody waited for has finished there. False if that could not be shown in
    /// time (the flip is then abandoned by the coordinator's timeout, and the pause ends).
    pub(super) async fn prepare(&self, phase: Phase, percent: u8) -> bool {
        let moves = phase.direction() != self.live.direction();
        if !phase.any_reads_new(percent) && !moves {
            return true;
        }
        if phase.any_reads_new(percent) {
            self.live.set_ryw(true);
        }
        let Some(current) = self.mirror_for(self.live.direction()) else {
            return true;
        };
        if moves {
            let Some(next) = self.mirror_for(phase.direction()) else {
                return false;
            };
            // Before anything waits: capture on the next primary, the next secondary checked.
            next.activate();
            if let Err(e) = crate::mirror::startup::check(next).await {
                tracing::warn!(error = %e, "Writes cannot move: the other direction's dual writes are not ready.");
                return false;
            }
            // Opened before the pause, which it is needed in.
            let Some(settle) = self.secondary_client(current).await else {
                return false;
            };
            self.live.gate.close();
            let deadline = Instant::now() + self.config.write_drain();
            loop {
                let (busy, pinned) = (self.live.gate.busy(), self.live.gate.pinned());
                if busy == 0 && pinned == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(busy, pinned, "Transactions in flight did not finish within cutover.write_drain_ms (or sessions hold temporary objects): not confirming the write flip.");
                    self.reopen("transactions in flight did not finish in time");
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let within = self.config.flip_timeout() / 2;
            let ok =
                secondary_settled(&settle, within).await && current.intents.settled(within).await;
            if !ok {
                self.reopen("prepared transactions on the secondary did not finish in time");
            }
            return ok;
        }
        match self.secondary_client(current).await {
            Some(c) => secondary_settled(&c, self.config.flip_timeout() / 2).await,
            None => false,
        }
    }

    pub(super) fn mirror_for(&self, direction: Direction) -> Option<&Arc<Mirror>> {
        match direction {
            Direction::OldToNew => self.mirror.as_ref(),
            Direction::NewToOld => self.mirror_back.as_ref(),
        }
    }

    async fn secondary_client(&self, m: &Mirror) -> Option<Client> {
        match crate::mirror::control::connect(
            m.direction.secondary(),
            &m.secondary,
            "switchyard-cutover",
            None,
            self.connect_timeout,
        )
        .await
        {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot check the secondary's prepared transactions before a cutover.");
                None
            }
        }
    }
}

/// Every transaction prepared on the secondary before now has finished there.
async fn secondary_settled(client: &Client, within: Duration) -> bool {
    let Ok(before) = pending(client).await else {
        return false;
    };
    let deadline = Instant::now() + within;
    loop {
        match pending(client).await {
            Ok(now) if !now.iter().any(|g| before.contains(g)) => return true,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await
            }
            _ => return false,
        }
    }
}

/// The proxy's prepared transactions on a secondary (commits between PREPARE and COMMIT
/// PREPARED).
async fn pending(c: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    c.query(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'switchyard:%'",
        &[],
    )
    .await
    .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
