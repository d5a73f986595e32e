//! Turning clients away politely when the proxy is full.

use crate::frontend::send_fatal;
use tokio::net::TcpStream;

/// Answers with PostgreSQL's own "too many clients" error, then closes.
pub async fn refuse_too_many(mut tcp: TcpStream) {
    send_fatal(&mut tcp, "53300", "sorry, too many clients already").await;
}
