//! One worker: claim a chunk, copy it, check and repair it, record the outcome; again
//! until no chunk of the selected tables is left. A process runs `--jobs` of them, each
//! with its own connection to each database; claims, lease renewals and results go
//! through the process's control connection to new.
//!
//! `schedule` picks the next job from the chunk table; each kind of job has its own
//! file (`copy_job`, `scan_job`, `pass_job`, `verify_job`, `rebuild_job`); `Worker::settle`
//! is the bookkeeping they all end with.

mod copy_job;
mod pass_job;
mod rebuild_job;
mod scan_job;
mod schedule;
mod verify_job;

use crate::chunk_table::{self, Claim};
use crate::config::BackfillConfig;
use crate::connect::{connect, connect_copy, connect_writer, Db};
use crate::copy::{CopySql, Stages};
use crate::plan::TablePlan;
use crate::progress::Progress;
use crate::table_pass;
use crate::throttle::Throttle;
use anyhow::{Context, Result};
use schedule::Job;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::checksum::{RangeQueries, RowHash};
use switchyard_core::connect::Writer;
use switchyard_core::copy_conn::CopyConn;
use tokio_postgres::Client;

/// Failed chunks in a row after which a worker gives up (the databases are likely down).
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// A table as the workers need it.
pub struct TableWork {
    pub plan: TablePlan,
    pub queries: RangeQueries,
    pub copy: CopySql,
    /// Bulk mode verifies the table in one pass (`table_pass`): the key's position in
    /// the copied columns.
    pub pass_key: Option<usize>,
    /// Rows hash the same from either server's binary COPY: the direct path checks a
    /// chunk by hashing what it relays and reading the range back from new.
    pub stream_hash: bool,
}

/// What every worker of a process shares.
pub struct Shared {
    pub cfg: BackfillConfig,
    pub tables: HashMap<String, TableWork>,
    /// Quoted table names in load order.
    pub order: Vec<String>,
    /// Those of `order` that `--scan-old` can read in one scan (a single integer key,
    /// columns hashed the same from both servers: what the verification pass needs).
    pub scannable: Vec<String>,
    pub control: Arc<Client>,
    /// `host:pid`; each worker appends `/job`.
    pub worker_prefix: String,
    pub throttle: Arc<Throttle>,
    pub progress: Arc<Progress>,
    /// Held by the one worker of this process that rebuilds (bulk mode's second phase);
    /// between processes the rebuild's advisory lock decides.
    pub rebuild_guard: tokio::sync::Mutex<()>,
    /// What this process's workers rebuilt (for the summary).
    pub rebuilt: std::sync::Mutex<Vec<String>>,
    /// Old's write transactions a wait before a chunk check gave up on (see
    /// `chunk_check::wait_for_writers_in_flight`): not waited for again.
    pub stuck_writers: std::sync::Mutex<Vec<String>>,
    /// Woken when a worker of this process has finished a chunk, a pass, a verification
    /// or a rebuild, so the others waiting on that state go on at once instead of at
    /// their next poll (which stays, for the work of other processes).
    pub changed: tokio::sync::Notify,
}

impl Shared {
    /// Builds the per-table statements once.
    pub fn table_work(plans: Vec<TablePlan>, row_hash: RowHash) -> HashMap<String, TableWork> {
        plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| {
                let queries = RangeQueries::new(&plan.old, &plan.columns, row_hash);
                let copy = CopySql::new(&plan, i);
                let pass_key = table_pass::pass_key(&plan);
                let stream_hash = table_pass::stream_hashable_plan(&plan);
                (
                    plan.quoted.clone(),
                    TableWork {
                        plan,
                        queries,
                        copy,
                        pass_key,
                        stream_hash,
                    },
                )
            })
            .collect()
    }

    /// The work of `table`, which a claim named: the run plans every table it claims, so
    /// another is a chunk table changed under it.
    fn table(&self, table: &str) -> Result<&TableWork> {
        self.tables
            .get(table)
            .with_context(|| format!("claimed chunks of {table}, which this run does not plan"))
    }
}

/// A worker's own sessions.
struct Sessions {
    old: Client,
    /// Writes every row the worker puts into new.
    new: Writer,
    /// COPY reads: old's chunks, new's read-back.
    old_copy: CopyConn,
    new_copy: CopyConn,
    stages: Stages,
}

async fn open_sessions(cfg: &BackfillConfig) -> Result<Sessions> {
    let s = &cfg.backfill;
    let (old, new, old_copy, new_copy) = tokio::try_join!(
        connect(Db::Old, &cfg.old, s.source_statement_timeout_ms),
        connect_writer(&cfg.new, s.write_mode()),
        connect_copy(Db::Old, &cfg.old, s.source_statement_timeout_ms),
        connect_copy(Db::New, &cfg.new, 0),
    )?;
    // Every statement of a worker reads one key range. On new the table starts empty and
    // unanalysed, so the planner would scan the whole (growing) table for each chunk;
    // without sequential scans it walks the primary-key index.
    for (db, client) in [(Db::Old, &old), (Db::New, &*new)] {
        client
            .batch_execute("SET enable_seqscan = off")
            .await
            .with_context(|| format!("setting up a worker session on the {db} database"))?;
    }
    Ok(Sessions {
        old,
        new,
        old_copy,
        new_copy,
        stages: Stages::default(),
    })
}

