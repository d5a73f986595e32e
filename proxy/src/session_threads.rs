//! Sessions on a fixed set of threads, each running its own single-threaded runtime: the
//! accept loop hands every new connection to the next thread in turn, and the session
//! (with the tasks it spawns: its connections to the databases) stays there until it
//! ends.
//!
//! Why not one work-stealing runtime: with the proxy, pgbench and the servers sharing a
//! few cores, the multi-threaded scheduler woke idle workers to steal tasks on most
//! messages; measured (`bench/proxy_cpu.sh`), the proxy spent 15–40 % more CPU per
//! transaction than on a single thread, which served as many transactions with less.
//! A thread per core keeps the single thread's cost and still uses every core; the price
//! is no rebalancing of sessions between threads (like PgBouncer's `so_reuseport`
//! processes).

use crate::frontend::handle_client;
use crate::shared::Shared;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinSet;

/// A connection for a session thread, with its connection-limit permit.
struct Job {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// The threads, and how to reach them.
pub struct SessionThreads {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    done: Vec<oneshot::Receiver<()>>,
    next: AtomicUsize,
}

impl SessionThreads {
    /// Starts `n` threads serving sessions of `shared`.
    pub fn start(shared: &Arc<Shared>, n: usize) -> std::io::Result<SessionThreads> {
        let mut senders = Vec::with_capacity(n);
        let mut done = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("switchyard-sessions-{i}"))
                .spawn(move || {
                    runtime.block_on(serve_thread(shared, rx));
                    let _ = done_tx.send(());
                })?;
            senders.push(tx);
            done.push(done_rx);
        }
        Ok(SessionThreads {
            senders,
            done,
            next: AtomicUsize::new(0),
        })
    }

    /// Hands an accepted connection to the next thread.
    pub fn dispatch(
        &self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        // Leaves this runtime's reactor; the session thread registers it with its own.
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "Could not hand a connection to a session thread.");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send(Job { tcp, peer, permit }).is_err() {
            tracing::warn!(%peer, thread = i, "A session thread has stopped; connection closed.");
        }
    }

    /// Stops handing out connections and waits until every thread has finished its
    /// sessions (each ends them at the shutdown deadline).
    pub async fn finish(self) {
        drop(self.senders);
        for d in self.done {
            let _ = d.await;
        }
    }
}

async fn serve_thread(shared: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(Job { tcp, peer, permit }) => match tokio::net::TcpStream::from_std(tcp) {
                    Ok(tcp) => {
                        let shared = shared.clone();
                        sessions.spawn(async move {
                            handle_client(shared, tcp, peer).await;
                            drop(permit);
                        });
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "Could not register a connection on a session thread."),
                },
                // The accept loop stopped: shutting down.
                None => break,
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    crate::shutdown::drain_sessions(shared.config.shutdown_timeout(), sessions).await;
}
