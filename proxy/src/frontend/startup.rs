//! A client's first packets: SSL/GSS negotiation, cancel requests, the StartupMessage and
//! authentication; then the primary connection is opened and the session starts.

use super::auth::authenticate;
use super::reply::{fatal, send_error};
use super::session::{client_encoding_ok, encoding_refused, is_utf8_encoding, Session};
use super::stream::ClientStream;
use crate::backend::{connect, send_cancel};
use crate::cancel::CancelTarget;
use crate::metrics::{
    BACKEND_CONNECT_ERRORS_TOTAL, CANCEL_REQUESTS_TOTAL, CLIENT_CONNECTIONS,
    CLIENT_CONNECTIONS_TOTAL, PROTOCOL_ERRORS_TOTAL,
};
use crate::protocol::backend::{Authentication, BackendMessage};
use crate::protocol::startup::StartupRequest;
use crate::protocol::ProtocolError;
use crate::shared::Shared;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::tls_stream::write_flushed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client has this long to finish startup and authentication, as PostgreSQL's
/// authentication_timeout default.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one client connection from its first byte to its last.
pub async fn handle_client(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    metrics::counter!(CLIENT_CONNECTIONS_TOTAL).increment(1);
    // Startup, authentication and the backend connect are boxed: their states are large
    // (TLS handshake, SCRAM) and, inline, would stay in every session's task for its whole
    // life (measured: 7 KiB per idle session, most of it these).
    let started =
        tokio::time::timeout(STARTUP_TIMEOUT, Box::pin(startup(&shared, tcp, peer))).await;
    let (client, buf, params) = match started {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(_) => {
            tracing::info!(%peer, "Client did not finish startup in time; closing.");
            return;
        }
    };
    let mut client = client;
    let mut params = params;
    // The same deadline covers authentication, so a client stalling mid-SASL cannot hold a
    // connection slot.
    match tokio::time::timeout(
        STARTUP_TIMEOUT,
        Box::pin(authenticate(&shared, &mut client, &params, peer)),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::info!(%peer, "Client did not finish authentication in time; closing.");
            return;
        }
    }
    // The client's own user and database were checked; the databases see the URLs' ones.
    params.retain(|(k, _)| k != "user" && k != "database" && !k.starts_with("_pq_."));
    if shared.mirror.is_some() {
        // Marks what this session writes outside lockstep in the change log as written
        // through this instance (a write outside every proxy has no mark).
        params.retain(|(k, _)| k != "switchyard.session");
        params.push(("switchyard.session".into(), shared.instance_id.clone()));
    }
    // A session starts on whichever database takes writes now (writes-new: new).
    let direction = shared.cutover.direction();
    let role = direction.primary();
    let backend = match Box::pin(connect(
        role,
        shared.dsn(role),
        &params,
        &shared.connect_options(),
    ))
    .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "Cannot open the primary connection for a client.");
            metrics::counter!(BACKEND_CONNECT_ERRORS_TOTAL, "role" => direction.primary().to_string(), "kind" => e.kind())
                .increment(1);
            send_error(&mut client, &e.client_fields()).await;
            return;
        }
    };
    if shared.mirror.is_some() {
        let param = |name: &str| {
            backend
                .params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let server_utf8 = param("server_encoding").is_some_and(|e| is_utf8_encoding(e.as_bytes()));
        if let Some(encoding) =
            param("client_encoding").filter(|e| !client_encoding_ok(e, server_utf8))
        {
            tracing::warn!(%peer, %encoding, "Refused a mirrored session whose client encoding the proxy cannot read.");
            send_error(&mut client, &encoding_refused(encoding)).await;
            let mut server = backend.stream;
            let _ = write_flushed(&mut server, b"X\0\0\0\x04").await;
            return;
        }
    }
    let cancel = shared.cancel.register(CancelTarget {
        to: backend.cancel_to.clone(),
        pid: backend.pid,
        key: backend.key.clone(),
    });
    let mut out = BytesMut::new();
    BackendMessage::Authentication(Authentication::Ok).encode(&mut out);
    for (name, value) in &backend.params {
        BackendMessage::ParameterStatus {
            name: name.clone(),
            value: value.clone(),
        }
        .encode(&mut out);
    }
    BackendMessage::BackendKeyData {
        pid: cancel.pid,
        key: Bytes::copy_from_slice(&cancel.key),
    }
    .encode(&mut out);
    BackendMessage::ReadyForQuery(b'I').encode(&mut out);
    if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
        shared.cancel.unregister(cancel);
        return;
    }
    shared
        .counters
        .sessions_active
        .fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .sessions_total
        .fetch_add(1, Ordering::Relaxed);
    metrics::gauge!(CLIENT_CONNECTIONS).increment(1.0);
    let place = super::session::Place {
        direction,
        cancel,
        params,
    };
    Session {
        shared: shared.clone(),
        client,
        client_buf: buf,
        backend,
        peer,
        place,
    }
    .run()
    .await;
    metrics::gauge!(CLIENT_CONNECTIONS).decrement(1.0);
    shared
        .counters
        .sessions_active
        .fetch_sub(1, Ordering::Relaxed);
    shared.cancel.unregister(cancel);
}

