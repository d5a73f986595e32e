//! Follows the cutover flag: heartbeats into the control table and reads the state in the
//! same round trip, every `cutover.poll_ms` and at once on a NOTIFY. A proposal is
//! confirmed only once this instance is ready for it: for a phase that reads from new,
//! commits wait for new (read-your-writes) and every commit that did not wait has finished
//! there.

use super::Live;
use crate::config::CutoverConfig;
use crate::mirror::Mirror;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::connect::{open_driven_by_caller, ConnectError, SessionOptions, Target};
use switchyard_core::cutover::{ensure_schema, Phase, CHANNEL, HEARTBEAT_SQL};
use switchyard_core::db::Db;
use switchyard_core::dsn::Dsn;
use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, Client};

/// A heartbeat that takes longer than this counts as failed (a lock on the control table
/// must not hold the instance on a stale epoch past its lease without it knowing).
const STATEMENT_TIMEOUT_MS: u64 = 2000;

pub struct Follower {
    pub live: Arc<Live>,
    pub old: Dsn,
    pub new: Dsn,
    pub instance_id: String,
    pub config: CutoverConfig,
    pub connect_timeout: Duration,
    pub mirror: Option<Arc<Mirror>>,
    /// The dual writes of writes-new, set up before writes move to new.
    pub mirror_back: Option<Arc<Mirror>>,
    /// Its confirmed mismatches are reported in the heartbeat (a pre-flight check).
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
    /// When this instance confirmed the proposal it is ready for.
    pub ready_since: std::sync::Mutex<Option<Instant>>,
    /// A proposal this instance could not get ready for, or gave up on: not tried again.
    pub abandoned: std::sync::Mutex<Option<Proposal>>,
    /// The proposal this instance got ready for.
    pub prepared_for: std::sync::Mutex<Option<Proposal>>,
    /// The flag lives on new (the cutover is done).
    pub on_new: std::sync::atomic::AtomicBool,
}

/// What the control table said.
struct Seen {
    phase: Phase,
    epoch: i64,
    percent: u8,
    proposal: Option<Proposal>,
}

/// A proposal as the control table shows it; `at` (when it was made, as f64 bits) tells a
/// proposal from an earlier one of the same phase and epoch that was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    phase: Phase,
    epoch: i64,
    percent: u8,
    at: u64,
}

impl Follower {
    /// Reads the state once, before the instance takes clients, so it starts on the
    /// current epoch.
    pub async fn start(&self) -> Result<(), String> {
        self.live.follow();
        let (client, _wake) = match self.connect().await {
            Ok(c) => c,
            // Old may be gone for good once the cutover is done: new says so.
            Err(e) => match self.done_on_new().await {
                Some(_) => {
                    self.on_new.store(true, Ordering::Release);
                    self.connect().await?
                }
                None => return Err(e),
            },
        };
        ensure_schema(&client)
            .await
            .map_err(pg_failure("creating the cutover control tables"))?;
        let seen = self.heartbeat(&client).await?;
        self.live.heartbeat_ok();
        self.adopt(&seen);
        if self.follow_new_if_done(&seen).await {
            let (client, _wake) = self.connect().await?;
            ensure_schema(&client).await.map_err(|e| e.to_string())?;
            let seen = self.heartbeat(&client).await?;
            self.live.heartbeat_ok();
            self.adopt(&seen);
        }
        Ok(())
    }

    /// New's control table says the cutover is done (its epoch).
    async fn done_on_new(&self) -> Option<i64> {
        let c = crate::mirror::control::connect(
            Db::New,
            &self.new,
            "switchyard-cutover",
            None,
            self.connect_timeout,
        )
        .await
        .ok()?;
        switchyard_core::cutover::done::done_on(&c)
            .await
            .ok()
            .flatten()
    }

