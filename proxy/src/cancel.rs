//! Cancel keys. A session's client sees its primary backend's own process id (so
//! `pg_backend_pid()`, notifications and `pg_terminate_backend` agree with what the driver
//! was told) beside a key of the proxy's own, which maps to every backend the session has
//! open: a client's CancelRequest reaches them and nothing else.

use bytes::Bytes;
use dashmap::DashMap;

/// Where a cancel for one of a session's backends must go.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub to: crate::backend::CancelAddr,
    pub pid: i32,
    pub key: Bytes,
}

/// What the client was given in BackendKeyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub pid: i32,
    pub key: [u8; 4],
}

/// The live sessions' keys. Process ids alone are not unique here: two servers hand them
/// out (old's and, once a session moved, new's), so the key is part of the lookup.
#[derive(Default)]
pub struct CancelRegistry {
    sessions: DashMap<SessionKey, Vec<CancelTarget>>,
}

impl CancelRegistry {
    /// Allocates the client-facing key of a new session whose primary backend is `primary`.
    pub fn register(&self, primary: CancelTarget) -> SessionKey {
        loop {
            let k = SessionKey {
                pid: primary.pid,
                key: rand::random(),
            };
            if let dashmap::Entry::Vacant(slot) = self.sessions.entry(k) {
                slot.insert(vec![primary]);
                return k;
            }
        }
    }

    /// The session's backends changed: a connection to the other database opened, or the
    /// cutover moved its writes. The first target is the primary.
    pub fn set(&self, k: SessionKey, targets: Vec<CancelTarget>) {
        if let Some(mut entry) = self.sessions.get_mut(&k) {
            *entry.value_mut() = targets;
        }
    }

    pub fn unregister(&self, k: SessionKey) {
        self.sessions.remove(&k);
    }

    /// The backends to cancel, none unless `pid` and `key` name a live session.
    pub fn lookup(&self, pid: i32, key: &[u8]) -> Vec<CancelTarget> {
        let Ok(key) = <[u8; 4]>::try_from(key) else {
            return Vec::new();
        };
        self.sessions
            .get(&SessionKey { pid, key })
            .map(|e| e.value().clone())
            .unwrap_or_default()
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

    fn target(pid: i32) -> CancelTarget {
        CancelTarget {
            to: crate::backend::CancelAddr {
                addr: "h:1".into(),
                host: "h".into(),
                tls: std::sync::Arc::new(switchyard_core::tls::TlsSettings::disabled()),
            },
            pid,
            key: Bytes::from_static(b"abcd"),
        }
    }

    #[test]
    fn only_the_right_key_cancels_every_backend_of_the_session() {
        let r = CancelRegistry::default();
        let k = r.register(target(42));
        assert_eq!(k.pid, 42, "the client sees its primary's own pid");
        let pids = |found: Vec<CancelTarget>| found.iter().map(|t| t.pid).collect::<Vec<_>>();
        assert_eq!(pids(r.lookup(42, &k.key)), [42]);
        let wrong = [k.key[0] ^ 1, k.key[1], k.key[2], k.key[3]];
        assert!(r.lookup(42, &wrong).is_empty());
        assert!(r.lookup(42, b"short").is_empty());
        r.set(k, vec![target(42), target(7)]);
        assert_eq!(pids(r.lookup(42, &k.key)), [42, 7]);
        r.unregister(k);
        assert!(r.lookup(42, &k.key).is_empty());
    }

    #[test]
    fn sessions_with_the_same_pid_on_two_servers_stay_apart() {
        let r = CancelRegistry::default();
        let a = r.register(target(42));
        let b = r.register(target(42));
        assert_ne!(a.key, b.key);
        r.set(b, vec![target(99)]);
        assert_eq!(r.lookup(42, &a.key)[0].pid, 42);
        assert_eq!(r.lookup(42, &b.key)[0].pid, 99);
        assert_eq!(r.len(), 2);
    }
}
