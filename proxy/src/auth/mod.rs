//! Client authentication to the proxy: stored secrets and the server side of SCRAM-SHA-256
//! and MD5. (The proxy's own authentication to the databases is in `backend::auth`.)

mod md5;
mod scram;
mod secret;

pub use md5::{md5_challenge_response_matches, md5_hex};
pub use scram::{ScramError, ScramServer};
pub use secret::{ScramVerifier, Secret, SecretError};