/// One worker's state between jobs.
struct Worker<'a> {
    shared: &'a Shared,
    /// `host:pid/job`, recorded on every chunk it claims.
    name: String,
    /// Opened at the first job, and again after a failure that broke them.
    sessions: Option<Sessions>,
    /// Jobs failed in a row.
    failures: u32,
}

/// Where the chunks of a failed job go, so that they are retried.
enum Retry<'a> {
    /// Claimed to copy: recorded failed, claimable again while attempts are left.
    Copy(&'a [Claim]),
    /// Claimed to verify: back to copied (their rows are in).
    Verify(Vec<&'a Claim>),
}

impl Worker<'_> {
    /// The worker's sessions, opened when it has none.
    async fn sessions(&mut self) -> Result<&mut Sessions> {
        Ok(match &mut self.sessions {
            Some(s) => s,
            slot => slot.insert(open_sessions(&self.shared.cfg).await?),
        })
    }

    /// The bookkeeping every job ends with. A success resets the failures in a row and
    /// is returned. A failure is logged by `log`, its chunks handed back for a retry,
    /// sessions whose connection it broke dropped (reopened for the next job), and it
    /// is counted: after too many in a row the worker gives up, with the error.
    async fn settle<T>(
        &mut self,
        outcome: Result<T>,
        retry: Retry<'_>,
        log: impl FnOnce(&str),
    ) -> Result<Option<T>> {
        let e = match outcome {
            Ok(value) => {
                self.failures = 0;
                return Ok(Some(value));
            }
            Err(e) => e,
        };
        self.failures += 1;
        let text = format!("{e:#}");
        log(&text);
        let control = &self.shared.control;
        match retry {
            Retry::Copy(claims) => {
                for c in claims {
                    chunk_table::fail(control, c, &self.name, &text).await?;
                }
            }
            Retry::Verify(claims) => {
                for c in claims {
                    chunk_table::back_to_copied(control, c, &self.name, &text, false).await?;
                }
            }
        }
        match &mut self.sessions {
            // A failed chunk's transaction may have rolled back the staging tables' creation.
            Some(s)
                if !s.old.is_closed()
                    && !s.new.is_closed()
                    && !s.old_copy.is_broken()
                    && !s.new_copy.is_broken() =>
            {
                s.stages.forget()
            }
            _ => self.sessions = None,
        }
        if self.failures >= MAX_CONSECUTIVE_FAILURES {
            let failures = self.failures;
            return Err(e.context(format!("{failures} chunks failed in a row; giving up")));
        }
        Ok(None)
    }

    /// Counts a chunk's rows once its result is `recorded`; when it was not, another
    /// worker took the chunk over (`taken_over` says from what) and its result counts.
    fn counted(&self, recorded: bool, claim: &Claim, rows_old: i64, taken_over: &str) {
        if recorded {
            self.shared
                .progress
                .chunk_done(&claim.table_name, rows_old.max(0) as u64);
        } else {
            tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, "{taken_over}");
        }
    }
}

/// Runs one worker to the end of the work.
pub async fn run_worker(shared: Arc<Shared>, job: usize) -> Result<()> {
    let mut w = Worker {
        shared: &shared,
        name: format!("{}/{job}", shared.worker_prefix),
        sessions: None,
        failures: 0,
    };
    loop {
        shared.throttle.wait_unpaused().await;
        // Registered before the chunk table is read: a change made after that read wakes
        // this worker even if it happens before the worker starts to wait.
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match schedule::next_job(&shared, &w.name).await? {
            Job::Scan(claims) => scan_job::run(&mut w, claims).await?,
            Job::Copy(claim) => copy_job::run(&mut w, claim).await?,
            Job::Pass(chunks) => pass_job::run(&mut w, chunks).await?,
            Job::Verify(claim) => verify_job::run(&mut w, claim).await?,
            Job::Rebuild(tables) => {
                if !rebuild_job::run(&shared, &tables).await? {
                    wait_for_change(changed).await;
                    continue;
                }
            }
            Job::Wait => {
                wait_for_change(changed).await;
                continue;
            }
            Job::Finished => return Ok(()),
            #[cfg(feature = "failpoints")]
            Job::Recheck => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        shared.changed.notify_waiters();
    }
}

/// Waits until a worker of this process reports a change, or 300 ms (what other
/// processes do is only seen by polling).
async fn wait_for_change(changed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
    let _ = tokio::time::timeout(Duration::from_millis(300), changed).await;
}
