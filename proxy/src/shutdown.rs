//! The shutdown signal every task watches: a `watch` channel set to true once.
//! Its own module so that tasks outside the sessions need not import `shared`.

use tokio::sync::watch;

/// Resolves once shutdown was requested (or the sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
