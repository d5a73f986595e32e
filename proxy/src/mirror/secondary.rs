//! A session's connection to the secondary: opened at the session's first mirrored write.
//! Changes are queued, not awaited: each runs in order behind the previous one while the
//! client's next statement already goes to the primary, and the session waits for all of
//! them (`sync`) only before PREPARE TRANSACTION. Every operation is bounded by the
//! configured timeout; the first failure makes the rest of the queue fail without running,
//! and the caller then queues re-sync orders instead.

use super::control::connect;
use super::MirrorError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::dsn::Dsn;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};

type Statements = Arc<Mutex<HashMap<String, Statement>>>;

pub struct Secondary {
    dsn: Dsn,
    timeout: Duration,
    options: String,
    client: Option<Arc<Client>>,
    statements: Statements,
    /// After a failed connect, don't try again before this instant: a secondary that is down
    /// must not cost every statement a connect timeout.
    retry_after: Option<Instant>,
    /// The last queued operation; it waits for the one before it.
    pending: Option<JoinHandle<Result<(), MirrorError>>>,
    /// Operations queued since the last `sync`.
    queued: usize,
}

/// Queued operations (each up to `batch_rows` row images) before the session waits for the
/// secondary to catch up: bounds memory when the primary streams faster than the
/// secondary applies.
const MAX_QUEUED: usize = 8;

fn secondary_error(what: &str, e: tokio_postgres::Error) -> MirrorError {
    let sqlstate = e.code().map(|c| c.code().to_string());
    let message = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    MirrorError::Secondary {
        what: what.to_string(),
        sqlstate,
        message,
    }
}

