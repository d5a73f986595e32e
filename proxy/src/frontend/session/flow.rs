//! What both pumps (and the mediator) share: requests awaiting their ReadyForQuery, the
//! transaction status the server last reported, and whether the current transaction is
//! claimed for lockstep capture.

use crate::classify::StatementClass;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) struct Flow {
    pub pending: VecDeque<(Instant, Option<StatementClass>)>,
    pub txn_status: u8,
    /// The proxy set `switchyard.capture = lockstep` in the current transaction: its changes
    /// wait in the primary's lockstep table, so its COMMIT must go through the proxy's
    /// commit protocol. Cleared when the transaction ends.
    pub claimed: bool,
    /// The claim may have been undone (ROLLBACK TO a savepoint older than it, RESET ALL):
    /// the next write claims again.
    pub reclaim: bool,
    /// Statements that may have written since the claimed transaction's changes were last
    /// drained: the commit drains them, or the mediator once enough have piled up.
    pub undrained: u32,
    /// Savepoints open in the current transaction, oldest first (whether claimed or not):
    /// the secondary's transaction starts with them.
    pub savepoints: Vec<String>,
    /// The mediator has the session: busy whatever the status says.
    pub mediating: bool,
    /// Counts busy sessions for a write flip's pause (`cutover::gate`).
    busy: Option<Arc<AtomicUsize>>,
    counted: bool,
}

impl Drop for Flow {
    fn drop(&mut self) {
        if self.counted {
            if let Some(b) = &self.busy {
                b.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Flow {
    pub fn new(busy: Option<Arc<AtomicUsize>>) -> Self {
        Flow {
            mediating: false,
            busy,
            counted: false,
            pending: VecDeque::new(),
            txn_status: b'I',
            claimed: false,
            reclaim: false,
            undrained: 0,
            savepoints: Vec::new(),
        }
    }

    pub fn idle(&self) -> bool {
        self.pending.is_empty() && self.txn_status == b'I'
    }

    /// Brings the busy count up to date after a change of state.
    pub fn account(&mut self) {
        let busy = !self.idle() || self.mediating;
        if busy != self.counted {
            if let Some(b) = &self.busy {
                if busy {
                    b.fetch_add(1, Ordering::SeqCst);
                } else {
                    b.fetch_sub(1, Ordering::SeqCst);
                }
            }
            self.counted = busy;
        }
    }

    pub fn begin(&mut self, class: Option<StatementClass>) {
        self.pending.push_back((Instant::now(), class));
        self.account();
    }

    pub fn mediating(&mut self, on: bool) {
        self.mediating = on;
        self.account();
    }

    /// The server reported `status` in a ReadyForQuery.
    pub fn status(&mut self, status: u8) {
        self.txn_status = status;
        if status == b'I' {
            self.claimed = false;
            self.reclaim = false;
            self.undrained = 0;
            self.savepoints.clear();
        }
        self.account();
    }
}

/// Outside a transaction block, and no request still in flight opens one: a statement sent
/// now runs on its own (what shadow reads may sample). Requests in flight are common
/// (drivers pipeline Close/Sync after a query), so only transaction statements among them
/// count.
pub(crate) fn idle(flow: &Mutex<Flow>) -> bool {
    flow.lock()
        .map(|f| {
            f.txn_status == b'I'
                && f.pending
                    .iter()
                    .all(|(_, c)| *c != Some(StatementClass::Transaction))
        })
        .unwrap_or(false)
}
