//! A connection to a database opened by hand (the proxy's sessions and its shadow reads,
//! the backfill's COPY path), plain or TLS as [`TlsSettings`] say: the `SSLRequest`
//! exchange, the rustls handshake, one stream type for both, its halves, the data SCRAM's
//! channel binding needs, and the SCRAM mechanism choice with libpq's `channel_binding`.
//! tokio-postgres connections get the same settings through [`pg_connector`].

pub use crate::plain_or_tls::PlainOrTls;
use crate::tls::{ChannelBinding, SslMode, TlsSettings};
use postgres_protocol::authentication::sasl;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Writes all of `data` and flushes it. Over TLS a write may return with the last record
/// still in rustls's buffer (the socket, or the task's cooperative budget, said "not now"),
/// and only a flush sends it: a request written without one can sit there unsent while
/// the writer waits for the answer. Plain TCP flushes are free.
pub async fn write_flushed<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    data: &[u8],
) -> io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// The `SSLRequest` code (1234 in the high 16 bits, 5679 in the low).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Why a TLS session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    #[error(
        "the server does not accept TLS connections, and sslmode={0} requires one (turn \
         ssl on at the server, or lower sslmode)"
    )]
    Refused(&'static str),
    #[error("the server answered the TLS request with {0:?}, not S or N")]
    Unexpected(u8),
    #[error("{0:?} is not a valid host name for TLS")]
    ServerName(String),
    #[error("TLS handshake: {0}")]
    Handshake(#[source] io::Error),
    #[error("asking the server for TLS: {0}")]
    Io(#[source] io::Error),
}

/// Runs the `SSLRequest` exchange on a fresh connection to `host` and, when the server
/// accepts, the TLS handshake. A server that refuses leaves a plain stream where `settings`
/// allow it.
pub async fn negotiate(
    mut tcp: TcpStream,
    settings: &TlsSettings,
    host: &str,
) -> Result<DbStream, NegotiateError> {
    let Some(config) = settings.client_config() else {
        return Ok(DbStream::Plain(tcp));
    };
    tcp.write_all(&SSL_REQUEST)
        .await
        .map_err(NegotiateError::Io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(NegotiateError::Io)?;
    match answer[0] {
        b'S' => {}
        b'N' if settings.mode.requires_tls() => {
            return Err(NegotiateError::Refused(settings.mode.as_str()))
        }
        b'N' => return Ok(DbStream::Plain(tcp)),
        other => return Err(NegotiateError::Unexpected(other)),
    }
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| NegotiateError::ServerName(host.to_string()))?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(NegotiateError::Handshake)?;
    Ok(DbStream::Tls(Box::new(tls)))
}

/// A database connection, plain or TLS.
pub type DbStream = PlainOrTls<TcpStream, Box<TlsStream<TcpStream>>>;

impl DbStream {
    /// The TCP socket under the stream, for its socket options.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            DbStream::Plain(s) => s,
            DbStream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, DbStream::Tls(_))
    }

    /// `tls-server-end-point` channel binding data (RFC 5929): the hash of the server's
    /// certificate with its signature's hash function (SHA-256 for MD5 and SHA-1); None on
    /// a plain stream or for a signature without one hash function (Ed25519).
    pub fn channel_binding(&self) -> Option<Vec<u8>> {
        let DbStream::Tls(s) = self else { return None };
        let cert = s.get_ref().1.peer_certificates()?.first()?;
        end_point_hash(cert.as_ref())
    }

    /// Read and write halves that can be used from two tasks.
    pub fn into_split(self) -> (DbRead, DbWrite) {
        match self {
            DbStream::Plain(s) => {
                let (r, w) = s.into_split();
                (DbRead::Plain(r), DbWrite::Plain(w))
            }
            DbStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (DbRead::Tls(r), DbWrite::Tls(w))
            }
        }
    }

    /// Joins halves made by [`DbStream::into_split`].
    pub fn unsplit(r: DbRead, w: DbWrite) -> Option<DbStream> {
        match (r, w) {
            (DbRead::Plain(r), DbWrite::Plain(w)) => r.reunite(w).ok().map(DbStream::Plain),
            (DbRead::Tls(r), DbWrite::Tls(w)) => Some(DbStream::Tls(Box::new(r.unsplit(w)))),
            _ => None,
        }
    }
}

fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let oid = cert.signature_algorithm.oid.to_string();
    // RFC 5929 4.1: the signature's hash, with MD5 and SHA-1 replaced by SHA-256.
    Some(match oid.as_str() {
        // sha1/sha256/md5 WithRSA, ecdsa-with-SHA1/SHA256, RSASSA-PSS (SHA-256 in practice).
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.113549.1.1.10" => Sha256::digest(der).to_vec(),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(der).to_vec(),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(der).to_vec(),
        _ => return None,
    })
}

/// The read half of a [`DbStream`].
pub type DbRead = PlainOrTls<OwnedReadHalf, ReadHalf<TlsStream<TcpStream>>>;

/// The write half of a [`DbStream`].
pub type DbWrite = PlainOrTls<OwnedWriteHalf, WriteHalf<TlsStream<TcpStream>>>;

