//! Checking a client's user, password and database before anything reaches a database.
//! Error codes and messages are the ones PostgreSQL gives, so clients react the same.

use super::reply::{fatal, send_error};
use super::stream::ClientStream;
use crate::auth::{md5_challenge_response_matches, ScramServer, Secret};
use crate::config::AuthMethod;
use crate::metrics::AUTH_FAILURES_TOTAL;
use crate::protocol::backend::{Authentication, BackendMessage};
use crate::protocol::Frame;
use crate::shared::Shared;
use bytes::{Buf, Bytes, BytesMut};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Authentication failed; the client was told why and must be disconnected.
pub struct Refused;

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub async fn authenticate(
    shared: &Shared,
    client: &mut ClientStream,
    params: &[(String, String)],
    peer: SocketAddr,
) -> Result<(), Refused> {
    let Some(user) = param(params, "user").filter(|u| !u.is_empty()) else {
        return refuse(
            client,
            "no_user",
            fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            ),
        )
        .await;
    };
    let database = param(params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user);
    match shared.config.effective_auth() {
        AuthMethod::Trust => {
            if !peer.ip().is_loopback() {
                let msg = format!(
                    "no users are configured, so switchyard accepts only local connections; host \"{}\" refused",
                    peer.ip()
                );
                return refuse(client, "trust_remote", fatal("28000", msg)).await;
            }
            if user != shared.old.user {
                return refuse(
                    client,
                    "unknown_user",
                    fatal("28000", format!("role \"{user}\" does not exist")),
                )
                .await;
            }
        }
        method => {
            let (secret, known) = match shared.users.get(user) {
                Some(s) => (s.clone(), true),
                None => (Secret::mock(user, &shared.mock_secret), false),
            };
            let ok = match method {
                AuthMethod::Md5 => md5_exchange(client, &secret).await,
                _ => scram_exchange(client, &secret).await,
            };
            let failed = fatal(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            );
            match ok {
                Ok(true) if known => {}
                Ok(_) => {
                    let reason = if known {
                        "wrong_password"
                    } else {
                        "unknown_user"
                    };
                    tracing::info!(%peer, user, reason, "Client authentication failed.");
                    return refuse(client, reason, failed).await;
                }
                Err(e) => {
                    tracing::info!(%peer, user, error = e, "Client authentication exchange broke off.");
                    return refuse(client, "protocol", failed).await;
                }
            }
        }
    }
    if database != shared.old.dbname {
        return refuse(
            client,
            "unknown_database",
            fatal("3D000", format!("database \"{database}\" does not exist")),
        )
        .await;
    }
    Ok(())
}

async fn refuse(
    client: &mut ClientStream,
    reason: &'static str,
    fields: crate::protocol::backend::ErrorFields,
) -> Result<(), Refused> {
    metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => reason).increment(1);
    send_error(client, &fields).await;
    Err(Refused)
}

async fn send(client: &mut ClientStream, msg: BackendMessage) -> Result<(), &'static str> {
    let mut out = BytesMut::new();
    msg.encode(&mut out);
    client.write_all(&out).await.map_err(|_| "write failed")?;
    client.flush().await.map_err(|_| "write failed")
}

/// Reads one password-family ('p') message body.
async fn read_password_message(client: &mut ClientStream) -> Result<Bytes, &'static str> {
    let mut buf = BytesMut::with_capacity(512);
    loop {
        // Authentication messages are small; 64 KiB is far beyond any real one.
        match Frame::parse(&mut buf, 65536) {
            Ok(Some(f)) if f.tag() == b'p' => return Ok(f.body()),
            Ok(Some(_)) => return Err("expected a password message"),
            Ok(None) => {}
            Err(_) => return Err("malformed password message"),
        }
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err("client disconnected"),
            Ok(_) => {}
        }
    }
}

async fn md5_exchange(client: &mut ClientStream, secret: &Secret) -> Result<bool, &'static str> {
    let salt: [u8; 4] = rand::random();
    send(
        client,
        BackendMessage::Authentication(Authentication::Md5Password { salt }),
    )
    .await?;
    let body = read_password_message(client).await?;
    let answer = body.strip_suffix(&[0]).ok_or("password not terminated")?;
    let answer = std::str::from_utf8(answer).map_err(|_| "password not UTF-8")?;
    Ok(secret
        .md5
        .as_deref()
        .is_some_and(|stored| md5_challenge_response_matches(stored, salt, answer)))
}

async fn scram_exchange(client: &mut ClientStream, secret: &Secret) -> Result<bool, &'static str> {
    let verifier = secret
        .scram
        .clone()
        .ok_or("no SCRAM verifier for this user")?;
    send(
        client,
        BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".into()],
        }),
    )
    .await?;
    let mut body = read_password_message(client).await?;
    // SASLInitialResponse: mechanism name, then a length-prefixed client-first-message.
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or("bad SASLInitialResponse")?;
    if &body[..nul] != b"SCRAM-SHA-256" {
        return Err("unsupported SASL mechanism");
    }
    body.advance(nul + 1);
    if body.len() < 4 {
        return Err("bad SASLInitialResponse");
    }
    let len = body.get_i32();
    if len < 0 || len as usize != body.len() {
        return Err("bad SASLInitialResponse length");
    }
    let (server, first) =
        ScramServer::first(verifier, &body).map_err(|_| "bad client-first-message")?;
    send(
        client,
        BackendMessage::Authentication(Authentication::SaslContinue(Bytes::from(first))),
    )
    .await?;
    let final_msg = read_password_message(client).await?;
    match server.finish(&final_msg) {
        Ok(server_final) => {
            send(
                client,
                BackendMessage::Authentication(Authentication::SaslFinal(Bytes::from(
                    server_final,
                ))),
            )
            .await?;
            Ok(true)
        }
        Err(crate::auth::ScramError::WrongPassword) => Ok(false),
        Err(_) => Err("bad client-final-message"),
    }
}
