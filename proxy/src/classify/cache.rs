//! A bounded, shared cache from literal-blind SQL text to its classification.

use super::{classify_uncached, literal_blind_key, Classified};
use dashmap::DashMap;
use std::sync::Arc;

/// Keys longer than this are classified every time: huge generated statements would
/// otherwise fill memory with one-off entries.
const MAX_KEY_LEN: usize = 4096;

/// Shared by all sessions. When full it is cleared rather than evicted piecemeal: shapes in
/// an application are few, so a clear is rare and refills quickly.
pub struct Classifier {
    cache: DashMap<String, Arc<[Classified]>>,
    capacity: usize,
}

impl Classifier {
    pub fn new(capacity: usize) -> Self {
        Classifier {
            cache: DashMap::new(),
            capacity,
        }
    }

    /// Classifies every statement in `sql`; returns whether it was a cache hit as well.
    pub fn classify(&self, sql: &str) -> (Arc<[Classified]>, bool) {
        let key = literal_blind_key(sql).filter(|k| k.len() <= MAX_KEY_LEN);
        if let Some(k) = &key {
            if let Some(hit) = self.cache.get(k) {
                return (hit.clone(), true);
            }
        }
        let result: Arc<[Classified]> = classify_uncached(sql).into();
        if let Some(k) = key {
            if self.cache.len() >= self.capacity {
                self.cache.clear();
            }
            self.cache.insert(k, result.clone());
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
}
