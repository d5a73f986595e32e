//! Types created in the database (enums, domains, composites) get their OIDs when created,
//! so old and new usually number them differently, and a client that learned a type by
//! old's OID would misread a row description from new. When both sides happen to give a
//! type the same OID under the same schema-qualified name (a schema built by the same
//! script in the same order), a read of that type may go to new after all. The set of such
//! OIDs is read from both catalogs, again when a read names an OID not seen before (a type
//! created since), at most once per `REFRESH_EVERY`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// User types numbered alike on old and new.
#[derive(Default)]
pub struct SameTypes {
    same: RwLock<HashSet<u32>>,
    /// Every OID the last refresh saw on either side.
    known: RwLock<HashSet<u32>>,
    refreshing: AtomicBool,
    last: Mutex<Option<Instant>>,
}

const USER_TYPES: &str = "SELECT t.oid, n.nspname, t.typname FROM pg_type t \
     JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid >= 16384";

impl SameTypes {
    /// Whether every OID is a user type numbered alike on both sides. An OID not seen
    /// before asks for a refresh (`refresh` says whether to start one).
    pub fn covers(&self, oids: &[u32]) -> Covers {
        let same = self.same.read().map(|s| oids.iter().all(|o| s.contains(o)));
        if same.unwrap_or(false) {
            return Covers::Yes;
        }
        let unseen = self
            .known
            .read()
            .map(|k| oids.iter().any(|o| !k.contains(o)))
            .unwrap_or(true);
        if unseen && self.may_refresh() {
            Covers::NoRefresh
        } else {
            Covers::No
        }
    }

    fn may_refresh(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY)
            || self.refreshing.swap(true, Ordering::AcqRel)
        {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Reads both catalogs and keeps the OIDs that name the same type on both.
    pub async fn refresh(
        &self,
        old: &Client,
        new: &Client,
    ) -> Result<usize, tokio_postgres::Error> {
        let result = async {
            let (o, n) = tokio::try_join!(old.query(USER_TYPES, &[]), new.query(USER_TYPES, &[]))?;
            let names = |rows: &[tokio_postgres::Row]| {
                rows.iter()
                    .map(|r| {
                        (
                            r.get::<_, u32>(0),
                            (r.get::<_, String>(1), r.get::<_, String>(2)),
                        )
                    })
                    .collect::<std::collections::HashMap<_, _>>()
            };
            let (o, n) = (names(&o), names(&n));
            let same: HashSet<u32> = o
                .iter()
                .filter(|(oid, name)| n.get(oid) == Some(name))
                .map(|(oid, _)| *oid)
                .collect();
            let known: HashSet<u32> = o.keys().chain(n.keys()).copied().collect();
            Ok::<_, tokio_postgres::Error>((same, known))
        }
        .await;
        self.refreshing.store(false, Ordering::Release);
        let (same, known) = result?;
        let count = same.len();
        if let Ok(mut s) = self.same.write() {
            *s = same;
        }
        if let Ok(mut k) = self.known.write() {
            *k = known;
        }
        Ok(count)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Covers {
    Yes,
    No,
    /// Not known to be alike; the caller should start a refresh.
    NoRefresh,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_oids_ask_for_one_refresh_at_a_time() {
        let t = SameTypes::default();
        assert_eq!(t.covers(&[16400]), Covers::NoRefresh);
        // Refreshing already (or just refreshed): no second one.
        assert_eq!(t.covers(&[16400]), Covers::No);
        *t.same.write().unwrap() = [16400, 16401].into();
        *t.known.write().unwrap() = [16400, 16401, 16402].into();
        assert_eq!(t.covers(&[16400, 16401]), Covers::Yes);
        assert_eq!(t.covers(&[16400, 16402]), Covers::No, "known to differ");
        t.refreshing.store(false, Ordering::Release);
        *t.last.lock().unwrap() = Some(Instant::now() - REFRESH_EVERY);
        assert_eq!(
            t.covers(&[16500]),
            Covers::NoRefresh,
            "a type created since"
        );
    }
}
