//! Running one statement on one database over a raw protocol connection, hashing its rows as
//! they arrive. The statement is replayed exactly as the client sent it (Parse with the
//! same parameter types, Bind with the same parameter values and formats), with results
//! asked for in text so the two sides print values the same way, inside
//! `BEGIN READ ONLY` on a connection started with statement_timeout, lock_timeout and
//! default_transaction_read_only, and rolled back.
//!
//! One write carries the whole exchange: a simple Query that opens the transaction and
//! replays the session's settings, the extended-protocol statement ending in Sync, and a
//! ROLLBACK. Three ReadyForQuery messages end it; an error in any part still reaches the
//! ROLLBACK, so the connection comes back clean.

use super::analyze::Shape;
use super::digest::{Column, Digest};
use super::error::SideError;
use crate::backend::{connect, ConnectOptions, Db};
use crate::protocol::backend::{BackendMessage, ErrorFields};
use crate::protocol::describe::{data_row, row_description};
use crate::protocol::frontend::{Bind, FrontendMessage, Target};
use crate::protocol::Frame;
use bytes::{Bytes, BytesMut};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use switchyard_core::dsn::Dsn;
use switchyard_core::tls_stream::write_flushed;
use switchyard_core::tls_stream::DbStream;

/// A started connection used only by the shadow executor.
pub struct Conn {
    stream: DbStream,
    buf: BytesMut,
}

/// One statement to replay.
pub struct Statement<'a> {
    pub sql: &'a str,
    pub param_types: &'a [i32],
    pub param_formats: &'a [i16],
    pub params: &'a [Option<Bytes>],
    pub settings: &'a [String],
}

/// Limits for one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub statement_timeout: Duration,
    pub max_message_size: usize,
    pub max_kept: usize,
    pub keep_values: bool,
}

/// The encoded exchange for `stmt`.
/// The timeouts are set once per connection (startup parameters, see `Pool::get`); each
/// exchange only opens the read-only transaction and replays the session's settings.
pub fn encode(stmt: &Statement<'_>) -> BytesMut {
    let mut setup = String::from("BEGIN READ ONLY");
    for s in stmt.settings {
        setup.push_str("; ");
        setup.push_str(s);
    }
    let mut out = BytesMut::with_capacity(setup.len() + stmt.sql.len() + 128);
    FrontendMessage::Query(setup).encode(&mut out);
    FrontendMessage::Parse {
        name: String::new(),
        query: stmt.sql.to_string(),
        param_types: stmt.param_types.to_vec(),
    }
    .encode(&mut out);
    FrontendMessage::Bind(Bind {
        portal: String::new(),
        statement: String::new(),
        param_formats: stmt.param_formats.to_vec(),
        params: stmt.params.to_vec(),
        // No result formats: every column in text.
        result_formats: Vec::new(),
    })
    .encode(&mut out);
    FrontendMessage::Describe {
        target: Target::Portal,
        name: String::new(),
    }
    .encode(&mut out);
    FrontendMessage::Execute {
        portal: String::new(),
        max_rows: 0,
    }
    .encode(&mut out);
    FrontendMessage::Sync.encode(&mut out);
    FrontendMessage::Query("ROLLBACK".into()).encode(&mut out);
    out
}

impl Conn {
    /// Runs `stmt`; the digest on success. The caller drops the connection after an error
    /// that `poisons_connection`.
    pub async fn run(
        &mut self,
        role: Db,
        stmt: &Statement<'_>,
        shape: &Shape,
        limits: Limits,
    ) -> Result<Digest, SideError> {
        let ms = limits.statement_timeout.as_millis() as u64;
        // The server-side timeout normally fires first; this one covers a server that stops
        // answering altogether.
        let deadline = limits.statement_timeout + Duration::from_millis(1000);
        match tokio::time::timeout(deadline, self.exchange(role, stmt, shape, limits)).await {
            Ok(r) => r,
            Err(_) => Err(SideError::Timeout { role, ms }),
        }
    }

