//! The shutdown signal every task watches: a `watch` channel set to true once.
//! Its own module so that tasks outside the sessions need not import `shared`.

use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Resolves once shutdown was requested (or the sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// After the accept loop stopped: lets `sessions` finish their transactions and aborts
/// what is left at the shutdown deadline.
pub(crate) async fn drain_sessions(within: Duration, mut sessions: JoinSet<()>) {
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    if !sessions.is_empty() {
        tracing::info!(
            sessions = sessions.len(),
            "Shutting down: waiting for sessions to finish their transactions."
        );
    }
    loop {
        tokio::select! {
            next = sessions.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(sessions = sessions.len(), "Shutdown deadline reached: closing the remaining sessions.");
                sessions.abort_all();
                while sessions.join_next().await.is_some() {}
                break;
            }
        }
    }
}
