//! switchyard-proxy: a PostgreSQL wire-protocol proxy that sits in front of an application
//! during a database move. `main.rs` only parses arguments; everything runs from here so
//! tests can start a proxy in-process.

pub mod admin;
pub mod auth;
pub mod backend;
mod background;
pub mod cancel;
pub mod classify;
pub mod cli;
pub mod config;
pub mod counters;
pub mod cutover;
pub mod dashboard;
pub mod failpoint;
pub mod frontend;
mod frontend_limits;
pub mod health;
pub mod history;
pub mod metrics;
pub mod mirror;
pub mod progress;
pub mod protocol;
pub mod server;
mod session_threads;
pub mod shadow;
pub mod shared;
pub mod shutdown;
pub mod tls;

/// Prepared statements, portals and plans by name, looked up on every Parse, Bind and
/// Execute: foldhash rather than SipHash, which was a twentieth of the proxy's
/// instructions per prepared-mode transaction (callgrind).
pub(crate) type NameMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

pub use config::ProxyConfig;
pub use server::{start, RunningProxy, StartError};
