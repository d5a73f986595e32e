//! The upstream pump's dual-write decisions: which request the mediator must handle, and
//! the plans of prepared statements and portals, kept as they are parsed and bound.
//!
//! With capture on the primary, statements reach it as the client wrote them; the proxy
//! steps in only at transaction boundaries: to claim a transaction for lockstep capture
//! before its first write (wrapping an autocommit write in a transaction it can hold open),
//! to mirror DDL as text, and to run the commit protocol of a claimed transaction.

use super::upstream::Upstream;
use crate::classify::{Classified, StatementClass};
use crate::mirror::plan::{Plan, TxnOp};
use crate::protocol::frontend::FunctionCall;
use std::borrow::Cow;
use std::sync::Arc;

/// Fastpath functions that write large objects (libpq's lo_* API): `lo_creat`, `lo_create`,
/// `lowrite`, `lo_truncate`, `lo_truncate64`, `lo_unlink`, `lo_import`.
const LARGE_OBJECT_WRITERS: &[i32] = &[957, 715, 955, 1004, 3172, 964, 764];

impl<R> Upstream<'_, R> {
    pub(in crate::frontend) fn claimed(&self) -> (bool, bool) {
        self.flow
            .lock()
            .map(|f| (f.claimed, f.reclaim))
            .unwrap_or((false, false))
    }

    /// The mediator claimed the current transaction (or the claim ended).
    pub(in crate::frontend) fn set_claimed(&self, claimed: bool) {
        if let Ok(mut f) = self.flow.lock() {
            f.claimed = claimed;
            f.reclaim = false;
        }
    }

    /// Statements that may have written since the last drain.
    pub(in crate::frontend) fn undrained(&self) -> u32 {
        self.flow.lock().map(|f| f.undrained).unwrap_or(u32::MAX)
    }

    /// One more statement that may have written; returns how many are undrained now.
    pub(in crate::frontend) fn note_undrained(&self) -> u32 {
        self.flow
            .lock()
            .map(|mut f| {
                f.undrained = f.undrained.saturating_add(1);
                f.undrained
            })
            .unwrap_or(u32::MAX)
    }

    pub(in crate::frontend) fn set_drained(&self) {
        if let Ok(mut f) = self.flow.lock() {
            f.undrained = 0;
        }
    }

    /// A statement passes through a claimed transaction undrained: unless it is a plain
    /// read, the commit drains once more.
    fn passing(&self, classes: &[crate::classify::Classified]) {
        if classes
            .iter()
            .any(|c| !matches!(c.class, StatementClass::Read | StatementClass::Transaction))
        {
            if let Ok(mut f) = self.flow.lock() {
                if f.claimed {
                    f.undrained = f.undrained.saturating_add(1);
                }
            }
        }
    }

    fn note_undrained_if_claimed(&self) {
        if let Ok(mut f) = self.flow.lock() {
            if f.claimed {
                f.undrained = f.undrained.saturating_add(1);
            }
        }
    }

    fn mark_reclaim(&self) {
        if let Ok(mut f) = self.flow.lock() {
            if f.claimed {
                f.reclaim = true;
            }
        }
    }

    /// The savepoints open in the current transaction, oldest first.
    pub(in crate::frontend) fn savepoints(&self) -> Vec<String> {
        self.flow
            .lock()
            .map(|f| f.savepoints.clone())
            .unwrap_or_default()
    }

    /// Follows the transaction's savepoints, mediated or not.
    fn track_savepoint(&self, op: &TxnOp) {
        let Ok(mut f) = self.flow.lock() else {
            return;
        };
        match op {
            TxnOp::Savepoint(n) => f.savepoints.push(n.clone()),
            TxnOp::Release(n) => {
                if let Some(i) = f.savepoints.iter().rposition(|s| s == n) {
                    f.savepoints.truncate(i);
                }
            }
            TxnOp::RollbackTo(n) => {
                if let Some(i) = f.savepoints.iter().rposition(|s| s == n) {
                    f.savepoints.truncate(i + 1);
                }
            }
            _ => {}
        }
    }

    /// What a statement about to run does to the transaction's savepoints and claim.
    /// `needs` calls it for a statement of its own; the mediator for each statement of a
    /// string it runs one by one.
    pub(in crate::frontend) fn follow(&self, plan: &Plan) {
        match plan {
            Plan::Txn(op) => {
                self.track_savepoint(op);
                if let TxnOp::RollbackTo(_) = op {
                    self.mark_reclaim();
                }
            }
            Plan::ResetsClaim => self.mark_reclaim(),
            _ => {}
        }
    }

    /// Whether a statement with this plan needs the mediator now.
    pub(in crate::frontend) fn needs(&self, plan: &Plan) -> bool {
        self.follow(plan);
        let (claimed, _) = self.claimed();
        match plan {
            Plan::Pass
            | Plan::Flagged { .. }
            | Plan::SelfCommitting
            | Plan::Txn(TxnOp::Begin | TxnOp::FinishPrepared)
            | Plan::ResetsClaim => false,
            // Every write: the mediator claims its transaction and counts it for the drain.
            Plan::Write | Plan::CopyFrom => true,
            // A claimed transaction's secondary may hold changes: however it ends, the
            // proxy ends the secondary's too, and it follows the claimed one's savepoints.
            Plan::Txn(
                TxnOp::Commit { .. }
                | TxnOp::Rollback
                | TxnOp::Prepare
                | TxnOp::Savepoint(_)
                | TxnOp::Release(_)
                | TxnOp::RollbackTo(_),
            ) => claimed,
            Plan::Ddl { .. } | Plan::Rejected { .. } | Plan::Multi(_) => true,
        }
    }

    /// Counts what passes untouched but is not mirrored in lockstep.
    fn count_passed(&self, plan: &Plan, sql: &str) {
        let (Some(mirror), reason) = (
            &self.mirror,
            match plan {
                Plan::Flagged { reason } => *reason,
                Plan::SelfCommitting => {
                    "procedure or DO block that commits by itself (captured through the change log)"
                }
                _ => return,
            },
        ) else {
            return;
        };
        let fingerprint = self
            .shared
            .classifier
            .classify(sql)
            .0
            .first()
            .map(|c| c.fingerprint)
            .unwrap_or(0);
        mirror
            .status
            .statement_mode(fingerprint, reason, false, sql);
    }

    /// Whether the message in `buf[start..end]` (body) must be handled by the mediator;
    /// keeps the plans of the statements and portals it names.
    pub(in crate::frontend) fn needs_mediation(
        &mut self,
        tag: u8,
        start: usize,
        end: usize,
    ) -> bool {
        let body = &self.buf[start..end];
        // Text in the session's client encoding; what is not (the server refuses it) runs
        // nothing, so it needs no mediation.
        let text = self.client_text;
        let cstr = |b: &[u8]| -> Option<(String, usize)> {
            let nul = b.iter().position(|&c| c == 0)?;
            Some((text.decode(&b[..nul]).ok()?.into_owned(), nul + 1))
        };
        match tag {
            b'Q' => {
                self.route.end_batch();
                match cstr(body) {
                    Some((sql, _)) => self.query_needs_mediation(&sql),
                    None => false,
                }
            }
            b'P' => {
                if let Some((name, n)) = cstr(body) {
                    if let Some((sql, _)) = cstr(&body[n..]) {
                        let classes = self.classify(&sql);
                        self.route.pin_on_session_lock(&sql, &classes);
                        self.route.carry.observe(&sql, &classes);
                        let shape = self.record_parse(&name, &sql, &classes);
                        if self
                            .conforming_strings
                            .load(std::sync::atomic::Ordering::Relaxed)
                        {
                            // The text as the server reads it: what `inspect` would classify.
                            self.scanned_parse = Some(classes);
                        }
                        // Only named statements are kept (to prepare them on new later).
                        let raw = if name.is_empty() {
                            bytes::Bytes::new()
                        } else {
                            bytes::Bytes::copy_from_slice(&self.buf[start - 5..end])
                        };
                        self.route.on_parse(&name, raw, shape);
                    }
                }
                false
            }
            b'D' => {
                if let (Some(&kind), Some((name, _))) = (body.first(), cstr(&body[1..])) {
                    self.route.on_describe(kind, &name);
                }
                false
            }
            b'S' => {
                // A batch of reads the cutover sends to new, handed over whole.
                let shapes = self.route.end_batch();
                if shapes.is_some_and(|shapes| {
                    self.route.reads_new(self.shared)
                        && !self.batch_open
                        && self.txn_status() == b'I'
                        && shapes
                            .iter()
                            .all(|fp| super::route::Route::shape_ok(self.shared, *fp))
                }) {
                    self.route.pending = true;
                    return true;
                }
                false
            }
            b'B' => {
                // Mediated from its Bind on: a portal bound before the mediator's own Sync
                // would die with the implicit transaction that Sync ends.
                let Some((portal, n)) = cstr(body) else {
                    return false;
                };
                let Some((statement, _)) = cstr(&body[n..]) else {
                    return false;
                };
                self.record_bind(&portal, &statement);
                self.route.on_bind(&portal, &statement);
                match self.portal_plans.get(&portal).cloned() {
                    Some(plan) => self.needs(&plan),
                    None => false,
                }
            }
            b'C' => {
                let body = body.to_vec();
                self.record_close(&body);
                if let (Some(&kind), Some((name, _))) = (body.first(), cstr(&body[1..])) {
                    self.route.on_close(kind, &name);
                }
                false
            }
            b'E' => match cstr(body) {
                Some((portal, _)) => {
                    self.route.on_execute(&portal);
                    let needed = match self.portal_plans.get(&portal).cloned() {
                        Some(plan) => self.needs(&plan),
                        None => false,
                    };
                    if !needed {
                        match self.portals.get(&portal).cloned() {
                            Some(classes) => self.passing(&classes),
                            // Bound in this very batch: not classified yet; assume it may write.
                            None => self.note_undrained_if_claimed(),
                        }
                    }
                    needed
                }
                None => false,
            },
            b'F' => {
                self.route.on_other();
                self.function_call_needs_mediation(start, end)
            }
            _ => {
                self.route.on_other();
                false
            }
        }
    }

    fn query_needs_mediation(&mut self, sql: &str) -> bool {
        let Some(mirror) = self.mirror.clone() else {
            return false;
        };
        if crate::classify::depends_on_conforming_strings(sql) {
            // How the server reads it depends on `standard_conforming_strings`, which a
            // request still in flight may change: the mediator decides once those are
            // answered.
            return true;
        }
        // Reads that call no function never need the proxy: the common case stays cheap.
        let classes = self.classify(sql);
        let pure = classes
            .iter()
            .all(|c| c.class == StatementClass::Read && !c.calls_functions);
        // A read the cutover sends to new: in autocommit only (the mediator checks again
        // once earlier requests are answered), and never one whose functions may write.
        if self.route.reads_new(self.shared)
            && !self.batch_open
            && super::route::routable(sql, &classes)
            && self.txn_status() == b'I'
            && (pure || *mirror.plan(sql) == Plan::Pass)
            && super::route::Route::shape_ok(self.shared, classes[0].fingerprint)
        {
            self.route.pending = true;
            return true;
        }
        if pure {
            return false;
        }
        let plan = mirror.plan(sql);
        let needed = self.needs(&plan);
        if !needed {
            self.count_passed(&plan, sql);
            self.passing(&classes);
        }
        needed
    }

    /// A Parse: the plan of the statement it names ("" for the unnamed one).
    /// Returns the shape's fingerprint if the statement is a read the cutover may send to
    /// new.
    /// `classes`: the caller's classification of `sql`, reused when the server reads the
    /// text as sent (the statement is classified once).
    pub(in crate::frontend) fn record_parse(
        &mut self,
        name: &str,
        sql: &str,
        classes: &Arc<[Classified]>,
    ) -> Option<u64> {
        let mirror = self.mirror.clone()?;
        let sql = self.as_server_reads(sql);
        let plan = mirror.plan(&sql);
        if matches!(*plan, Plan::Pass) {
            self.plans.remove(name);
            let classes = match &sql {
                Cow::Borrowed(_) => classes.clone(),
                Cow::Owned(rewritten) => self.classify(rewritten),
            };
            super::route::routable_shape(&sql, &classes)
        } else {
            self.count_passed(&plan, &sql);
            self.plans.insert(name.to_string(), plan);
            None
        }
    }

    /// A Bind: the portal runs its statement's plan.
    pub(in crate::frontend) fn record_bind(&mut self, portal: &str, statement: &str) {
        match self.plans.get(statement).cloned() {
            Some(plan) => {
                self.portal_plans.insert(portal.to_string(), plan);
            }
            None => {
                self.portal_plans.remove(portal);
            }
        }
    }

    /// A Close of a statement (`S`) or portal (`P`).
    pub(in crate::frontend) fn record_close(&mut self, body: &[u8]) {
        let (Some(&kind), Some(name)) = (body.first(), body.get(1..body.len().saturating_sub(1)))
        else {
            return;
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return;
        };
        if kind == b'S' {
            self.plans.remove(name);
        } else {
            self.portal_plans.remove(name);
        }
    }

    /// The plan an Execute of `portal` runs.
    pub(in crate::frontend) fn portal_plan(&self, portal: &str) -> Arc<Plan> {
        self.portal_plans
            .get(portal)
            .cloned()
            .unwrap_or_else(|| Arc::new(Plan::Pass))
    }

    /// A FunctionCall writing a large object: counted; refused when strict.
    fn function_call_needs_mediation(&self, start: usize, end: usize) -> bool {
        let Some(mirror) = &self.mirror else {
            return false;
        };
        let Some(oid) = self
            .buf
            .get(start..start + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            return false;
        };
        let _ = end;
        if !LARGE_OBJECT_WRITERS.contains(&oid) {
            return false;
        }
        if mirror.config.strict {
            return true;
        }
        mirror.status.statement_mode(
            u64::from(oid as u32),
            "large object (fastpath function call)",
            false,
            &format!("FunctionCall oid {oid}"),
        );
        false
    }
}

/// Whether a FunctionCall writes a large object (for the mediator's refusal).
pub(in crate::frontend) fn writes_large_object(call: &FunctionCall) -> bool {
    LARGE_OBJECT_WRITERS.contains(&call.oid)
}