    /// Once old says done and new has the flag too, this instance follows new's control
    /// table from then on; true when it just switched.
    async fn follow_new_if_done(&self, seen: &Seen) -> bool {
        if seen.phase != Phase::Done || self.on_new.load(Ordering::Acquire) {
            return false;
        }
        if self.done_on_new().await.is_none() {
            return false;
        }
        tracing::info!("The cutover is done: following the flag on the new database from now on.");
        self.on_new.store(true, Ordering::Release);
        true
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut conn: Option<(Client, Arc<Notify>)> = None;
        let mut failing_since: Option<Instant> = None;
        loop {
            if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                conn = match self.connect().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.failed(&mut failing_since, &e);
                        None
                    }
                };
            }
            let mut again = false;
            if let Some((client, _)) = &conn {
                let on_new = self.on_new.load(Ordering::Acquire);
                match self.step(client).await {
                    Ok(_) if self.on_new.load(Ordering::Acquire) != on_new => {
                        // The flag moved to new: reconnect there at once.
                        conn = None;
                        continue;
                    }
                    Ok(confirmed_now) => {
                        if failing_since.take().is_some() {
                            tracing::info!("The cutover control table is reachable again.");
                        }
                        // A confirmation goes out at once, not at the next poll.
                        again = confirmed_now;
                    }
                    Err(e) => {
                        self.failed(&mut failing_since, &e);
                        conn = None;
                    }
                }
            }
            if again {
                continue;
            }
            let wake = conn.as_ref().map(|(_, w)| w.clone());
            tokio::select! {
                _ = async { match &wake { Some(w) => w.notified().await, None => std::future::pending().await } } => {}
                _ = tokio::time::sleep(self.config.poll()) => {}
                _ = crate::shutdown::stopped(&mut shutdown) => break,
            }
        }
        // Gone on purpose: flips stop waiting for this instance.
        if let Some((client, _)) = &conn {
            let _ = client
                .execute(
                    "DELETE FROM _switchyard.cutover_instances WHERE id = $1",
                    &[&self.instance_id],
                )
                .await;
        }
    }

    fn failed(&self, since: &mut Option<Instant>, e: &str) {
        if since.is_none() {
            tracing::warn!(error = %e, "Cannot reach the cutover control table on the old database; past the lease this instance stops taking writes.");
            *since = Some(Instant::now());
        }
    }

    /// Where the flag lives: old, or new once the cutover is done.
    fn control(&self) -> (Db, &Dsn) {
        if self.on_new.load(Ordering::Acquire) {
            (Db::New, &self.new)
        } else {
            (Db::Old, &self.old)
        }
    }

    async fn connect(&self) -> Result<(Client, Arc<Notify>), String> {
        let (db, control) = self.control();
        let options = format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}");
        let opts = SessionOptions {
            options: Some(&options),
            timeout: Some(self.connect_timeout),
        };
        // Driven here rather than in the background: the notifications wake the follower.
        let (client, mut connection) =
            open_driven_by_caller(db, Target::Dsn(control), "switchyard-cutover", opts)
                .await
                .map_err(|e| match e {
                    ConnectError::Connect { shown, source, .. } => {
                        format!("{shown}: {}", switchyard_core::cutover::pg_error(&source))
                    }
                    other => other.chain(),
                })?;
        let wake = Arc::new(Notify::new());
        let notify = wake.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => notify.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = ?e, "The cutover connection ended.");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(pg_failure("LISTEN on the control database"))?;
        Ok((client, wake))
    }

    fn backlog(&self) -> i64 {
        self.mirror
            .as_ref()
            .map(|m| m.status.retry_backlog.load(Ordering::Relaxed) as i64)
            .unwrap_or(0)
    }

    async fn heartbeat(&self, client: &Client) -> Result<Seen, String> {
        let live = &self.live;
        let row = client
            .query_one(
                HEARTBEAT_SQL,
                &[
                    &self.instance_id,
                    &live.epoch(),
                    &live.phase().as_str(),
                    &live.ready_epoch(),
                    &self.backlog(),
                    &self
                        .shadow
                        .as_ref()
                        .and_then(|s| s.stats.since_confirmed())
                        .map(|d| d.as_secs_f64()),
                ],
            )
            .await
            .map_err(pg_failure("cutover heartbeat"))?;
        let phase = |s: Option<String>| s.and_then(|s| s.parse::<Phase>().ok());
        let pct = |p: Option<i32>| p.unwrap_or(0).clamp(0, 100) as u8;
        let proposal = match (phase(row.get(3)), row.get::<_, Option<i64>>(4)) {
            (Some(p), Some(e)) => Some(Proposal {
                phase: p,
                epoch: e,
                percent: pct(row.get(5)),
                at: row.get::<_, Option<f64>>(6).unwrap_or(0.0).to_bits(),
            }),
            _ => None,
        };
        Ok(Seen {
            phase: phase(row.get(0)).ok_or("unknown phase in the control table")?,
            epoch: row.get(1),
            percent: pct(row.get(2)),
            proposal,
        })
    }

    /// One heartbeat and what follows from it; true when a proposal was just confirmed or
    /// taken back (the next heartbeat says so right away).
    async fn step(&self, client: &Client) -> Result<bool, String> {
        let seen = self.heartbeat(client).await?;
        self.live.heartbeat_ok();
        self.adopt(&seen);
        if self.follow_new_if_done(&seen).await {
            return Ok(true);
        }
        let ready = self.live.ready_epoch();
        match seen.proposal {
            Some(proposal) if proposal.epoch > seen.epoch => {
                let Proposal {
                    phase,
                    epoch,
                    percent,
                    ..
                } = proposal;
                let prepared_for = *self.prepared_for.lock().unwrap_or_else(|e| e.into_inner());
                if ready == Some(epoch) && prepared_for != Some(proposal) {
                    // Ready for an earlier proposal under the same epoch number: another
                    // phase needs getting ready for it.
                    self.live.set_ready(None);
                    if self.live.gate.is_closed() {
                        self.reopen(
                            "another proposal replaced the one this instance was ready for",
                        );
                    }
                    return Ok(true);
                }
                if ready == Some(epoch) {
                    if self.given_up(proposal) {
                        // The heartbeat just taken holds back the confirmation; the next
                        // one tells whether the flip committed meanwhile.
                        self.live.set_ready(None);
                        return Ok(true);
                    }
                    return Ok(false);
                }
                if ready.is_none() && self.live.gate.is_closed() {
                    // The confirmation was taken back and the flip did not commit with it.
                    self.reopen("the proposal was not committed in time");
                }
                if *self.abandoned.lock().unwrap_or_else(|e| e.into_inner()) == Some(proposal) {
                    return Ok(false);
                }
                if self.prepare(phase, percent).await {
                    tracing::info!(phase = %phase, epoch, "Ready for the proposed cutover epoch.");
                    self.live.set_ready(Some(epoch));
                    *self.ready_since.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now());
                    *self.prepared_for.lock().unwrap_or_else(|e| e.into_inner()) = Some(proposal);
                    return Ok(true);
                }
                *self.abandoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(proposal);
                Ok(false)
            }
            _ => {
                if ready.is_some() {
                    self.live.set_ready(None);
                    self.live
                        .set_ryw(self.live.phase().any_reads_new(self.live.percent()));
                }
                // No proposal: none can commit any more (a commit needs it).
                if self.live.gate.is_closed() {
                    self.reopen("the proposal was withdrawn");
                }
                Ok(false)
            }
        }
    }

    /// This instance confirmed a proposal that has not committed for longer than any
    /// coordinator waits: it takes the confirmation back rather than hold writes for good.
    fn given_up(&self, proposal: Proposal) -> bool {
        let since = *self.ready_since.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.config.flip_timeout() * 2 + Duration::from_secs(1);
        if since.is_some_and(|t| t.elapsed() > limit) {
            tracing::warn!(epoch = proposal.epoch, "A confirmed cutover proposal was neither committed nor withdrawn in time; taking the confirmation back.");
            *self.abandoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(proposal);
            return true;
        }
        false
    }

    pub(super) fn reopen(&self, why: &str) {
        tracing::info!(
            reason = why,
            "The write pause ends; transactions start on the same primary as before."
        );
        self.live.gate.open();
    }

    /// Runs the committed epoch if it is newer than this instance's.
    fn adopt(&self, seen: &Seen) {
        let live = &self.live;
        if seen.epoch != live.epoch() || seen.phase != live.phase() {
            let from = live.phase();
            // Before reads move: commits from here on wait for new.
            if seen.phase.any_reads_new(seen.percent) {
                live.set_ryw(true);
            }
            live.run_epoch(seen.phase, seen.epoch, seen.percent);
            if !seen.phase.any_reads_new(seen.percent) && live.ready_epoch().is_none() {
                live.set_ryw(false);
            }
            if seen.phase == Phase::Done {
                // Old is detached: neither direction's dual writes run any more.
                for m in [&self.mirror, &self.mirror_back].into_iter().flatten() {
                    m.detach();
                }
            } else if let Some(m) = self.mirror_for(seen.phase.direction()) {
                // Kept installed by the background loop from now on, even on an instance
                // that did not take part in the flip.
                m.activate();
            }
            // Sessions held by a write flip start on the primary of the new epoch.
            if let Some((lasted, held)) = live.gate.open() {
                tracing::info!(pause_ms = lasted.as_millis() as u64, held, primary = %seen.phase.direction().primary(), "The write pause ends; transactions start on the new primary.");
            }
            metrics::gauge!(crate::metrics::CUTOVER_EPOCH).set(seen.epoch as f64);
            tracing::info!(from = %from, to = %seen.phase, epoch = seen.epoch, percent = seen.percent, primary = %seen.phase.direction().primary(), "Running a new cutover epoch.");
        } else if seen.percent != live.percent() {
            live.run_epoch(seen.phase, seen.epoch, seen.percent);
        }
        if seen.epoch == live.ready_epoch().unwrap_or(-1) {
            live.set_ready(None);
        }
    }
}

/// Words a failed control-database statement as `what: SQLSTATE: message`.
fn pg_failure(what: &'static str) -> impl Fn(tokio_postgres::Error) -> String {
    move |e| format!("{what}: {}", switchyard_core::cutover::pg_error(&e))
}