impl Secondary {
    pub fn new(dsn: Dsn, statement_timeout: Duration, lock_timeout: Duration) -> Self {
        let options = format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout=0",
            statement_timeout.as_millis(),
            lock_timeout.as_millis()
        );
        Secondary {
            dsn,
            // Client side, a little above the server's own bound, for a secondary that
            // stopped answering altogether.
            timeout: statement_timeout + Duration::from_millis(500),
            options,
            client: None,
            statements: Arc::default(),
            retry_after: None,
            pending: None,
            queued: 0,
        }
    }

    async fn client(&mut self) -> Result<Arc<Client>, MirrorError> {
        if let Some(c) = &self.client {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            self.abandon();
        }
        if let Some(t) = self.retry_after {
            if Instant::now() < t {
                return Err(MirrorError::Connect(
                    "the new database was unreachable moments ago; not retrying yet".into(),
                ));
            }
        }
        match connect(
            &self.dsn,
            "switchyard-mirror",
            Some(&self.options),
            self.timeout,
        )
        .await
        {
            Ok(c) => {
                self.retry_after = None;
                let c = Arc::new(c);
                self.client = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.retry_after = Some(Instant::now() + Duration::from_secs(1));
                Err(e)
            }
        }
    }

    /// Drops the connection (its open transaction dies with it).
    pub fn abandon(&mut self) {
        self.client = None;
        self.statements = Arc::default();
        if let Some(h) = self.pending.take() {
            h.abort();
        }
    }

    /// Queues `op` behind everything queued before it.
    fn chain<F, Fut>(&mut self, client: Arc<Client>, what: &'static str, op: F)
    where
        F: FnOnce(Arc<Client>, Statements) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        let prev = self.pending.take();
        let timeout = self.timeout;
        let statements = self.statements.clone();
        self.queued += 1;
        self.pending = Some(tokio::spawn(async move {
            if let Some(p) = prev {
                match p.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => {
                        return Err(MirrorError::Secondary {
                            what: what.into(),
                            sqlstate: None,
                            message: format!("an earlier operation was lost: {e}"),
                        })
                    }
                }
            }
            match tokio::time::timeout(timeout, op(client, statements)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(secondary_error(what, e)),
                Err(_) => Err(MirrorError::Secondary {
                    what: what.into(),
                    sqlstate: None,
                    message: format!("no answer within {timeout:?}"),
                }),
            }
        }));
    }

    /// Queues statements that return nothing (BEGIN, SAVEPOINT, DDL in statement mode...).
    /// Fails at once only when there is no connection.
    pub async fn queue_execute(
        &mut self,
        what: &'static str,
        sql: String,
    ) -> Result<(), MirrorError> {
        let c = self.client().await?;
        self.chain(
            c,
            what,
            move |c, _| async move { c.batch_execute(&sql).await },
        );
        Ok(())
    }

    /// Queues one batch of row images (a JSON array) for a prepared statement.
    pub async fn queue_apply(&mut self, sql: &str, images: String) -> Result<(), MirrorError> {
        if self.queued >= MAX_QUEUED {
            self.sync().await?;
        }
        let c = self.client().await?;
        let sql = sql.to_string();
        self.chain(c, "apply", move |c, statements| async move {
            let stmt = {
                let mut cache = statements.lock().await;
                match cache.get(&sql) {
                    Some(s) => s.clone(),
                    None => {
                        let s = c.prepare(&sql).await?;
                        cache.insert(sql.clone(), s.clone());
                        s
                    }
                }
            };
            c.execute(&stmt, &[&images]).await.map(|_| ())
        });
        Ok(())
    }

    /// Queues a COPY ... FROM STDIN fed with `data` (the client's CopyData payloads).
    pub async fn queue_copy(
        &mut self,
        sql: String,
        data: Vec<bytes::Bytes>,
    ) -> Result<(), MirrorError> {
        use futures_util::SinkExt;
        let c = self.client().await?;
        self.chain(c, "COPY", move |c, _| async move {
            let sink = c.copy_in::<_, bytes::Bytes>(sql.as_str()).await?;
            futures_util::pin_mut!(sink);
            for chunk in data {
                sink.send(chunk).await?;
            }
            sink.as_mut().finish().await.map(|_| ())
        });
        Ok(())
    }

    /// Waits for everything queued; the first failure, if any. A failure without a
    /// SQLSTATE (timeout, lost connection) also drops the connection.
    pub async fn sync(&mut self) -> Result<(), MirrorError> {
        self.queued = 0;
        let Some(h) = self.pending.take() else {
            return Ok(());
        };
        let r = match h.await {
            Ok(r) => r,
            Err(e) => Err(MirrorError::Secondary {
                what: "apply".into(),
                sqlstate: None,
                message: format!("lost: {e}"),
            }),
        };
        if let Err(MirrorError::Secondary { sqlstate: None, .. }) = &r {
            self.abandon();
        }
        r
    }

    /// Waits for the queue, then runs `sql` and waits for it too.
    pub async fn execute(&mut self, sql: &str) -> Result<(), MirrorError> {
        self.sync().await?;
        let c = self.client().await?;
        match tokio::time::timeout(self.timeout, c.batch_execute(sql)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(secondary_error(sql_head(sql), e)),
            Err(_) => {
                self.abandon();
                Err(MirrorError::Secondary {
                    what: sql_head(sql).to_string(),
                    sqlstate: None,
                    message: format!("no answer within {:?}", self.timeout),
                })
            }
        }
    }

    /// Finishes a prepared transaction (COMMIT/ROLLBACK PREPARED) without waiting; later
    /// operations queue behind it. A failure leaves it in doubt for recovery, which is
    /// logged, and does not fail what comes after.
    pub fn finish_prepared(&mut self, gid: &str, commit: bool) {
        let Some(c) = self.client.clone() else {
            return;
        };
        let sql = format!(
            "{} PREPARED '{}'",
            if commit { "COMMIT" } else { "ROLLBACK" },
            gid.replace('\'', "''")
        );
        let timeout = self.timeout;
        let gid = gid.to_string();
        let prev = self.pending.take();
        self.pending = Some(tokio::spawn(async move {
            if let Some(p) = prev {
                let _ = p.await;
            }
            let outcome = tokio::time::timeout(timeout, c.batch_execute(&sql)).await;
            if !matches!(outcome, Ok(Ok(()))) {
                tracing::warn!(gid, ?outcome, "Finishing a prepared transaction on the new database failed; recovery will resolve it.");
                metrics::counter!(crate::metrics::MIRROR_IN_DOUBT_TOTAL).increment(1);
            }
            Ok(())
        }));
    }
}

fn sql_head(sql: &str) -> &str {
    let end = sql
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || *c == ';')
        .map(|(i, _)| i)
        .unwrap_or(sql.len());
    &sql[..end]
}
