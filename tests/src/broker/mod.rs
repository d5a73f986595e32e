//! A real Kafka-protocol broker process (`tansu`, in-memory storage) for end-to-end tests.
//!
//! Topics are not created automatically: use [`Broker::create_topic`]. The in-memory storage
//! loses every topic, message and committed offset when the process stops, so
//! [`Broker::restart`] gives an empty broker on the same address.

mod admin;
mod binary;
mod process;

pub use binary::{tansu_bin, TANSU_VERSION};
pub use process::Broker;
