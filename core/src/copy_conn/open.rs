//! Opening a COPY session: the URL's hosts in turn, TCP with TLS as the URL says or a Unix
//! socket, then the shared startup ([`crate::handshake`]).

use super::CopyConnError;
use crate::handshake::{handshake, Startup};
use crate::tls::TlsSettings;
use crate::tls_stream::{negotiate, Binding, DbStream};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::Host;
use tokio_postgres::Config;

pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket under the stream, for its socket options.
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}
impl Stream for tokio::net::TcpStream {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}
impl Stream for tokio::net::UnixStream {}
impl Stream for DbStream {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(DbStream::tcp(self))
    }
}

/// Connects to `url` and starts the session; what the server sent after its first
/// ReadyForQuery is left in `rbuf`.
pub(super) async fn connect(
    url: &str,
    application_name: &str,
    rbuf: &mut BytesMut,
    max_message: usize,
) -> Result<Box<dyn Stream>, CopyConnError> {
    let tls = crate::tls::settings_for_url(url)?;
    let config: Config = crate::tls::strip_tls_params(url)
        .parse()
        .map_err(CopyConnError::Url)?;
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let mut last = None;
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = config
            .get_ports()
            .get(i)
            .or(config.get_ports().first())
            .copied()
            .unwrap_or(5432);
        match tokio::time::timeout(timeout, open(host, port, &tls)).await {
            Ok(Ok((mut stream, binding))) => {
                let startup = Startup {
                    user: config.get_user().unwrap_or("postgres"),
                    password: config.get_password(),
                    params: &params(&config, application_name),
                    binding: &binding,
                    max_message,
                };
                handshake(&mut *stream, rbuf, &startup)
                    .await
                    .map_err(|e| CopyConnError::of_handshake(e, || describe(host, port)))?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(CopyConnError::Timeout {
                    addr: describe(host, port),
                    secs: timeout.as_secs(),
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| CopyConnError::Protocol("the URL names no host".into())))
}

async fn open(
    host: &Host,
    port: u16,
    tls: &TlsSettings,
) -> Result<(Box<dyn Stream>, Binding), CopyConnError> {
    match host {
        Host::Tcp(name) => {
            let s = tokio::net::TcpStream::connect((name.as_str(), port))
                .await
                .map_err(|source| CopyConnError::Connect {
                    addr: describe(host, port),
                    source,
                })?;
            let _ = s.set_nodelay(true);
            let s = negotiate(s, tls, name)
                .await
                .map_err(|source| CopyConnError::Negotiate {
                    addr: describe(host, port),
                    source,
                })?;
            let binding = Binding::of(&s, tls);
            Ok((Box::new(s), binding))
        }
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let s = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|source| CopyConnError::Connect {
                    addr: path.display().to_string(),
                    source,
                })?;
            Ok((Box::new(s), Binding::plain(tls)))
        }
    }
}

fn describe(host: &Host, port: u16) -> String {
    match host {
        Host::Tcp(name) => format!("{name}:{port}"),
        Host::Unix(dir) => dir.join(format!(".s.PGSQL.{port}")).display().to_string(),
    }
}

/// The startup parameters of every COPY session besides the user: the URL's database and
/// options, UTF-8 (COPY's text output is handed out as Rust strings).
fn params<'a>(config: &'a Config, application_name: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![("client_encoding", "UTF8")];
    if let Some(db) = config.get_dbname() {
        params.push(("database", db));
    }
    params.push((
        "application_name",
        config.get_application_name().unwrap_or(application_name),
    ));
    if let Some(options) = config.get_options() {
        params.push(("options", options));
    }
    params
}
