//! The untagged messages a client may send first: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage.

use super::buf::{Reader, Writer};
use super::ProtocolError;
use bytes::{Buf, Bytes, BytesMut};

pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;
pub const PROTOCOL_3_0: i32 = 196608;

/// PostgreSQL refuses startup packets above this size; so do we.
pub const MAX_STARTUP_PACKET: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    Ssl,
    GssEnc,
    /// The secret key is 4 bytes in protocol 3.0 and up to 256 in 3.2.
    Cancel {
        pid: i32,
        key: Bytes,
    },
    Startup {
        major: u16,
        minor: u16,
        /// Parameters in the order sent; `user` and `database` among them.
        params: Vec<(String, String)>,
    },
}

impl StartupRequest {
    /// Takes one startup-family packet off `buf`; `Ok(None)` means more bytes are needed.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<StartupRequest>, ProtocolError> {
        let Some(head) = buf.get(..4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if len < 8 || len as usize > MAX_STARTUP_PACKET {
            return Err(ProtocolError::BadStartupLength(i64::from(len)));
        }
        let len = len as usize;
        if buf.len() < len {
            return Ok(None);
        }
        let mut packet = buf.split_to(len).freeze();
        packet.advance(4);
        let mut r = Reader::new(&packet, "startup");
        let code = r.i32()?;
        let req = match code {
            SSL_REQUEST => StartupRequest::Ssl,
            GSSENC_REQUEST => StartupRequest::GssEnc,
            CANCEL_REQUEST => {
                let pid = r.i32()?;
                let key = r.rest();
                if key.len() < 4 || key.len() > 256 {
                    return Err(ProtocolError::malformed("cancel request", "bad key length"));
                }
                return Ok(Some(StartupRequest::Cancel { pid, key }));
            }
            v => {
                let major = (v >> 16) as u16;
                let minor = (v & 0xffff) as u16;
                if major != 3 {
                    return Err(ProtocolError::UnsupportedVersion { major, minor });
                }
                let mut params = Vec::new();
                loop {
                    let name = r.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstr()?;
                    params.push((name, value));
                }
                r.finish()?;
                return Ok(Some(StartupRequest::Startup {
                    major,
                    minor,
                    params,
                }));
            }
        };
        r.finish()?;
        Ok(Some(req))
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let mut w = Writer::untagged(out);
        match self {
            StartupRequest::Ssl => {
                w.i32(SSL_REQUEST);
            }
            StartupRequest::GssEnc => {
                w.i32(GSSENC_REQUEST);
            }
            StartupRequest::Cancel { pid, key } => {
                w.i32(CANCEL_REQUEST).i32(*pid).raw(key);
            }
            StartupRequest::Startup {
                major,
                minor,
                params,
            } => {
                w.i32((i32::from(*major) << 16) | i32::from(*minor));
                for (k, v) in params {
                    w.cstr(k).cstr(v);
                }
                w.u8(0);
            }
        }
        w.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let req = StartupRequest::Startup {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "app".into()),
                ("database".into(), "db".into()),
            ],
        };
        let mut b = BytesMut::new();
        req.encode(&mut b);
        assert_eq!(StartupRequest::parse(&mut b), Ok(Some(req)));
    }

    #[test]
    fn garbage_is_rejected() {
        let mut b = BytesMut::from(&b"\0\0\0\x10GET / HTTP/1.1\r\n"[..]);
        assert!(StartupRequest::parse(&mut b).is_err());
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            StartupRequest::parse(&mut b),
            Err(ProtocolError::BadStartupLength(_))
        ));
    }
}
