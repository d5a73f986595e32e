//! A raw protocol client for tests that must send what real drivers never would: truncated
//! or oversized messages, unknown types, garbage, FunctionCall, a 3.2 startup.

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use switchyard_proxy::protocol::backend::{BackendMessage, ErrorFields};
use switchyard_proxy::protocol::startup::StartupRequest;
use switchyard_proxy::protocol::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Wire {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Wire {
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Wire> {
        let stream = TcpStream::connect(addr).await.context("connecting")?;
        stream.set_nodelay(true)?;
        Ok(Wire {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// Connects and completes a trust startup as `user` on `db`, up to ReadyForQuery.
    pub async fn startup(addr: std::net::SocketAddr, user: &str, db: &str) -> Result<Wire> {
        let mut w = Wire::connect(addr).await?;
        w.send_startup(3, 0, &[("user", user), ("database", db)])
            .await?;
        w.read_until_ready().await?;
        Ok(w)
    }

    pub async fn send_startup(
        &mut self,
        major: u16,
        minor: u16,
        params: &[(&str, &str)],
    ) -> Result<()> {
        let mut out = BytesMut::new();
        StartupRequest::Startup {
            major,
            minor,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
        .encode(&mut out);
        self.send_raw(&out).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .context("writing to the proxy")?;
        Ok(())
    }

    /// Next backend message; `Ok(None)` when the connection closed.
    pub async fn read(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = Frame::parse(&mut self.buf, 1 << 30)? {
                return Ok(Some(f));
            }
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .context("timed out reading from the proxy")?
                .context("reading from the proxy")?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads until ReadyForQuery; returns every message before it. Fails on close.
    pub async fn read_until_ready(&mut self) -> Result<Vec<Frame>> {
        let mut got = Vec::new();
        loop {
            match self.read().await? {
                Some(f) if f.tag() == b'Z' => return Ok(got),
                Some(f) => got.push(f),
                None => bail!(
                    "connection closed before ReadyForQuery; got tags {:?}",
                    tags(&got)
                ),
            }
        }
    }

    /// Reads until the connection closes; returns every message received.
    pub async fn read_until_closed(&mut self) -> Result<Vec<Frame>> {
        let mut got = Vec::new();
        while let Some(f) = self.read().await? {
            got.push(f);
        }
        Ok(got)
    }

    /// Sends a simple Query.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Frame>> {
        let mut out = BytesMut::new();
        switchyard_proxy::protocol::frontend::FrontendMessage::Query(sql.to_string())
            .encode(&mut out);
        self.send_raw(&out).await?;
        self.read_until_ready().await
    }

    /// True once the peer has closed (reads EOF within the timeout).
    pub async fn closed(&mut self) -> bool {
        self.read_until_closed().await.is_ok()
    }
}

pub fn tags(frames: &[Frame]) -> String {
    frames.iter().map(|f| f.tag() as char).collect()
}

/// The first ErrorResponse among `frames`.
pub fn first_error(frames: &[Frame]) -> Option<ErrorFields> {
    frames.iter().find_map(|f| match BackendMessage::decode(f) {
        Ok(BackendMessage::ErrorResponse(e)) => Some(e),
        _ => None,
    })
}

/// Raw bytes of one tagged message.
pub fn message(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out.freeze()
}
