//! Opening a connection to a database and running its startup: TCP, StartupMessage,
//! authentication, then ParameterStatus and BackendKeyData up to the first ReadyForQuery.

use super::auth::{respond, AuthState};
use super::{BackendError, Role};
use crate::protocol::backend::BackendMessage;
use crate::protocol::startup::StartupRequest;
use crate::protocol::Frame;
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use switchyard_core::dsn::Dsn;
use switchyard_core::tls::{settings_for, TlsSettings};
use switchyard_core::tls_stream::write_flushed;
use switchyard_core::tls_stream::{negotiate, Binding, DbStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Limits for one connection attempt.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub timeout: Duration,
    pub max_message_size: usize,
}

/// A started, authenticated connection, ready for queries.
pub struct BackendConn {
    pub role: Role,
    pub stream: DbStream,
    /// Bytes read past the first ReadyForQuery (normally none).
    pub read_buf: BytesMut,
    /// ParameterStatus values the server reported at startup, in order.
    pub params: Vec<(String, String)>,
    pub pid: i32,
    pub key: Bytes,
    /// Where cancel requests for this backend go.
    pub cancel_to: CancelAddr,
}

/// A backend's address for cancel requests, with the TLS its connection used (the cancel
/// key is a secret: it travels as the session did).
#[derive(Debug, Clone)]
pub struct CancelAddr {
    /// `host:port`.
    pub addr: String,
    pub host: String,
    pub tls: std::sync::Arc<TlsSettings>,
}

/// Connects to `dsn` as its user, passing `startup_params` (e.g. application_name) along.
pub async fn connect(
    role: Role,
    dsn: &Dsn,
    startup_params: &[(String, String)],
    opts: &ConnectOptions,
) -> Result<BackendConn, BackendError> {
    let addr = dsn.address();
    match tokio::time::timeout(opts.timeout, connect_inner(role, dsn, startup_params, opts)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout { role, addr }),
    }
}

async fn connect_inner(
    role: Role,
    dsn: &Dsn,
    startup_params: &[(String, String)],
    opts: &ConnectOptions,
) -> Result<BackendConn, BackendError> {
    let addr = dsn.address();
    let tls = settings_for(dsn).map_err(|e| BackendError::Tls {
        role,
        detail: e.to_string(),
    })?;
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|source| BackendError::Connect {
            role,
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut stream = negotiate(tcp, &tls, &dsn.host)
        .await
        .map_err(|e| BackendError::Tls {
            role,
            detail: format!("{dsn}: {e}"),
        })?;
    let binding = Binding::of(&stream, &tls);
    let io = |source| BackendError::Io { role, source };

    let mut params = vec![
        ("user".to_string(), dsn.user.clone()),
        ("database".to_string(), dsn.dbname.clone()),
    ];
    params.extend(
        startup_params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .cloned(),
    );
    let mut out = BytesMut::new();
    StartupRequest::Startup {
        major: 3,
        minor: 0,
        params,
    }
    .encode(&mut out);
    write_flushed(&mut stream, &out).await.map_err(io)?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut auth = AuthState::Start;
    let mut server_params = Vec::new();
    let mut key_data = None;
    loop {
        let frame = loop {
            match Frame::parse(&mut buf, opts.max_message_size)
                .map_err(|source| BackendError::Protocol { role, source })?
            {
                Some(f) => break f,
                None => {
                    if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                        return Err(BackendError::Closed { role });
                    }
                }
            }
        };
        let msg = BackendMessage::decode(&frame)
            .map_err(|source| BackendError::Protocol { role, source })?;
        match msg {
            BackendMessage::Authentication(a) => {
                out.clear();
                respond(
                    role,
                    &mut auth,
                    a,
                    &dsn.user,
                    dsn.password.as_deref(),
                    &binding,
                    &mut out,
                )?;
                if !out.is_empty() {
                    write_flushed(&mut stream, &out).await.map_err(io)?;
                }
            }
            BackendMessage::ParameterStatus { name, value } => server_params.push((name, value)),
            BackendMessage::BackendKeyData { pid, key } => key_data = Some((pid, key)),
            BackendMessage::ErrorResponse(fields) => {
                return Err(BackendError::Server { role, fields })
            }
            BackendMessage::ReadyForQuery(_) => {
                binding
                    .check_done(matches!(auth, AuthState::Bound))
                    .map_err(|e| BackendError::Auth {
                        role,
                        detail: e.to_string(),
                    })?;
                let (pid, key) = key_data.unwrap_or((0, Bytes::new()));
                return Ok(BackendConn {
                    role,
                    stream,
                    read_buf: buf,
                    params: server_params,
                    pid,
                    key,
                    cancel_to: CancelAddr {
                        addr,
                        host: dsn.host.clone(),
                        tls,
                    },
                });
            }
            // Notices and protocol negotiation during startup are informational.
            _ => {}
        }
    }
}

/// Sends a CancelRequest for a backend, over TLS when its session used TLS; the server
/// answers by closing the connection.
pub async fn send_cancel(
    to: &CancelAddr,
    pid: i32,
    key: &Bytes,
    timeout: Duration,
) -> std::io::Result<()> {
    let fut = async {
        let tcp = TcpStream::connect(&to.addr).await?;
        let mut s = negotiate(tcp, &to.tls, &to.host)
            .await
            .map_err(std::io::Error::other)?;
        let mut out = BytesMut::new();
        StartupRequest::Cancel {
            pid,
            key: key.clone(),
        }
        .encode(&mut out);
        s.write_all(&out).await?;
        s.flush().await?;
        // Wait for the server to close, so the cancel is delivered before we return.
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "cancel timed out",
            ))
        })
}
