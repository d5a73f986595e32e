//! The proxy's connections to the databases: connect, start up, authenticate, and hand back
//! a raw message stream.

mod connect;
mod error;
pub mod read;

pub use connect::{connect, send_cancel, BackendConn, CancelAddr, ConnectOptions};
pub use error::BackendError;

/// Which database a connection goes to; names it in messages and metric labels.
pub use switchyard_core::db::Db;
