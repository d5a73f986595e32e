//! Warming new's buffer cache before reads move there. New has followed old's writes but
//! served no reads, so its cache holds what the writes touched, not what the application
//! reads: the first minutes on new would go to disk for the hot set. Old's cache tells
//! which relations are hot (pg_buffercache); new loads them (pg_prewarm), within a share of
//! its shared_buffers so the load does not push out what it loaded itself.

use super::pg_error;
use crate::ident::quote_ident;
use serde::Serialize;
use std::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Share of new's shared_buffers a warm-up fills by default: the rest stays for what the
/// traffic brings meanwhile.
pub const DEFAULT_BUDGET_PERCENT: u8 = 75;

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("{what}: {}", pg_error(.source))]
    Db {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "the {db} database has no {extension} extension and it cannot be created there \
         ({reason}): {fix}"
    )]
    Extension {
        db: &'static str,
        extension: &'static str,
        reason: String,
        fix: String,
    },
    #[error("the {db} database refused {what} ({reason}): {fix}")]
    Privilege {
        db: &'static str,
        what: &'static str,
        reason: String,
        fix: String,
    },
    #[error("budget of {0} % of shared_buffers: expected 1 to 100")]
    Budget(u8),
}

fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> WarmError {
    let what = what.into();
    move |source| WarmError::Db { what, source }
}

/// Cumulative block reads of the current database (pg_stat_database): found in the
/// buffer cache, or read from the kernel.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct BlockCounters {
    pub hit: i64,
    pub read: i64,
}

impl BlockCounters {
    /// hit / (hit + read); None before any block was asked for.
    pub fn ratio(&self) -> Option<f64> {
        let total = self.hit.saturating_add(self.read);
        (total > 0).then(|| self.hit as f64 / total as f64)
    }

    /// The reads since `earlier`, for a ratio over a window rather than since the
    /// statistics were last reset (a reset in between gives everything since the reset).
    pub fn since(&self, earlier: &BlockCounters) -> BlockCounters {
        if self.hit < earlier.hit || self.read < earlier.read {
            return *self;
        }
        BlockCounters {
            hit: self.hit - earlier.hit,
            read: self.read - earlier.read,
        }
    }
}

/// The current database's block counters.
pub async fn counters(client: &Client) -> Result<BlockCounters, WarmError> {
    let row = client
        .query_opt(
            "SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(db("reading pg_stat_database"))?;
    Ok(row
        .map(|r| BlockCounters {
            hit: r.get(0),
            read: r.get(1),
        })
        .unwrap_or_default())
}

/// The current database's buffer cache hit ratio since its statistics were last reset
/// (0 to 1); None before any block was asked for.
pub async fn hit_ratio(client: &Client) -> Result<Option<f64>, WarmError> {
    Ok(counters(client).await?.ratio())
}

/// One relation old holds buffers of.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WarmItem {
    /// `schema.name`; a TOAST table is named by its table, `schema.table (TOAST)`.
    pub name: String,
    /// `table`, `index`, `materialized view` or `toast`.
    pub kind: &'static str,
    /// Buffers of its main fork in old's cache.
    pub old_buffers: i64,
    /// Its size on new (main fork, blocks); None when new has no such relation.
    pub new_blocks: Option<i64>,
    /// Whether [`run`] loads it.
    pub load: bool,
    /// Why not, when not.
    pub skipped: Option<String>,
    #[serde(skip)]
    new_oid: Option<u32>,
}

/// What to load on new, hottest first on old.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WarmPlan {
    /// New's shared_buffers, in blocks.
    pub shared_buffers_blocks: i64,
    pub budget_percent: u8,
    pub budget_blocks: i64,
    /// Blocks of the relations to load (whole relations).
    pub planned_blocks: i64,
    pub items: Vec<WarmItem>,
}

/// One relation [`run`] loaded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Loaded {
    pub name: String,
    pub kind: &'static str,
    /// Blocks pg_prewarm read (0 on an error).
    pub blocks: i64,
    /// Why it could not be loaded (dropped since the plan, no SELECT privilege ...).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WarmReport {
    pub relations: Vec<Loaded>,
    pub blocks: i64,
    pub elapsed_ms: u64,
}

