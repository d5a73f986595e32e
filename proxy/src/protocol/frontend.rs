//! Messages a client sends after startup, decoded from a [`Frame`] and encodable back to the
//! same bytes.

use super::buf::{Reader, Writer};
use super::{Frame, ProtocolError};
use bytes::{Bytes, BytesMut};

/// Describe and Close name either a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

impl Target {
    fn decode(b: u8, what: &'static str) -> Result<Self, ProtocolError> {
        match b {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            _ => Err(ProtocolError::malformed(what, "target must be 'S' or 'P'")),
        }
    }
    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    pub oid: i32,
    pub arg_formats: Vec<i16>,
    pub args: Vec<Option<Bytes>>,
    pub result_format: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(String),
    Parse {
        name: String,
        query: String,
        param_types: Vec<i32>,
    },
    Bind(Bind),
    Describe {
        target: Target,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        target: Target,
        name: String,
    },
    Sync,
    Flush,
    Terminate,
    CopyData(Bytes),
    CopyDone,
    CopyFail(String),
    FunctionCall(FunctionCall),
    /// PasswordMessage, SASLInitialResponse and SASLResponse share tag `p`; which one it is
    /// depends on the authentication exchange, so the body is kept raw.
    Password(Bytes),
}

/// Tags a client may send after startup; anything else is a protocol violation.
pub fn is_known_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P'
            | b'B'
            | b'D'
            | b'E'
            | b'C'
            | b'S'
            | b'H'
            | b'X'
            | b'd'
            | b'c'
            | b'f'
            | b'F'
            | b'p'
    )
}

