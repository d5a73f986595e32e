//! Messages a server sends that the proxy reads (authentication, session parameters,
//! transaction status, errors) or writes itself (its own authentication and errors).
//! Every other backend message is forwarded as an opaque [`Frame`].

use super::buf::{Reader, Writer};
use super::{Frame, ProtocolError};
use bytes::{Bytes, BytesMut};

/// `Authentication*` requests, by their sub-code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos, GSS, SSPI: not supported by the proxy; the code is kept for the error.
    Unsupported(i32),
}

/// Fields of ErrorResponse and NoticeResponse, keyed by their one-byte codes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    pub fields: Vec<(u8, String)>,
}

impl ErrorFields {
    pub fn new(severity: &str, code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            fields: vec![
                (b'S', severity.to_string()),
                (b'V', severity.to_string()),
                (b'C', code.to_string()),
                (b'M', message.into()),
            ],
        }
    }

    pub fn with(mut self, code: u8, value: impl Into<String>) -> Self {
        self.fields.push((code, value.into()));
        self
    }

    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    pub fn code(&self) -> &str {
        self.get(b'C').unwrap_or("XX000")
    }

    pub fn message(&self) -> &str {
        self.get(b'M').unwrap_or("")
    }

    pub fn severity(&self) -> &str {
        self.get(b'V').or_else(|| self.get(b'S')).unwrap_or("ERROR")
    }

    fn decode(body: &Bytes, what: &'static str) -> Result<Self, ProtocolError> {
        Reader::all(body, what, |r| {
            let mut fields = Vec::new();
            loop {
                let code = r.u8()?;
                if code == 0 {
                    break;
                }
                fields.push((code, r.cstr()?));
            }
            Ok(ErrorFields { fields })
        })
    }

    fn encode_body(&self, w: &mut Writer<'_>) {
        for (c, v) in &self.fields {
            w.u8(*c).cstr(v);
        }
        w.u8(0);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    BackendKeyData {
        pid: i32,
        key: Bytes,
    },
    ParameterStatus {
        name: String,
        value: String,
    },
    /// `I` idle, `T` in a transaction, `E` in a failed transaction.
    ReadyForQuery(u8),
    ErrorResponse(ErrorFields),
    NoticeResponse(ErrorFields),
    NegotiateProtocolVersion {
        newest_minor: i32,
        unrecognized: Vec<String>,
    },
    CommandComplete(String),
    CopyInResponse(Bytes),
    CopyOutResponse(Bytes),
    CopyBothResponse(Bytes),
    /// Any other message: forwarded untouched.
    Other(u8),
}

