//! A session's connection to the secondary: opened at the session's first lockstep commit,
//! as an applier (`session_replication_role = replica`, `switchyard.apply = on`: the
//! secondary's own triggers and foreign-key actions stay quiet, their effects arrive
//! captured).
//!
//! Operations are pipelined: a task owned by the connection sends each one as soon as it is
//! queued, in order, without waiting for the answer to the one before (BEGIN, the applies
//! and PREPARE go out back to back), and `sync` waits for all of them. At most
//! `MAX_IN_FLIGHT` wait for an answer, which bounds memory when the primary streams faster
//! than the secondary applies. Every statement is bounded by the configured server-side
//! timeouts; `sync` by a client-side one a little above them.

use super::control::connect;
use super::MirrorError;
use futures_util::stream::{FuturesOrdered, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::db::Db;
use switchyard_core::dsn::Dsn;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};

/// Operations sent and not yet answered.
const MAX_IN_FLIGHT: usize = 8;

enum Op {
    /// Statements without parameters (BEGIN, DDL, PREPARE TRANSACTION, ROLLBACK).
    Batch { what: &'static str, sql: String },
    /// One prepared statement with one text parameter (a JSON array of images or keys).
    Apply { sql: Arc<str>, rows: String },
    /// COMMIT/ROLLBACK PREPARED: a failure leaves it in doubt for recovery, logged only.
    Finish { sql: String, gid: String },
    /// Answers once everything queued before it was answered: the first error, if any.
    Sync(oneshot::Sender<Result<(), MirrorError>>),
    /// One value (first column of the first row, as text) handed back through `reply`.
    Value {
        what: &'static str,
        sql: String,
        reply: oneshot::Sender<Option<String>>,
    },
    /// COMMIT of a plain (not prepared) transaction, whose outcome goes to `done` rather
    /// than to the next `sync` (the session may be on its next transaction by then).
    Commit { done: CommitDone },
}

/// Told whether the secondary's COMMIT succeeded.
pub type CommitDone = Box<dyn FnOnce(Result<(), MirrorError>) + Send>;

type Pending = Pin<Box<dyn Future<Output = Result<(), MirrorError>> + Send>>;

pub struct Secondary {
    dsn: Dsn,
    side: Db,
    timeout: Duration,
    options: String,
    conn: Option<Conn>,
    /// After a failed connect, don't try again before this instant: a secondary that is down
    /// must not cost every commit a connect timeout.
    retry_after: Option<Instant>,
}

struct Conn {
    ops: mpsc::Sender<Op>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn secondary_error(side: Db, what: &str, e: tokio_postgres::Error) -> MirrorError {
    let sqlstate = e.code().map(|c| c.code().to_string());
    let message = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    MirrorError::Secondary {
        side,
        what: what.to_string(),
        sqlstate,
        message,
    }
}

fn lost(side: Db, what: &str) -> MirrorError {
    MirrorError::Secondary {
        side,
        what: what.to_string(),
        sqlstate: None,
        message: format!("the connection to the {side} database was lost"),
    }
}

impl Secondary {
    pub fn new(dsn: Dsn, side: Db, statement_timeout: Duration, lock_timeout: Duration) -> Self {
        let options = format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout=0 {}",
            statement_timeout.as_millis(),
            lock_timeout.as_millis(),
            switchyard_core::capture::WRITER_OPTIONS
        );
        Secondary {
            dsn,
            side,
            // Client side, a little above the server's own bound, for a secondary that
            // stopped answering altogether.
            timeout: statement_timeout + Duration::from_millis(500),
            options,
            conn: None,
            retry_after: None,
        }
    }

    async fn ops(&mut self) -> Result<mpsc::Sender<Op>, MirrorError> {
        if let Some(c) = &self.conn {
            if !c.task.is_finished() {
                return Ok(c.ops.clone());
            }
            self.conn = None;
        }
        if let Some(t) = self.retry_after {
            if Instant::now() < t {
                return Err(MirrorError::Connect(format!(
                    "the {} database was unreachable moments ago; not retrying yet",
                    self.side
                )));
            }
        }
        match connect(
            self.side,
            &self.dsn,
            "switchyard-mirror",
            Some(&self.options),
            self.timeout,
        )
        .await
        {
            Ok(client) => {
                self.retry_after = None;
                let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
                let task = tokio::spawn(pipeline(Arc::new(client), rx, self.side));
                self.conn = Some(Conn {
                    ops: tx.clone(),
                    task,
                });
                Ok(tx)
            }
            Err(e) => {
                self.retry_after = Some(Instant::now() + Duration::from_secs(1));
                Err(e)
            }
        }
    }