/// The schema (quoted) holding `extension` in the connected database, after creating the
/// extension if it is missing.
async fn extension(
    client: &Client,
    side: &'static str,
    extension: &'static str,
) -> Result<String, WarmError> {
    let find = || async {
        client
            .query_opt(
                "SELECT n.nspname FROM pg_extension e
                 JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = $1",
                &[&extension],
            )
            .await
            .map(|r| r.map(|r| quote_ident(r.get(0))))
            .map_err(db(format!(
                "looking for {extension} on the {side} database"
            )))
    };
    if let Some(schema) = find().await? {
        return Ok(schema);
    }
    if let Err(e) = client
        .batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {extension}"))
        .await
    {
        let fix = match e.code() {
            Some(&SqlState::UNDEFINED_FILE) => format!(
                "install PostgreSQL's contrib modules on that server (the postgresql-contrib \
                 package), then run CREATE EXTENSION {extension}; in the database"
            ),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE) => format!(
                "run CREATE EXTENSION {extension}; in that database as a superuser (or a role \
                 allowed to create it)"
            ),
            _ => {
                return Err(db(format!("creating {extension} on the {side} database"))(
                    e,
                ))
            }
        };
        return Err(WarmError::Extension {
            db: side,
            extension,
            reason: pg_error(&e),
            fix,
        });
    }
    find().await?.ok_or_else(|| WarmError::Extension {
        db: side,
        extension,
        reason: "not found after CREATE EXTENSION".into(),
        fix: format!("check CREATE EXTENSION {extension}; in that database"),
    })
}

/// Main-fork buffers per relation of the current database in old's cache, toast tables
/// with their table's name; catalogs and Switchyard's own tables left out.
const HOT_SQL: &str = "
WITH here AS (
    SELECT oid, dattablespace FROM pg_database WHERE datname = current_database()
), buffers AS (
    SELECT b.relfilenode, b.reltablespace, count(*) AS n
    FROM {ext}.pg_buffercache b
    WHERE b.reldatabase = (SELECT oid FROM here) AND b.relforknumber = 0
    GROUP BY 1, 2
)
SELECT coalesce(tn.nspname, n.nspname), coalesce(t.relname, c.relname), c.relkind::text,
       b.n::int8
FROM buffers b
JOIN pg_class c ON pg_relation_filenode(c.oid) = b.relfilenode
 AND (CASE c.reltablespace WHEN 0 THEN (SELECT dattablespace FROM here)
      ELSE c.reltablespace END) = b.reltablespace
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class t ON c.relkind = 't' AND t.reltoastrelid = c.oid
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE c.relkind IN ('r', 'i', 'm', 't') AND c.relpersistence <> 't'
  AND (c.relkind = 't' OR n.nspname <> 'pg_toast')
  AND coalesce(tn.nspname, n.nspname) NOT IN ('pg_catalog', 'information_schema', '_switchyard')
ORDER BY b.n DESC, 1, 2";

/// Each name's relation on new (a TOAST table through its table's) and its size in blocks.
const ON_NEW_SQL: &str = "
SELECT u.i, r.oid, pg_relation_size(r.oid::regclass) / current_setting('block_size')::int8
FROM unnest($1::text[], $2::bool[]) WITH ORDINALITY AS u(name, toast, i)
CROSS JOIN LATERAL (
    SELECT CASE WHEN u.toast
                THEN (SELECT nullif(c.reltoastrelid, 0) FROM pg_class c
                      WHERE c.oid = to_regclass(u.name))
                ELSE to_regclass(u.name)::oid END AS oid
) r
ORDER BY u.i";

fn kind(relkind: &str) -> &'static str {
    match relkind {
        "i" => "index",
        "m" => "materialized view",
        "t" => "toast",
        _ => "table",
    }
}

/// Which relations to load on new: those holding the most buffers in old's cache, by
/// schema-qualified name on new, whole, hottest first, as long as they fit in
/// `budget_percent` of new's shared_buffers (a relation that does not fit in what is left
/// is skipped, smaller ones after it may still fit). Creates pg_buffercache on old when
/// missing (needs a superuser); reading it needs pg_monitor.
pub async fn plan(old: &Client, new: &Client, budget_percent: u8) -> Result<WarmPlan, WarmError> {
    if !(1..=100).contains(&budget_percent) {
        return Err(WarmError::Budget(budget_percent));
    }
    let ext = extension(old, "old", "pg_buffercache").await?;
    let hot = match old.query(&HOT_SQL.replace("{ext}", &ext), &[]).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            return Err(WarmError::Privilege {
                db: "old",
                what: "reading pg_buffercache",
                reason: pg_error(&e),
                fix: "GRANT pg_monitor TO the role the warm-up connects as".into(),
            })
        }
        Err(e) => return Err(db("reading old's buffer cache")(e)),
    };
    let shared_buffers: i64 = new
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'shared_buffers'",
            &[],
        )
        .await
        .map_err(db("reading new's shared_buffers"))?
        .get(0);
    let mut items = Vec::with_capacity(hot.len());
    let (mut names, mut toast) = (Vec::new(), Vec::new());
    for r in &hot {
        let (schema, rel, relkind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let kind = kind(&relkind);
        names.push(format!("{}.{}", quote_ident(&schema), quote_ident(&rel)));
        toast.push(kind == "toast");
        items.push(WarmItem {
            name: if kind == "toast" {
                format!("{schema}.{rel} (TOAST)")
            } else {
                format!("{schema}.{rel}")
            },
            kind,
            old_buffers: r.get(3),
            new_blocks: None,
            load: false,
            skipped: None,
            new_oid: None,
        });
    }
    for r in new
        .query(ON_NEW_SQL, &[&names, &toast])
        .await
        .map_err(db("finding old's hot relations on new"))?
    {
        let i: i64 = r.get(0);
        if let Some(item) = usize::try_from(i - 1).ok().and_then(|i| items.get_mut(i)) {
            item.new_oid = r.get(1);
            item.new_blocks = r.get(2);
        }
    }
    Ok(fit(items, shared_buffers, budget_percent))
}

