//! The client side: the first packets and authentication, then the session that forwards
//! messages between the client and its primary connection.

mod auth;
mod reply;
mod session;
mod startup;
mod stream;

pub use startup::handle_client;
pub use stream::ClientStream;

/// Sends a FATAL ErrorResponse on any stream.
pub async fn send_fatal<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) {
    reply::send_error(w, &reply::fatal(code, message)).await;
}