    async fn queue(&mut self, what: &'static str, op: Op) -> Result<(), MirrorError> {
        let ops = self.ops().await?;
        match tokio::time::timeout(self.timeout, ops.send(op)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.abandon();
                Err(lost(self.side, what))
            }
            Err(_) => {
                self.abandon();
                Err(MirrorError::Secondary {
                    side: self.side,
                    what: what.into(),
                    sqlstate: None,
                    message: format!("no answer within {:?}", self.timeout),
                })
            }
        }
    }

    /// Drops the connection (its open transaction dies with it).
    pub fn abandon(&mut self) {
        self.conn = None;
    }

    /// Queues statements that return nothing. Fails at once only when there is no
    /// connection.
    pub async fn queue_batch(
        &mut self,
        what: &'static str,
        sql: String,
    ) -> Result<(), MirrorError> {
        self.queue(what, Op::Batch { what, sql }).await
    }

    /// Queues one prepared statement with a JSON array as its parameter.
    pub async fn queue_apply(&mut self, sql: Arc<str>, rows: String) -> Result<(), MirrorError> {
        self.queue("apply", Op::Apply { sql, rows }).await
    }

    /// Waits for everything queued; the first failure, if any. A failure without a SQLSTATE
    /// (timeout, lost connection) also drops the connection.
    pub async fn sync(&mut self) -> Result<(), MirrorError> {
        let r = self.waiter().await;
        self.synced(&r);
        r
    }

    /// What `sync` waits for, borrowing nothing: it can run beside work on the primary.
    /// Its answer goes through `synced` afterwards.
    pub fn waiter(&self) -> impl std::future::Future<Output = Result<(), MirrorError>> + 'static {
        let ops = self.conn.as_ref().map(|c| c.ops.clone());
        let (side, timeout) = (self.side, self.timeout);
        async move {
            let Some(ops) = ops else {
                return Ok(());
            };
            let (tx, rx) = oneshot::channel();
            tokio::time::timeout(timeout, async {
                ops.send(Op::Sync(tx))
                    .await
                    .map_err(|_| lost(side, "sync"))?;
                rx.await.map_err(|_| lost(side, "sync"))?
            })
            .await
            .unwrap_or_else(|_| {
                Err(MirrorError::Secondary {
                    side,
                    what: "apply".into(),
                    sqlstate: None,
                    message: format!("no answer within {timeout:?}"),
                })
            })
        }
    }

    /// A failure without a SQLSTATE (timeout, lost connection) drops the connection.
    pub fn synced(&mut self, r: &Result<(), MirrorError>) {
        if let Err(MirrorError::Secondary { sqlstate: None, .. }) = r {
            self.abandon();
        }
    }

    /// Rolls the open transaction back; a secondary that does not answer loses its
    /// connection (the transaction dies with it).
    pub async fn rollback(&mut self) {
        if self.execute("ROLLBACK", "ROLLBACK").await.is_err() {
            self.abandon();
        }
    }

    /// Queues `sql` and waits for it and everything before it.
    pub async fn execute(&mut self, what: &'static str, sql: &str) -> Result<(), MirrorError> {
        self.queue_batch(what, sql.to_string()).await?;
        self.sync().await
    }

    /// Queues a query for one value; its answer comes through the receiver (None if it
    /// failed: the failure itself is what the next `sync` reports).
    pub async fn queue_value(
        &mut self,
        what: &'static str,
        sql: String,
    ) -> Result<oneshot::Receiver<Option<String>>, MirrorError> {
        let (reply, rx) = oneshot::channel();
        self.queue(what, Op::Value { what, sql, reply }).await?;
        Ok(rx)
    }

    /// COMMIT without waiting; `done` learns how it went.
    pub async fn commit(&mut self, done: CommitDone) {
        let side = self.side;
        // `queue` drops the operation when it cannot send it: `done` is then told here.
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(done)));
        let inner = shared.clone();
        let op = Op::Commit {
            done: Box::new(move |r| {
                if let Some(d) = inner.lock().ok().and_then(|mut d| d.take()) {
                    d(r)
                }
            }),
        };
        if self.queue("commit", op).await.is_err() {
            if let Some(d) = shared.lock().ok().and_then(|mut d| d.take()) {
                d(Err(lost(side, "commit")));
            }
        }
    }

    /// Finishes a prepared transaction (COMMIT/ROLLBACK PREPARED) without waiting; later
    /// operations queue behind it. A failure leaves it in doubt for recovery, which is
    /// logged, and does not fail what comes after.
    pub async fn finish_prepared(&mut self, gid: &str, commit: bool) {
        let sql = format!(
            "{} PREPARED '{}'",
            if commit { "COMMIT" } else { "ROLLBACK" },
            gid.replace('\'', "''")
        );
        let op = Op::Finish {
            sql,
            gid: gid.to_string(),
        };
        if self.queue("finish", op).await.is_err() {
            tracing::warn!(gid, side = %self.side, "Finishing a prepared transaction on the secondary failed; recovery will resolve it.");
            metrics::counter!(crate::metrics::MIRROR_IN_DOUBT_TOTAL).increment(1);
        }
    }
}

