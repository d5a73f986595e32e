//! A bounded, shared cache from literal-blind SQL text to its classification.

use super::normalize::literal_blind_key_into;
use super::{classify_uncached, Classified};
use dashmap::DashMap;
use std::cell::RefCell;
use std::sync::Arc;

/// Keys longer than this are classified every time: huge generated statements would
/// otherwise fill memory with one-off entries.
const MAX_KEY_LEN: usize = 4096;

thread_local! {
    /// The key of the statement being classified: built for every statement the proxy
    /// sees, so it reuses one buffer per thread instead of allocating each time.
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Shared by all sessions. When full it is cleared rather than evicted piecemeal: shapes in
/// an application are few, so a clear is rare and refills quickly.
pub struct Classifier {
    // foldhash rather than SipHash: hashing the key was a tenth of the lookup's cost
    // (callgrind, pgbench select-only), and its seed is still random per process.
    cache: DashMap<String, Arc<[Classified]>, foldhash::fast::RandomState>,
    capacity: usize,
}

impl Classifier {
    pub fn new(capacity: usize) -> Self {
        Classifier {
            cache: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            capacity,
        }
    }

    /// Classifies every statement in `sql`; returns whether it was a cache hit as well.
    pub fn classify(&self, sql: &str) -> (Arc<[Classified]>, bool) {
        KEY.with(|key| match key.try_borrow_mut() {
            Ok(mut key) => self.classify_with(sql, &mut key),
            // Only re-entry could get here, and nothing classifies from inside a lookup.
            Err(_) => self.classify_with(sql, &mut String::new()),
        })
    }

    fn classify_with(&self, sql: &str, key: &mut String) -> (Arc<[Classified]>, bool) {
        let cacheable = literal_blind_key_into(sql, key, MAX_KEY_LEN).is_some();
        if cacheable {
            if let Some(hit) = self.cache.get(key.as_str()) {
                return (hit.clone(), true);
            }
        }
        let result: Arc<[Classified]> = classify_uncached(sql).into();
        if cacheable {
            if self.cache.len() >= self.capacity {
                self.cache.clear();
            }
            self.cache.insert(key.clone(), result.clone());
        }
        (result, false)
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_for_same_shape_and_stays_bounded() {
        let c = Classifier::new(2);
        assert!(!c.classify("SELECT 1").1);
        assert!(c.classify("SELECT 2").1);
        c.classify("SELECT a FROM t");
        c.classify("SELECT b FROM t");
        assert!(c.len() <= 2);
    }

    #[test]
    fn long_statements_are_not_cached() {
        let c = Classifier::new(8);
        let long = format!("SELECT {} FROM t", "a, ".repeat(2000) + "a");
        assert!(!c.classify(&long).1);
        assert!(!c.classify(&long).1);
        assert!(c.is_empty());
    }
}
