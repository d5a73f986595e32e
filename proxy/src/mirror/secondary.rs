//! A session's connection to the secondary: opened at the session's first mirrored write,
//! every call bounded by the configured timeout. A call that fails or times out leaves the
//! secondary transaction abandoned; the caller queues re-sync orders instead.

use super::control::connect;
use super::MirrorError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::dsn::Dsn;
use tokio_postgres::{Client, Statement};

pub struct Secondary {
    dsn: Dsn,
    timeout: Duration,
    options: String,
    client: Option<Arc<Client>>,
    statements: HashMap<String, Statement>,
    /// After a failed connect, don't try again before this instant: a secondary that is down
    /// must not cost every statement a connect timeout.
    retry_after: Option<Instant>,
    /// A COMMIT/ROLLBACK PREPARED sent without waiting; the next call waits for it.
    finishing: Option<tokio::task::JoinHandle<()>>,
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
            statements: HashMap::new(),
            retry_after: None,
            finishing: None,
        }
    }

    async fn client(&mut self) -> Result<Arc<Client>, MirrorError> {
        if let Some(h) = self.finishing.take() {
            let _ = tokio::time::timeout(self.timeout, h).await;
        }
        if let Some(c) = &self.client {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            self.client = None;
            self.statements.clear();
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
        self.statements.clear();
    }

    async fn bounded<T, F>(&mut self, what: &str, f: F) -> Result<T, MirrorError>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let state = e.code().map(|c| c.code().to_string());
                let msg = match e.as_db_error() {
                    Some(db) => db.message().to_string(),
                    None => e.to_string(),
                };
                Err(MirrorError::Secondary {
                    what: what.to_string(),
                    sqlstate: state,
                    message: msg,
                })
            }
            Err(_) => {
                self.abandon();
                Err(MirrorError::Secondary {
                    what: what.to_string(),
                    sqlstate: None,
                    message: format!("no answer within {:?}", self.timeout),
                })
            }
        }
    }

    /// Runs statements that return nothing (BEGIN, SAVEPOINT, DDL in statement mode...).
    pub async fn execute(&mut self, sql: &str) -> Result<(), MirrorError> {
        let c = self.client().await?;
        self.bounded(sql_head(sql), c.batch_execute(sql)).await
    }

    /// Applies one batch of row images (a JSON array) with a prepared statement.
    pub async fn apply(&mut self, sql: &str, images: &str) -> Result<u64, MirrorError> {
        let c = self.client().await?;
        let stmt = match self.statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = self.bounded("prepare", c.prepare(sql)).await?;
                self.statements.insert(sql.to_string(), s.clone());
                s
            }
        };
        self.bounded("apply", c.execute(&stmt, &[&images])).await
    }

    /// Finishes a prepared transaction without waiting (COMMIT/ROLLBACK PREPARED); a failure
    /// leaves it in doubt for recovery, which is logged.
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
        self.finishing = Some(tokio::spawn(async move {
            match tokio::time::timeout(timeout, c.batch_execute(&sql)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(gid, error = %e, "Finishing a prepared transaction on the new database failed; recovery will resolve it.");
                    metrics::counter!(crate::metrics::MIRROR_IN_DOUBT_TOTAL).increment(1);
                }
                Err(_) => {
                    tracing::warn!(gid, "Finishing a prepared transaction on the new database timed out; recovery will resolve it.");
                    metrics::counter!(crate::metrics::MIRROR_IN_DOUBT_TOTAL).increment(1);
                }
            }
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