    async fn exchange(
        &mut self,
        role: Db,
        stmt: &Statement<'_>,
        shape: &Shape,
        limits: Limits,
    ) -> Result<Digest, SideError> {
        let out = encode(stmt);
        write_flushed(&mut self.stream, &out)
            .await
            .map_err(|source| SideError::Io { role, source })?;
        let mut ready = 0;
        let mut digest: Option<Digest> = None;
        let mut failure: Option<ErrorFields> = None;
        while ready < 3 {
            let frame = self.next_frame(role, limits.max_message_size).await?;
            let body = frame.body();
            match frame.tag() {
                b'Z' => ready += 1,
                b'T' if ready == 1 => {
                    let fields = row_description(&body)
                        .map_err(|source| SideError::Protocol { role, source })?;
                    let columns = fields
                        .into_iter()
                        .map(|f| Column {
                            name: f.name,
                            type_oid: f.type_oid,
                            source: (f.table_oid != 0 && f.column > 0)
                                .then_some((f.table_oid, f.column)),
                        })
                        .collect();
                    digest = Some(Digest::new(
                        columns,
                        shape,
                        limits.max_kept,
                        limits.keep_values,
                    ));
                }
                b'D' if ready == 1 => {
                    let values =
                        data_row(&body).map_err(|source| SideError::Protocol { role, source })?;
                    if let Some(d) = digest.as_mut() {
                        d.row(&values);
                    }
                }
                b'E' => {
                    if let BackendMessage::ErrorResponse(f) = BackendMessage::decode(&frame)
                        .map_err(|source| SideError::Protocol { role, source })?
                    {
                        // The first error explains the rest (25P02 after it is only noise).
                        failure.get_or_insert(f);
                    }
                }
                _ => {}
            }
        }
        if let Some(f) = failure {
            return Err(SideError::Server {
                role,
                sqlstate: f.code().to_string(),
                message: f.message().to_string(),
            });
        }
        Ok(digest.unwrap_or_else(|| Digest::new(Vec::new(), shape, 0, false)))
    }

    async fn next_frame(&mut self, role: Db, max: usize) -> Result<Frame, SideError> {
        use crate::backend::read::{next_frame, ReadError};
        next_frame(&mut self.stream, &mut self.buf, max)
            .await
            .map_err(|e| match e {
                ReadError::Protocol(source) => SideError::Protocol { role, source },
                ReadError::Io(source) => SideError::Io { role, source },
                ReadError::Closed => SideError::Closed { role },
            })
    }
}

/// Idle shadow connections to one database. A failed connect marks the database down for
/// a moment, so a dead secondary costs one refused connect per second, not one per sample.
pub struct Pool {
    role: Db,
    dsn: Dsn,
    opts: ConnectOptions,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
    statement_timeout: Duration,
    down_until: Mutex<Option<Instant>>,
}

const DOWN_FOR: Duration = Duration::from_secs(1);

impl Pool {
    pub fn new(
        role: Db,
        dsn: Dsn,
        opts: ConnectOptions,
        max_idle: usize,
        statement_timeout: Duration,
    ) -> Self {
        Pool {
            role,
            dsn,
            opts,
            idle: Mutex::new(Vec::new()),
            max_idle,
            statement_timeout,
            down_until: Mutex::new(None),
        }
    }

    pub fn role(&self) -> Db {
        self.role
    }

    /// An idle connection (`true`: it may have gone stale while idle) or a new one.
    pub async fn get(&self) -> Result<(Conn, bool), SideError> {
        if let Some(c) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok((c, true));
        }
        self.connect().await.map(|c| (c, false))
    }

    /// A new connection, unless the database failed moments ago.
    pub async fn connect(&self) -> Result<Conn, SideError> {
        let down = self
            .down_until
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|t| Instant::now() < t);
        if down {
            return Err(SideError::Unavailable { role: self.role });
        }
        // Server-side limits for every statement on this connection: the session settings a
        // client replays cannot change them (neither is tracked).
        let ms = self.statement_timeout.as_millis().to_string();
        let params = [
            (
                "application_name".to_string(),
                "switchyard-shadow".to_string(),
            ),
            ("statement_timeout".to_string(), ms.clone()),
            ("lock_timeout".to_string(), ms),
            (
                "default_transaction_read_only".to_string(),
                "on".to_string(),
            ),
        ];
        match connect(self.role, &self.dsn, &params, &self.opts).await {
            Ok(b) => Ok(Conn {
                stream: b.stream,
                buf: b.read_buf,
            }),
            Err(e) => {
                if let Ok(mut d) = self.down_until.lock() {
                    *d = Some(Instant::now() + DOWN_FOR);
                }
                Err(e.into())
            }
        }
    }

    pub fn put(&self, c: Conn) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < self.max_idle {
                v.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_write_three_requests() {
        let params = [Some(Bytes::from_static(b"42")), None];
        let settings = ["SET search_path = app".to_string()];
        let stmt = Statement {
            sql: "SELECT * FROM t WHERE id = $1 OR $2 IS NULL",
            param_types: &[23, 0],
            param_formats: &[0],
            params: &params,
            settings: &settings,
        };
        let mut out = encode(&stmt);
        let mut tags = Vec::new();
        while let Some(f) = Frame::parse(&mut out, 1 << 20).expect("valid") {
            if let Ok(FrontendMessage::Query(q)) = FrontendMessage::decode(&f) {
                tags.push(q);
            } else {
                tags.push((f.tag() as char).to_string());
            }
        }
        assert_eq!(
            tags,
            vec![
                "BEGIN READ ONLY; SET search_path = app".to_string(),
                "P".into(),
                "B".into(),
                "D".into(),
                "E".into(),
                "S".into(),
                "ROLLBACK".into()
            ]
        );
    }
}
