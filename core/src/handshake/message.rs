//! The few server messages a startup can bring, cut off a read buffer and decoded. Written
//! here rather than taken from `postgres-protocol`'s parser, which refuses message types it
//! does not know (NegotiateProtocolVersion) and narrows the cancel key to four bytes.

use super::error::{HandshakeError, ServerError};
use bytes::{Buf, Bytes, BytesMut};

/// What a server sends between the StartupMessage and the first ReadyForQuery.
#[derive(Debug)]
pub(super) enum Message {
    Auth(AuthRequest),
    ParameterStatus(String, String),
    KeyData {
        pid: i32,
        secret: Bytes,
    },
    Error(ServerError),
    Ready,
    /// Notices, protocol negotiation: nothing to act on.
    Other,
}

/// An `Authentication*` request, by its sub-code.
#[derive(Debug)]
pub(super) enum AuthRequest {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    Unsupported(i32),
}

/// One whole message (type byte and body) off the front of `buf`; `None` until all of it
/// has arrived. `max` bounds the length a server may announce.
pub(super) fn split(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, Bytes)>, HandshakeError> {
    let Some(head) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = head[0];
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len < 4 || len > max {
        return Err(HandshakeError::Protocol(format!(
            "message {:?} of length {len}",
            tag as char
        )));
    }
    if buf.len() <= len {
        return Ok(None);
    }
    let mut whole = buf.split_to(len + 1);
    whole.advance(5);
    Ok(Some((tag, whole.freeze())))
}

pub(super) fn decode(tag: u8, mut body: Bytes) -> Result<Message, HandshakeError> {
    let short = |what: &str| HandshakeError::Protocol(format!("truncated {what}"));
    Ok(match tag {
        b'R' => {
            if body.len() < 4 {
                return Err(short("Authentication request"));
            }
            Message::Auth(match body.get_i32() {
                0 => AuthRequest::Ok,
                3 => AuthRequest::Cleartext,
                5 => {
                    let salt = body
                        .get(..4)
                        .ok_or_else(|| short("MD5 salt"))?
                        .try_into()
                        .map_err(|_| short("MD5 salt"))?;
                    AuthRequest::Md5 { salt }
                }
                10 => AuthRequest::Sasl {
                    mechanisms: mechanisms(&body)?,
                },
                11 => AuthRequest::SaslContinue(body),
                12 => AuthRequest::SaslFinal(body),
                other => AuthRequest::Unsupported(other),
            })
        }
        b'S' => {
            let mut parts = body.split(|&b| b == 0);
            let mut text = |what| {
                let raw = parts.next().ok_or_else(|| short(what))?;
                String::from_utf8(raw.to_vec())
                    .map_err(|_| HandshakeError::Protocol(format!("{what} is not UTF-8")))
            };
            let name = text("ParameterStatus name")?;
            let value = text("ParameterStatus value")?;
            Message::ParameterStatus(name, value)
        }
        b'K' => {
            if body.len() < 4 {
                return Err(short("BackendKeyData"));
            }
            let pid = body.get_i32();
            // Protocol 3.2 lets the key be longer than four bytes; kept as sent.
            Message::KeyData { pid, secret: body }
        }
        b'E' => Message::Error(ServerError::parse(&body)?),
        b'Z' => Message::Ready,
        _ => Message::Other,
    })
}

/// The NUL-terminated names of an AuthenticationSASL request, up to the empty one.
fn mechanisms(body: &[u8]) -> Result<Vec<String>, HandshakeError> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| HandshakeError::Protocol("unterminated SASL mechanism list".into()))?;
        if nul == 0 {
            return Ok(out);
        }
        out.push(String::from_utf8_lossy(&rest[..nul]).into_owned());
        rest = &rest[nul + 1..];
    }
}