/// Chooses the items to load within the budget, in their order (hottest first).
fn fit(mut items: Vec<WarmItem>, shared_buffers: i64, budget_percent: u8) -> WarmPlan {
    let budget = shared_buffers * budget_percent as i64 / 100;
    let mut left = budget;
    for item in &mut items {
        item.skipped = match (item.new_oid, item.new_blocks) {
            (None, _) | (_, None) => Some("not on new".into()),
            (_, Some(0)) => Some("empty on new".into()),
            (_, Some(n)) if n > left => Some(format!(
                "{n} blocks on new, more than the {left} left of the budget"
            )),
            (_, Some(n)) => {
                left -= n;
                None
            }
        };
        item.load = item.skipped.is_none();
    }
    WarmPlan {
        shared_buffers_blocks: shared_buffers,
        budget_percent,
        budget_blocks: budget,
        planned_blocks: budget - left,
        items,
    }
}

/// Loads the plan's relations into new's buffer cache with pg_prewarm (created on new
/// when missing, which needs a superuser), one after the other. A relation that cannot be
/// loaded (dropped since the plan, no SELECT privilege) is reported with its error and
/// the rest still loaded.
pub async fn run(new: &Client, plan: &WarmPlan) -> Result<WarmReport, WarmError> {
    let ext = extension(new, "new", "pg_prewarm").await?;
    let sql = format!("SELECT {ext}.pg_prewarm($1::oid::regclass)");
    let started = Instant::now();
    let mut relations = Vec::new();
    for item in plan.items.iter().filter(|i| i.load) {
        let Some(oid) = item.new_oid else { continue };
        let (blocks, error) = match new.query_one(&sql, &[&oid]).await {
            Ok(r) => (r.get(0), None),
            Err(e) => (0, Some(pg_error(&e))),
        };
        relations.push(Loaded {
            name: item.name.clone(),
            kind: item.kind,
            blocks,
            error,
        });
    }
    Ok(WarmReport {
        blocks: relations.iter().map(|l| l.blocks).sum(),
        relations,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, new: Option<i64>) -> WarmItem {
        WarmItem {
            name: name.into(),
            kind: "table",
            old_buffers: 1,
            new_blocks: new,
            load: false,
            skipped: None,
            new_oid: new.map(|_| 1),
        }
    }

    #[test]
    fn whole_relations_fit_in_the_budget_hottest_first() {
        let plan = fit(
            vec![
                item("hot", Some(40)),
                item("too big", Some(50)),
                item("gone", None),
                item("empty", Some(0)),
                item("small", Some(30)),
                item("one more", Some(6)),
            ],
            100,
            75,
        );
        assert_eq!(plan.budget_blocks, 75);
        let loaded: Vec<&str> = plan
            .items
            .iter()
            .filter(|i| i.load)
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(loaded, ["hot", "small"]);
        assert_eq!(plan.planned_blocks, 70);
        assert!(plan.items[1]
            .skipped
            .as_deref()
            .unwrap()
            .contains("35 left"));
        assert_eq!(plan.items[2].skipped.as_deref(), Some("not on new"));
    }

    #[test]
    fn ratios_over_a_window() {
        let a = BlockCounters { hit: 90, read: 10 };
        assert_eq!(a.ratio(), Some(0.9));
        assert_eq!(BlockCounters::default().ratio(), None);
        let b = BlockCounters {
            hit: 100,
            read: 110,
        };
        assert_eq!(b.since(&a), BlockCounters { hit: 10, read: 100 });
        assert_eq!(a.since(&b), a, "a reset in between");
    }
}
