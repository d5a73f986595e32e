//! Shared pieces of Switchyard that more than one binary needs.

pub mod config_layer;
pub mod dsn;
pub mod recover;
pub mod retry;
