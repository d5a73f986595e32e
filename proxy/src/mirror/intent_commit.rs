//! The commit steps of `mirror.mode = "lockstep"` on a session's secondary transaction: wait
//! until the secondary applied everything (it then holds the same row locks as the
//! primary, so a later transaction cannot overtake it there), hand the primary the intent
//! to record in its transaction, and after the primary's COMMIT, COMMIT the secondary
//! without waiting. Whether that COMMIT went through is known to the sweeper (the intent is
//! deleted) or, if it did not, left to recovery.

use super::txn::MirrorSession;
use super::MirrorError;
use std::sync::atomic::Ordering;

impl MirrorSession {
    /// Waits for the secondary's applies; the statement that records the intent on the
    /// primary, or None when there is nothing to record this way (nothing changed, or the
    /// secondary failed and the changes go to the retry log instead).
    pub async fn intent(&mut self) -> Option<String> {
        self.flush_truncates().await;
        if !self.txn.open || self.txn.broken.is_some() {
            return None;
        }
        let Some(xid) = self.txn.xid.clone() else {
            self.fail(&MirrorError::Catalog(format!(
                "the {} database's transaction id is unknown",
                self.mirror.direction.primary()
            )));
            return None;
        };
        // The mark commits with the applies or not at all: what recovery goes by.
        let mark = switchyard_core::intents::mark_sql(&xid);
        if let Err(e) = self.secondary.queue_batch("mark", mark).await {
            self.fail(&e);
            return None;
        }
        if !self.sync().await {
            return None;
        }
        // Answered before the sync returned (it was queued right behind BEGIN).
        let secondary_xid = match self.txn.secondary_xid.take() {
            Some(mut rx) => rx.try_recv().ok().flatten(),
            None => None,
        };
        let Some(secondary_xid) = secondary_xid else {
            self.fail(&MirrorError::Catalog(format!(
                "the {} database's transaction id is unknown",
                self.mirror.direction.secondary()
            )));
            return None;
        };
        match switchyard_core::intents::insert_sql(
            &self.mirror.instance,
            &secondary_xid,
            &self.records_of(true),
        ) {
            Ok(sql) => {
                self.txn.intent = Some(xid);
                Some(sql)
            }
            Err(e) => {
                self.fail(&MirrorError::Catalog(format!("writing the intent: {e}")));
                None
            }
        }
    }

    /// The primary's transaction ended: COMMIT the secondary after it (without waiting),
    /// or roll it back. With the intent in a committed primary transaction nothing can be
    /// lost from here: a COMMIT that fails leaves the intent to recovery.
    pub(super) async fn finish_intent(&mut self, primary_xid: String, committed: bool) {
        self.txn.open = false;
        if !committed {
            if self
                .secondary
                .execute("ROLLBACK", "ROLLBACK")
                .await
                .is_err()
            {
                self.secondary.abandon();
            }
            return;
        }
        let pending = super::intents::InFlight::new(self.mirror.clone());
        self.secondary
            .commit(Box::new(move |r| match r {
                Ok(()) => pending.mirror().intents.committed(primary_xid),
                Err(e) => {
                    let mirror = pending.mirror();
                    tracing::warn!(error = %e, xid = %primary_xid, secondary = %mirror.direction.secondary(),
                        "The secondary's COMMIT failed after the primary's; recovery applies the transaction from its intent.");
                    mirror.intents.unfinished.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(crate::metrics::MIRROR_INTENTS_UNFINISHED_TOTAL).increment(1);
                    // Reads stay on old until recovery has looked at it.
                    mirror.status.retry_backlog.fetch_add(1, Ordering::Relaxed);
                }
            }))
            .await;
        self.mirror
            .status
            .commits_two_phase
            .fetch_add(1, Ordering::Relaxed);
    }
}
