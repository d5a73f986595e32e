//! The startup of a PostgreSQL session on a stream already open (TCP, TLS or a Unix
//! socket): the StartupMessage, the authentication exchange, then the server's parameters
//! and cancel key up to the first ReadyForQuery. One implementation for every connection
//! Switchyard opens by hand: the proxy's sessions to the databases and the backfill's COPY
//! connections ([`crate::copy_conn`]). Opening the stream and TLS are the caller's
//! ([`crate::tls_stream::negotiate`]), and so is the timeout.

mod auth;
mod error;
mod message;

pub use error::{method_name, HandshakeError, ServerError};

use crate::tls_stream::{write_flushed, Binding};
use bytes::{Bytes, BytesMut};
use message::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// What to start a session with.
pub struct Startup<'a> {
    pub user: &'a str,
    pub password: Option<&'a [u8]>,
    /// Parameters sent after `user`, in order (`database`, `application_name`, `options`,
    /// a client's own settings).
    pub params: &'a [(&'a str, &'a str)],
    /// What SCRAM may bind to on this stream, and what `channel_binding` asks.
    pub binding: &'a Binding,
    /// The longest message accepted from the server.
    pub max_message: usize,
}

/// A session the server has started and made ready for queries.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// ParameterStatus values the server reported, in order.
    pub params: Vec<(String, String)>,
    /// The process id and secret for cancel requests (none from servers that send none,
    /// e.g. some poolers).
    pub key: Option<BackendKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: i32,
    pub secret: Bytes,
}

/// Runs the startup on `stream`. `buf` is the read buffer: whatever arrives after the first
/// ReadyForQuery is left in it for the session's next reads.
pub async fn handshake<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    startup: &Startup<'_>,
) -> Result<Session, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut out = BytesMut::new();
    let params = std::iter::once(("user", startup.user))
        .chain(startup.params.iter().filter(|(k, _)| *k != "user").copied());
    frontend::startup_message(params, &mut out).map_err(HandshakeError::Io)?;
    write_flushed(stream, &out)
        .await
        .map_err(HandshakeError::Io)?;

    let mut auth = auth::Authenticator::new(startup.user, startup.password, startup.binding);
    let mut session = Session::default();
    loop {
        let (tag, body) = next_message(stream, buf, startup.max_message).await?;
        match message::decode(tag, body)? {
            Message::Auth(req) => {
                out.clear();
                auth.respond(req, &mut out)?;
                if !out.is_empty() {
                    write_flushed(stream, &out)
                        .await
                        .map_err(HandshakeError::Io)?;
                }
            }
            Message::ParameterStatus(name, value) => session.params.push((name, value)),
            Message::KeyData { pid, secret } => session.key = Some(BackendKey { pid, secret }),
            Message::Error(e) => return Err(HandshakeError::Server(e)),
            Message::Ready => {
                auth.check_done()?;
                return Ok(session);
            }
            Message::Other => {}
        }
    }
}

async fn next_message<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, Bytes), HandshakeError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    loop {
        if let Some(m) = message::split(buf, max)? {
            return Ok(m);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if stream.read_buf(buf).await.map_err(HandshakeError::Io)? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

#[cfg(test)]
mod tests;
