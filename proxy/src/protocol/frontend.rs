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
            b'Q' => {
                let mut r = Reader::new(&body, "Query");
                let q = r.cstr()?;
                r.finish()?;
                FrontendMessage::Query(q)
            }
            b'P' => {
                let mut r = Reader::new(&body, "Parse");
                let name = r.cstr()?;
                let query = r.cstr()?;
                let n = r.count16()?;
                let mut param_types = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    param_types.push(r.i32()?);
                }
                r.finish()?;
                FrontendMessage::Parse {
                    name,
                    query,
                    param_types,
                }
            }
            b'B' => {
                let mut r = Reader::new(&body, "Bind");
                let portal = r.cstr()?;
                let statement = r.cstr()?;
                let nf = r.count16()?;
                let mut param_formats = Vec::with_capacity(nf.min(1024));
                for _ in 0..nf {
                    param_formats.push(r.i16()?);
                }
                let np = r.count16()?;
                let mut params = Vec::with_capacity(np.min(1024));
                for _ in 0..np {
                    params.push(r.nullable()?);
                }
                let nr = r.count16()?;
                let mut result_formats = Vec::with_capacity(nr.min(1024));
                for _ in 0..nr {
                    result_formats.push(r.i16()?);
                }
                r.finish()?;
                FrontendMessage::Bind(Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                })
            }
            b'D' | b'C' => {
                let what = if frame.tag() == b'D' {
                    "Describe"
                } else {
                    "Close"
                };
                let mut r = Reader::new(&body, what);
                let target = Target::decode(r.u8()?, what)?;
                let name = r.cstr()?;
                r.finish()?;
                if frame.tag() == b'D' {
                    FrontendMessage::Describe { target, name }
                } else {
                    FrontendMessage::Close { target, name }
                }
            }
            b'E' => {
                let mut r = Reader::new(&body, "Execute");
                let portal = r.cstr()?;
                let max_rows = r.i32()?;
                r.finish()?;
                FrontendMessage::Execute { portal, max_rows }
            }
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
            b'f' => {
                let mut r = Reader::new(&body, "CopyFail");
                let m = r.cstr()?;
                r.finish()?;
                FrontendMessage::CopyFail(m)
            }
            b'F' => {
                let mut r = Reader::new(&body, "FunctionCall");
                let oid = r.i32()?;
                let nf = r.count16()?;
                let mut arg_formats = Vec::with_capacity(nf.min(1024));
                for _ in 0..nf {
                    arg_formats.push(r.i16()?);
                }
                let na = r.count16()?;
                let mut args = Vec::with_capacity(na.min(1024));
                for _ in 0..na {
                    args.push(r.nullable()?);
                }
                let result_format = r.i16()?;
                r.finish()?;
                FrontendMessage::FunctionCall(FunctionCall {
                    oid,
                    arg_formats,
                    args,
                    result_format,
                })
            }
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
                w.cstr(name).cstr(query).i16(param_types.len() as i16);
                for t in param_types {
                    w.i32(*t);
                }
            }
            FrontendMessage::Bind(b) => {
                w = Writer::tagged(out, b'B');
                w.cstr(&b.portal).cstr(&b.statement);
                w.i16(b.param_formats.len() as i16);
                for f in &b.param_formats {
                    w.i16(*f);
                }
                w.i16(b.params.len() as i16);
                for p in &b.params {
                    w.nullable(p);
                }
                w.i16(b.result_formats.len() as i16);
                for f in &b.result_formats {
                    w.i16(*f);
                }
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
                w.i32(f.oid).i16(f.arg_formats.len() as i16);
                for x in &f.arg_formats {
                    w.i16(*x);
                }
                w.i16(f.args.len() as i16);
                for a in &f.args {
                    w.nullable(a);
                }
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
