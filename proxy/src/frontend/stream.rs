//! A client connection, plain or TLS, as one stream type.

use switchyard_core::plain_or_tls::PlainOrTls;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub type ClientStream = PlainOrTls<TcpStream, Box<TlsStream<TcpStream>>>;
