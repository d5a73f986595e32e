//! Cancel keys: each session gets the proxy's own (pid, key) pair, mapped to its backend's,
//! so a client's CancelRequest reaches the right server process and nothing else.

use bytes::Bytes;
use dashmap::DashMap;
use std::sync::atomic::{AtomicI32, Ordering};

/// Where a cancel for one session must go.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub to: crate::backend::CancelAddr,
    pub pid: i32,
    pub key: Bytes,
}

#[derive(Default)]
pub struct CancelRegistry {
    next_pid: AtomicI32,
    sessions: DashMap<i32, (Bytes, CancelTarget)>,
}

impl CancelRegistry {
    /// Allocates the client-facing key for a new session.
    pub fn register(&self, target: CancelTarget) -> (i32, Bytes) {
        let pid = self
            .next_pid
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1);
        let key = Bytes::copy_from_slice(&rand::random::<[u8; 4]>());
        self.sessions.insert(pid, (key.clone(), target));
        (pid, key)
    }

    /// The session moved to another server connection (the cutover moved writes).
    pub fn retarget(&self, pid: i32, target: CancelTarget) {
        if let Some(mut entry) = self.sessions.get_mut(&pid) {
            entry.value_mut().1 = target;
        }
    }

    pub fn unregister(&self, pid: i32) {
        self.sessions.remove(&pid);
    }

    /// The backend to cancel, if `pid` and `key` match a live session.
    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<CancelTarget> {
        let entry = self.sessions.get(&pid)?;
        let (expected, target) = entry.value();
        (expected.len() == key.len()
            && expected
                .iter()
                .zip(key)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0)
            .then(|| target.clone())
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_key_cancels() {
        let r = CancelRegistry::default();
        let t = CancelTarget {
            to: crate::backend::CancelAddr {
                addr: "h:1".into(),
                host: "h".into(),
                tls: std::sync::Arc::new(switchyard_core::tls::TlsSettings::disabled()),
            },
            pid: 42,
            key: Bytes::from_static(b"abcd"),
        };
        let (pid, key) = r.register(t);
        assert_eq!(r.lookup(pid, &key).map(|t| t.pid), Some(42));
        assert!(r.lookup(pid, b"zzzz").is_none());
        r.unregister(pid);
        assert!(r.lookup(pid, &key).is_none());
    }
}