impl FrontendMessage {
    pub fn decode(frame: &Frame) -> Result<Self, ProtocolError> {
        let body = frame.body();
        let msg = match frame.tag() {
            b'Q' => Reader::all(&body, "Query", |r| r.cstr().map(FrontendMessage::Query))?,
            b'P' => Reader::all(&body, "Parse", |r| {
                Ok(FrontendMessage::Parse {
                    name: r.cstr()?,
                    query: r.cstr()?,
                    param_types: r.list16(Reader::i32)?,
                })
            })?,
            b'B' => Reader::all(&body, "Bind", |r| {
                Ok(FrontendMessage::Bind(Bind {
                    portal: r.cstr()?,
                    statement: r.cstr()?,
                    param_formats: r.list16(Reader::i16)?,
                    params: r.list16(Reader::nullable)?,
                    result_formats: r.list16(Reader::i16)?,
                }))
            })?,
            b'D' | b'C' => {
                let describe = frame.tag() == b'D';
                let what = if describe { "Describe" } else { "Close" };
                let (target, name) = Reader::all(&body, what, |r| {
                    Ok((Target::decode(r.u8()?, what)?, r.cstr()?))
                })?;
                if describe {
                    FrontendMessage::Describe { target, name }
                } else {
                    FrontendMessage::Close { target, name }
                }
            }
            b'E' => Reader::all(&body, "Execute", |r| {
                Ok(FrontendMessage::Execute {
                    portal: r.cstr()?,
                    max_rows: r.i32()?,
                })
            })?,
            b'S' | b'H' | b'X' | b'c' => {
                if !body.is_empty() {
                    return Err(ProtocolError::malformed(
                        "Sync/Flush/Terminate/CopyDone",
                        "body must be empty",
                    ));
                }
                match frame.tag() {
                    b'S' => FrontendMessage::Sync,
                    b'H' => FrontendMessage::Flush,
                    b'X' => FrontendMessage::Terminate,
                    _ => FrontendMessage::CopyDone,
                }
            }
            b'd' => FrontendMessage::CopyData(body),
            b'f' => Reader::all(&body, "CopyFail", |r| {
                r.cstr().map(FrontendMessage::CopyFail)
            })?,
            b'F' => Reader::all(&body, "FunctionCall", |r| {
                Ok(FrontendMessage::FunctionCall(FunctionCall {
                    oid: r.i32()?,
                    arg_formats: r.list16(Reader::i16)?,
                    args: r.list16(Reader::nullable)?,
                    result_format: r.i16()?,
                }))
            })?,
            b'p' => FrontendMessage::Password(body),
            t => return Err(ProtocolError::UnknownFrontendTag(t)),
        };
        Ok(msg)
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let mut w;
        match self {
            FrontendMessage::Query(q) => {
                w = Writer::tagged(out, b'Q');
                w.cstr(q);
            }
            FrontendMessage::Parse {
                name,
                query,
                param_types,
            } => {
                w = Writer::tagged(out, b'P');
                w.cstr(name).cstr(query);
                w.list16(param_types, |w, t| w.i32(*t));
            }
            FrontendMessage::Bind(b) => {
                w = Writer::tagged(out, b'B');
                w.cstr(&b.portal).cstr(&b.statement);
                w.list16(&b.param_formats, |w, f| w.i16(*f));
                w.list16(&b.params, |w, p| w.nullable(p));
                w.list16(&b.result_formats, |w, f| w.i16(*f));
            }
            FrontendMessage::Describe { target, name } => {
                w = Writer::tagged(out, b'D');
                w.u8(target.byte()).cstr(name);
            }
            FrontendMessage::Execute { portal, max_rows } => {
                w = Writer::tagged(out, b'E');
                w.cstr(portal).i32(*max_rows);
            }
            FrontendMessage::Close { target, name } => {
                w = Writer::tagged(out, b'C');
                w.u8(target.byte()).cstr(name);
            }
            FrontendMessage::Sync => w = Writer::tagged(out, b'S'),
            FrontendMessage::Flush => w = Writer::tagged(out, b'H'),
            FrontendMessage::Terminate => w = Writer::tagged(out, b'X'),
            FrontendMessage::CopyData(d) => {
                w = Writer::tagged(out, b'd');
                w.raw(d);
            }
            FrontendMessage::CopyDone => w = Writer::tagged(out, b'c'),
            FrontendMessage::CopyFail(m) => {
                w = Writer::tagged(out, b'f');
                w.cstr(m);
            }
            FrontendMessage::FunctionCall(f) => {
                w = Writer::tagged(out, b'F');
                w.i32(f.oid);
                w.list16(&f.arg_formats, |w, x| w.i16(*x));
                w.list16(&f.args, |w, a| w.nullable(a));
                w.i16(f.result_format);
            }
            FrontendMessage::Password(b) => {
                w = Writer::tagged(out, b'p');
                w.raw(b);
            }
        }
        w.finish();
    }
}

/// The first two fields of a Bind (portal, statement), borrowed from the frame; the hot
/// path needs only these and should not allocate for them.
pub fn bind_names(frame: &Frame) -> Result<(&str, &str), ProtocolError> {
    let body = &frame.raw()[Frame::HEADER..];
    let (portal, rest) = split_cstr(body, "Bind")?;
    let (statement, _) = split_cstr(rest, "Bind")?;
    Ok((portal, statement))
}

/// The portal an Execute runs, borrowed from the frame.
pub fn execute_portal(frame: &Frame) -> Result<&str, ProtocolError> {
    let body = &frame.raw()[Frame::HEADER..];
    let (portal, rest) = split_cstr(body, "Execute")?;
    if rest.len() != 4 {
        return Err(ProtocolError::malformed("Execute", "bad row limit"));
    }
    Ok(portal)
}

fn split_cstr<'a>(b: &'a [u8], what: &'static str) -> Result<(&'a str, &'a [u8]), ProtocolError> {
    let nul = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(ProtocolError::malformed(what, "string not terminated"))?;
    let s = std::str::from_utf8(&b[..nul])
        .map_err(|_| ProtocolError::malformed(what, "invalid UTF-8"))?;
    Ok((s, &b[nul + 1..]))
}