impl BackendMessage {
    pub fn decode(frame: &Frame) -> Result<Self, ProtocolError> {
        let body = frame.body();
        Ok(match frame.tag() {
            b'R' => BackendMessage::Authentication(Reader::all(&body, "Authentication", |r| {
                Ok(match r.i32()? {
                    0 => Authentication::Ok,
                    3 => Authentication::CleartextPassword,
                    5 => {
                        let s = r.bytes(4)?;
                        Authentication::Md5Password {
                            salt: [s[0], s[1], s[2], s[3]],
                        }
                    }
                    10 => {
                        let mut mechanisms = Vec::new();
                        loop {
                            let m = r.cstr()?;
                            if m.is_empty() {
                                break;
                            }
                            mechanisms.push(m);
                        }
                        Authentication::Sasl { mechanisms }
                    }
                    11 => Authentication::SaslContinue(r.rest()),
                    12 => Authentication::SaslFinal(r.rest()),
                    other => {
                        r.rest();
                        Authentication::Unsupported(other)
                    }
                })
            })?),
            b'K' => Reader::all(&body, "BackendKeyData", |r| {
                Ok(BackendMessage::BackendKeyData {
                    pid: r.i32()?,
                    key: r.rest(),
                })
            })?,
            b'S' => Reader::all(&body, "ParameterStatus", |r| {
                Ok(BackendMessage::ParameterStatus {
                    name: r.cstr()?,
                    value: r.cstr()?,
                })
            })?,
            b'Z' => Reader::all(&body, "ReadyForQuery", |r| {
                r.u8().map(BackendMessage::ReadyForQuery)
            })?,
            b'E' => BackendMessage::ErrorResponse(ErrorFields::decode(&body, "ErrorResponse")?),
            b'N' => BackendMessage::NoticeResponse(ErrorFields::decode(&body, "NoticeResponse")?),
            b'v' => Reader::all(&body, "NegotiateProtocolVersion", |r| {
                let newest_minor = r.i32()?;
                let n = r.i32()?;
                let mut unrecognized = Vec::new();
                for _ in 0..n.max(0) {
                    unrecognized.push(r.cstr()?);
                }
                Ok(BackendMessage::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized,
                })
            })?,
            b'C' => Reader::all(&body, "CommandComplete", |r| {
                r.cstr().map(BackendMessage::CommandComplete)
            })?,
            b'G' => BackendMessage::CopyInResponse(body),
            b'H' => BackendMessage::CopyOutResponse(body),
            b'W' => BackendMessage::CopyBothResponse(body),
            t => BackendMessage::Other(t),
        })
    }

    /// Encodes the messages the proxy itself sends. `Other` carries no body and is not
    /// encodable; forward its frame instead.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut w;
        match self {
            BackendMessage::Authentication(a) => {
                w = Writer::tagged(out, b'R');
                match a {
                    Authentication::Ok => {
                        w.i32(0);
                    }
                    Authentication::CleartextPassword => {
                        w.i32(3);
                    }
                    Authentication::Md5Password { salt } => {
                        w.i32(5).raw(salt);
                    }
                    Authentication::Sasl { mechanisms } => {
                        w.i32(10);
                        for m in mechanisms {
                            w.cstr(m);
                        }
                        w.u8(0);
                    }
                    Authentication::SaslContinue(d) => {
                        w.i32(11).raw(d);
                    }
                    Authentication::SaslFinal(d) => {
                        w.i32(12).raw(d);
                    }
                    Authentication::Unsupported(code) => {
                        w.i32(*code);
                    }
                }
            }
            BackendMessage::BackendKeyData { pid, key } => {
                w = Writer::tagged(out, b'K');
                w.i32(*pid).raw(key);
            }
            BackendMessage::ParameterStatus { name, value } => {
                w = Writer::tagged(out, b'S');
                w.cstr(name).cstr(value);
            }
            BackendMessage::ReadyForQuery(s) => {
                w = Writer::tagged(out, b'Z');
                w.u8(*s);
            }
            BackendMessage::ErrorResponse(f) => {
                w = Writer::tagged(out, b'E');
                f.encode_body(&mut w);
            }
            BackendMessage::NoticeResponse(f) => {
                w = Writer::tagged(out, b'N');
                f.encode_body(&mut w);
            }
            BackendMessage::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            } => {
                w = Writer::tagged(out, b'v');
                w.i32(*newest_minor).i32(unrecognized.len() as i32);
                for u in unrecognized {
                    w.cstr(u);
                }
            }
            BackendMessage::CommandComplete(t) => {
                w = Writer::tagged(out, b'C');
                w.cstr(t);
            }
            BackendMessage::CopyInResponse(b) => {
                w = Writer::tagged(out, b'G');
                w.raw(b);
            }
            BackendMessage::CopyOutResponse(b) => {
                w = Writer::tagged(out, b'H');
                w.raw(b);
            }
            BackendMessage::CopyBothResponse(b) => {
                w = Writer::tagged(out, b'W');
                w.raw(b);
            }
            BackendMessage::Other(_) => return,
        }
        w.finish();
    }
}

/// Encodes an ErrorResponse into `out`: the usual way the proxy speaks to a client.
pub fn error_response(out: &mut BytesMut, fields: &ErrorFields) {
    BackendMessage::ErrorResponse(fields.clone()).encode(out);
}