type Started = (ClientStream, BytesMut, Vec<(String, String)>);

/// Reads packets until a StartupMessage; answers SSL/GSS requests and serves cancels.
async fn startup(shared: &Arc<Shared>, tcp: TcpStream, peer: SocketAddr) -> Option<Started> {
    let mut stream = ClientStream::Plain(tcp);
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls_done = false;
    loop {
        let req = loop {
            match StartupRequest::parse(&mut buf) {
                Ok(Some(r)) => break r,
                Ok(None) => match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "Rejected a bad startup packet.");
                    metrics::counter!(PROTOCOL_ERRORS_TOTAL, "kind" => "startup").increment(1);
                    let code = if matches!(e, ProtocolError::UnsupportedVersion { .. }) {
                        "0A000"
                    } else {
                        "08P01"
                    };
                    send_error(&mut stream, &fatal(code, e.to_string())).await;
                    return None;
                }
            }
        };
        match req {
            StartupRequest::Ssl | StartupRequest::GssEnc => {
                let offer_tls =
                    matches!(req, StartupRequest::Ssl) && !tls_done && shared.tls.is_some();
                let answer: &[u8] = if offer_tls { b"S" } else { b"N" };
                if write_flushed(&mut stream, answer).await.is_err() {
                    return None;
                }
                if offer_tls {
                    // Bytes sent before the handshake would be read as plaintext after it:
                    // refuse them (the same guard PostgreSQL has).
                    if !buf.is_empty() {
                        tracing::warn!(%peer, "Client sent data before the TLS handshake.");
                        return None;
                    }
                    let (ClientStream::Plain(tcp), Some(acceptor)) = (stream, shared.tls.as_ref())
                    else {
                        return None;
                    };
                    match acceptor.accept(tcp).await {
                        Ok(tls) => stream = ClientStream::Tls(Box::new(tls)),
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed.");
                            return None;
                        }
                    }
                    tls_done = true;
                }
            }
            StartupRequest::Cancel { pid, key } => {
                metrics::counter!(CANCEL_REQUESTS_TOTAL).increment(1);
                let targets = shared.cancel.lookup(pid, &key);
                if targets.is_empty() {
                    tracing::info!(%peer, "Cancel request for an unknown session ignored.");
                }
                let sent = targets.iter().map(|target| {
                    send_cancel(
                        &target.to,
                        target.pid,
                        &target.key,
                        shared.config.connect_timeout(),
                    )
                });
                for result in futures_util::future::join_all(sent).await {
                    if let Err(e) = result {
                        tracing::info!(error = %e, "Could not forward a cancel request.");
                    }
                }
                return None;
            }
            StartupRequest::Startup { minor, params, .. } => {
                let unrecognized: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if minor > 0 || !unrecognized.is_empty() {
                    // We speak 3.0: tell a 3.2 client so, as PostgreSQL 15 would.
                    let mut out = BytesMut::new();
                    BackendMessage::NegotiateProtocolVersion {
                        newest_minor: 0,
                        unrecognized,
                    }
                    .encode(&mut out);
                    if write_flushed(&mut stream, &out).await.is_err() {
                        return None;
                    }
                }
                if params
                    .iter()
                    .any(|(k, v)| k == "replication" && v != "false" && v != "off" && v != "0")
                {
                    send_error(
                        &mut stream,
                        &fatal("0A000", "switchyard does not proxy replication connections"),
                    )
                    .await;
                    return None;
                }
                return Some((stream, buf, params));
            }
        }
    }
}
