//! What the primary's catalog says about routines, for planning: which functions may write
//! (volatile, outside the system schemas: a `SELECT f()` that calls one is mirrored in
//! lockstep) and which procedures never end their transaction themselves (a `CALL` of one
//! can be wrapped in a transaction the proxy holds open). Refreshed in the background and
//! after DDL; a stale answer costs lockstep, never a write (the change log still has it).

use super::plan::{controls_transactions, Routines};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Names (bare and schema-qualified) of volatile user functions.
    writers: HashSet<String>,
    /// Procedures whose every overload is SQL or PL/pgSQL without COMMIT, ROLLBACK or CALL.
    plain: HashSet<String>,
    /// A user constraint trigger is deferrable: it may write at COMMIT, so a commit fires
    /// the deferred triggers before it drains the capture.
    pub deferred_writers: bool,
}

impl Routines for Snapshot {
    fn may_write(&self, name: &str) -> bool {
        self.writers.contains(name)
    }
    fn plain_procedure(&self, name: &str) -> bool {
        self.plain.contains(name)
    }
}

#[derive(Default)]
pub struct RoutineSet {
    current: RwLock<Arc<Snapshot>>,
}

const ROUTINES_SQL: &str = "
SELECT p.proname::text, n.nspname::text, p.prokind::text, l.lanname::text, coalesce(p.prosrc, '')
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '_switchyard')
  AND (p.prokind = 'p' OR (p.prokind = 'f' AND p.provolatile = 'v'))";

impl RoutineSet {
    pub fn current(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Reads the primary's routines; true when they changed (cached plans are then stale).
    pub async fn refresh(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        let rows = client.query(ROUTINES_SQL, &[]).await?;
        let mut next = Snapshot::default();
        let mut procedures: HashMap<String, bool> = HashMap::new();
        for r in rows {
            let (name, schema, kind, language, source): (String, String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let qualified = format!("{schema}.{name}");
            if kind == "p" {
                let plain = matches!(language.as_str(), "sql" | "plpgsql")
                    && !controls_transactions(&source);
                for n in [name, qualified] {
                    let e = procedures.entry(n).or_insert(true);
                    *e &= plain;
                }
            } else {
                next.writers.insert(name);
                next.writers.insert(qualified);
            }
        }
        next.deferred_writers = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgdeferrable AND NOT tgisinternal)",
                &[],
            )
            .await?
            .get(0);
        next.plain = procedures
            .into_iter()
            .filter_map(|(n, plain)| plain.then_some(n))
            .collect();
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if **current == next {
            return Ok(false);
        }
        *current = Arc::new(next);
        Ok(true)
    }
}