/// Why SCRAM could not start as `channel_binding` asks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindingError {
    #[error(
        "channel_binding=require, but the server did not offer SCRAM-SHA-256-PLUS{}",
        if *.tls { "" } else { " (the connection is not encrypted)" }
    )]
    NotOffered { tls: bool },
    #[error("channel_binding=require, but the server authenticated without SCRAM")]
    NotUsed,
    #[error("the server offers no SASL mechanism supported here ({0})")]
    NoMechanism(String),
}

/// The SASL mechanism and channel binding to answer `mechanisms` with: `-PLUS` over TLS
/// when offered (unless `channel_binding=disable`), else plain SCRAM saying whether this
/// client could have bound (so a server stripped of `-PLUS` by a man in the middle
/// notices); `channel_binding=require` refuses anything but `-PLUS`.
pub fn scram_mechanism(
    mechanisms: &[String],
    binding_data: Option<Vec<u8>>,
    tls: bool,
    setting: ChannelBinding,
) -> Result<(&'static str, sasl::ChannelBinding), BindingError> {
    let plus = mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256_PLUS);
    let plain = mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256);
    match (setting, binding_data) {
        (ChannelBinding::Disable, _) if plain => {
            Ok((sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()))
        }
        (ChannelBinding::Prefer | ChannelBinding::Require, Some(data)) if plus => Ok((
            sasl::SCRAM_SHA_256_PLUS,
            sasl::ChannelBinding::tls_server_end_point(data),
        )),
        (ChannelBinding::Require, _) => Err(BindingError::NotOffered { tls }),
        (ChannelBinding::Prefer, _) if plain && tls => {
            Ok((sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()))
        }
        (_, _) if plain => Ok((sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported())),
        _ => Err(BindingError::NoMechanism(mechanisms.join(", "))),
    }
}

/// What a connection offers for SCRAM's channel binding, and what its URL asks.
#[derive(Debug, Clone)]
pub struct Binding {
    pub data: Option<Vec<u8>>,
    pub tls: bool,
    pub setting: ChannelBinding,
}

impl Binding {
    pub fn of(stream: &DbStream, settings: &TlsSettings) -> Binding {
        Binding {
            data: stream.channel_binding(),
            tls: stream.is_tls(),
            setting: settings.channel_binding,
        }
    }

    /// A connection without TLS (a Unix socket).
    pub fn plain(settings: &TlsSettings) -> Binding {
        Binding {
            data: None,
            tls: false,
            setting: settings.channel_binding,
        }
    }

    /// See [`scram_mechanism`].
    pub fn choose(
        &self,
        mechanisms: &[String],
    ) -> Result<(&'static str, sasl::ChannelBinding), BindingError> {
        scram_mechanism(mechanisms, self.data.clone(), self.tls, self.setting)
    }

    /// With `channel_binding=require`, a session may start only after a bound exchange.
    pub fn check_done(&self, bound: bool) -> Result<(), BindingError> {
        if self.setting == ChannelBinding::Require && !bound {
            return Err(BindingError::NotUsed);
        }
        Ok(())
    }
}

/// tokio-postgres's TLS connector for these settings, with its `sslmode` and
/// `channel_binding` set on `config`. tokio-postgres knows `disable`, `prefer` and
/// `require`; the stronger modes are `require` plus the certificate checks built into the
/// rustls configuration.
pub fn pg_connector(
    config: &mut tokio_postgres::Config,
    settings: &TlsSettings,
) -> tokio_postgres_rustls::MakeRustlsConnect {
    use tokio_postgres::config::{ChannelBinding as Cb, SslMode as Pg};
    config.ssl_mode(match settings.mode {
        SslMode::Disable => Pg::Disable,
        SslMode::Allow | SslMode::Prefer => Pg::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
    });
    config.channel_binding(match settings.channel_binding {
        ChannelBinding::Disable => Cb::Disable,
        ChannelBinding::Prefer => Cb::Prefer,
        ChannelBinding::Require => Cb::Require,
    });
    let rustls = settings.client_config().unwrap_or_else(|| {
        // Never used with sslmode=disable; tokio-postgres still wants a connector.
        TlsSettings::plain_config()
    });
    tokio_postgres_rustls::MakeRustlsConnect::new((*rustls).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mechs(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scram_choice_follows_channel_binding() {
        let both = mechs(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        let only = mechs(&["SCRAM-SHA-256"]);
        let data = || Some(vec![1, 2, 3]);
        let pick = |m: &[String], d, tls, s| scram_mechanism(m, d, tls, s).map(|(n, _)| n);
        assert_eq!(
            pick(&both, data(), true, ChannelBinding::Prefer),
            Ok("SCRAM-SHA-256-PLUS")
        );
        assert_eq!(
            pick(&both, data(), true, ChannelBinding::Disable),
            Ok("SCRAM-SHA-256")
        );
        assert_eq!(
            pick(&only, data(), true, ChannelBinding::Prefer),
            Ok("SCRAM-SHA-256")
        );
        assert_eq!(
            pick(&only, data(), true, ChannelBinding::Require),
            Err(BindingError::NotOffered { tls: true })
        );
        assert_eq!(
            pick(&only, None, false, ChannelBinding::Require),
            Err(BindingError::NotOffered { tls: false })
        );
        assert!(matches!(
            pick(
                &mechs(&["OAUTHBEARER"]),
                None,
                false,
                ChannelBinding::Prefer
            ),
            Err(BindingError::NoMechanism(_))
        ));
    }
}
