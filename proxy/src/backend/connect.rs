//! Opening a connection to a database: TCP, TLS as its URL says, then the startup and
//! authentication ([`switchyard_core::handshake`], shared with the tools' COPY sessions).

use super::{BackendError, Db};
use crate::protocol::startup::StartupRequest;
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use switchyard_core::dsn::Dsn;
use switchyard_core::handshake::{handshake, Startup};
use switchyard_core::tls::{settings_for, TlsSettings};
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
    pub role: Db,
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
    role: Db,
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
    role: Db,
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
    let params: Vec<(&str, &str)> = std::iter::once(("database", dsn.dbname.as_str()))
        .chain(
            startup_params
                .iter()
                .filter(|(k, _)| k != "user" && k != "database")
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .collect();
    let mut read_buf = BytesMut::with_capacity(4096);
    let session = handshake(
        &mut stream,
        &mut read_buf,
        &Startup {
            user: &dsn.user,
            password: dsn.password.as_deref().map(str::as_bytes),
            params: &params,
            binding: &binding,
            max_message: opts.max_message_size,
        },
    )
    .await
    .map_err(|e| BackendError::of_handshake(role, e))?;
    let (pid, key) = session.key.map_or((0, Bytes::new()), |k| (k.pid, k.secret));
    Ok(BackendConn {
        role,
        stream,
        read_buf,
        params: session.params,
        pid,
        key,
        cancel_to: CancelAddr {
            addr,
            host: dsn.host.clone(),
            tls,
        },
    })
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
