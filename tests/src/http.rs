//! A minimal HTTP/1.1 GET for admin-endpoint tests (no client library needed for that).

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Returns (status code, body).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    request(addr, "GET", path, "").await
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    request_full(addr, method, path, body)
        .await
        .map(|(status, _, body)| (status, body))
}

/// Returns (status code, the header block, body).
pub async fn request_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String, String)> {
    request_with(addr, method, path, body, "").await
}

/// `request_full` with extra header lines (each ending in `\r\n`).
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> Result<(u16, String, String)> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .context("connecting to the admin server")?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, rest) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .context("no status code")?
            .parse()
            .context("bad status code")?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(rest)?
        } else {
            rest.to_string()
        };
        Ok::<_, anyhow::Error>((status, head.to_string(), body))
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(r) => r,
        Err(_) => bail!("HTTP {method} {path} timed out"),
    }
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("bad chunk header")?;
        let n = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("short chunk")?);
        s = rest.get(n + 2..).context("short chunk trailer")?;
    }
}

/// GETs `path` from the proxy's admin server as JSON; any status but 200 is an error.
pub async fn admin_json(
    proxy: &switchyard_proxy::RunningProxy,
    path: &str,
) -> Result<serde_json::Value> {
    let addr = proxy
        .admin_addr()
        .context("the proxy has no admin server")?;
    let (code, body) = get(addr, path).await?;
    if code != 200 {
        bail!("GET {path}: HTTP {code}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
}
