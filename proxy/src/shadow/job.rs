//! One sampled statement on its way to the workers: everything needed to replay it, owned,
//! so the client's buffers are not held while it waits.

use super::sample::Kind;
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Job {
    pub kind: Kind,
    pub fingerprint: u64,
    pub sql: Arc<str>,
    pub param_types: Vec<i32>,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    /// The session's settings, as statements to replay.
    pub settings: Arc<[String]>,
    /// 0 for the first comparison, 1 for the re-check after a mismatch.
    pub attempt: u8,
    /// On a re-check: the signature of the first mismatch, which must recur to confirm.
    pub first_mismatch: Option<u64>,
}