/// Sends each operation as it arrives and collects the answers in order.
async fn pipeline(client: Arc<Client>, mut ops: mpsc::Receiver<Op>, side: Db) {
    let mut statements: HashMap<Arc<str>, Statement> = HashMap::new();
    let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut first_error: Option<MirrorError> = None;
    loop {
        tokio::select! {
            op = ops.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(op) = op else { return };
                let fut: Pending = match op {
                    Op::Sync(reply) => {
                        while let Some(r) = in_flight.next().await {
                            note(&mut first_error, r);
                        }
                        let _ = reply.send(first_error.take().map_or(Ok(()), Err));
                        continue;
                    }
                    Op::Batch { what, sql } => {
                        let c = client.clone();
                        Box::pin(async move { c.batch_execute(&sql).await.map_err(|e| secondary_error(side, what, e)) })
                    }
                    Op::Finish { sql, gid } => {
                        let c = client.clone();
                        Box::pin(async move {
                            if let Err(e) = c.batch_execute(&sql).await {
                                tracing::warn!(gid, %side, error = %e, "Finishing a prepared transaction on the secondary failed; recovery will resolve it.");
                                metrics::counter!(crate::metrics::MIRROR_IN_DOUBT_TOTAL).increment(1);
                            }
                            Ok(())
                        })
                    }
                    Op::Value { what, sql, reply } => {
                        let c = client.clone();
                        Box::pin(async move {
                            match c.simple_query(&sql).await {
                                Ok(messages) => {
                                    let value = messages.iter().find_map(|m| match m {
                                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                                        _ => None,
                                    });
                                    let _ = reply.send(value);
                                    Ok(())
                                }
                                Err(e) => {
                                    let _ = reply.send(None);
                                    Err(secondary_error(side, what, e))
                                }
                            }
                        })
                    }
                    Op::Commit { done } => {
                        let c = client.clone();
                        Box::pin(async move {
                            done(c.batch_execute("COMMIT").await.map_err(|e| secondary_error(side, "COMMIT", e)));
                            Ok(())
                        })
                    }
                    Op::Apply { sql, rows } => {
                        // Preparing waits for its answer before anything later is sent, so
                        // the order on the wire stays the order of the queue.
                        let statement = match statements.get(&sql) {
                            Some(s) => Ok(s.clone()),
                            None => match client.prepare(&sql).await {
                                Ok(s) => {
                                    if statements.len() >= 256 {
                                        statements.clear();
                                    }
                                    statements.insert(sql.clone(), s.clone());
                                    Ok(s)
                                }
                                Err(e) => Err(secondary_error(side, "prepare", e)),
                            },
                        };
                        let c = client.clone();
                        Box::pin(async move {
                            let s = statement?;
                            c.execute(&s, &[&rows]).await.map(|_| ()).map_err(|e| secondary_error(side, "apply", e))
                        })
                    }
                };
                // The first poll sends the request (tokio-postgres sends when a request
                // future is first polled): do it now, in queue order.
                let mut fut = fut;
                match futures_util::poll!(&mut fut) {
                    std::task::Poll::Ready(r) => note(&mut first_error, r),
                    std::task::Poll::Pending => in_flight.push_back(fut),
                }
            }
            Some(r) = in_flight.next(), if !in_flight.is_empty() => note(&mut first_error, r),
        }
    }
}

fn note(first: &mut Option<MirrorError>, r: Result<(), MirrorError>) {
    if let Err(e) = r {
        if first.is_none() {
            *first = Some(e);
        }
    }
}
