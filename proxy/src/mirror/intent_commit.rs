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
    /// Before the primary's COMMIT: queues the mark on the secondary, and returns the
    /// statement that records the intent on the primary with the wait for the secondary's
    /// applies (mark included), which the caller runs side by side: neither needs the
    /// other. None when there is nothing to record this way (nothing changed, or the
    /// secondary already failed and the changes go to the retry log instead).
    pub async fn intent(
        &mut self,
    ) -> Option<(
        String,
        impl std::future::Future<Output = Result<(), MirrorError>> + 'static,
    )> {
        self.flush_truncates().await;
        if !self.txn.open || self.txn.broken.is_some() {
            return None;
        }
        let xid = self.primary_xid()?;
        // The mark commits with the applies or not at all: what recovery goes by.
        let mark = switchyard_core::intents::mark_sql(&xid);
        if let Err(e) = self.secondary.queue_batch("mark", mark).await {
            self.fail(&e);
            return None;
        }
        // Asked right behind BEGIN: answered by now, or soon.
        let within = std::time::Duration::from_millis(
            self.mirror.config.secondary_statement_timeout_ms + 500,
        );
        let secondary_xid = match self.txn.secondary_xid.take() {
            Some(rx) => tokio::time::timeout(within, rx)
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten(),
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
                Some((sql, self.secondary.waiter()))
            }
            Err(e) => {
                self.fail(&MirrorError::Catalog(format!("writing the intent: {e}")));
                None
            }
        }
    }

    /// What the wait for the secondary's applies said. A failure leaves the transaction to
    /// its intent: the primary still commits, and recovery redoes it from the intent.
    pub fn intent_synced(&mut self, r: Result<(), MirrorError>) {
        self.secondary.synced(&r);
        self.note_synced(r);
    }

    /// The retry log needs records beside the intent: only keys the secondary could not
    /// read (the intent covers everything else, and is deleted once the secondary commits).
    pub fn intent_covers_records(&self) -> bool {
        self.txn.intent.is_some() && self.txn.broken.is_some()
    }

    /// The primary's transaction ended: COMMIT the secondary after it (without waiting),
    /// or roll it back. With the intent in a committed primary transaction nothing can be
    /// lost from here: a COMMIT that fails (or a secondary that failed before) leaves the
    /// intent to recovery.
    pub(super) async fn finish_intent(&mut self, primary_xid: String, committed: bool) {
        self.txn.open = false;
        if !committed || self.txn.broken.is_some() {
            self.secondary.rollback().await;
            if committed {
                tracing::warn!(xid = %primary_xid, secondary = %self.mirror.direction.secondary(),
                    "The secondary failed before the primary's COMMIT; recovery applies the transaction from its intent.");
                self.mirror
                    .intents
                    .unfinished
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::MIRROR_INTENTS_UNFINISHED_TOTAL).increment(1);
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
