//! Facts about captured tables, looked up on the primary by the oid each event carries and
//! cached by the table's version (`_switchyard.tables.version`, new with every DDL on the
//! table): a cached entry can never be stale. A version the proxy's own connection cannot
//! see yet (DDL in the client's still-open transaction) is looked up in that transaction.

use super::control::Control;
use super::MirrorError;
use dashmap::DashMap;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use switchyard_core::capture::apply::{ApplyColumn, ApplySql};

/// A table as the mirror writes it on the secondary.
#[derive(Debug)]
pub struct TableInfo {
    pub schema: String,
    pub table: String,
    /// Quoted, schema-qualified name; the partition root for a partition.
    pub name: String,
    /// `name`, shared by the keys a transaction tracks.
    pub shared_name: Arc<str>,
    /// What a TRUNCATE the event reports empties on the secondary: the table itself (a
    /// partition, not its root); None for a partitioned table, whose partitions report
    /// their own TRUNCATE.
    pub truncates: Option<String>,
    pub columns: Vec<ApplyColumn>,
    pub key: Vec<String>,
    /// Statements by the set of columns the images carry (all of them, unless the images
    /// were taken before a DDL later in the same transaction).
    by_columns: Mutex<Vec<(BTreeSet<String>, Arc<ApplySql>)>>,
}

impl TableInfo {
    pub fn has_key(&self) -> bool {
        !self.key.is_empty()
    }

    /// The statements for images that carry `present` columns.
    pub fn sql(&self, present: &BTreeSet<String>) -> Arc<ApplySql> {
        let mut cache = self.by_columns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = cache.iter().find(|(c, _)| c == present) {
            return s.clone();
        }
        // Columns in the table's order, then any the images have that the table lost since
        // (a DROP COLUMN later in the transaction: the secondary still has it then).
        let mut columns: Vec<ApplyColumn> = self
            .columns
            .iter()
            .filter(|c| present.contains(&c.name))
            .cloned()
            .collect();
        for name in present {
            if !self.columns.iter().any(|c| &c.name == name) {
                columns.push(ApplyColumn {
                    name: name.clone(),
                    generated: false,
                    always: false,
                });
            }
        }
        let sql = Arc::new(ApplySql::new(
            &self.schema,
            &self.table,
            &columns,
            self.key.clone(),
        ));
        if cache.len() >= 16 {
            cache.clear();
        }
        cache.push((present.clone(), sql.clone()));
        sql
    }

    /// Statements for images carrying every column (TRUNCATE, keys).
    pub fn full_sql(&self) -> Arc<ApplySql> {
        let all: BTreeSet<String> = self.columns.iter().map(|c| c.name.clone()).collect();
        self.sql(&all)
    }
}

/// Looks up a table by oid (mapped to its partition root): schema, name, persistence,
/// columns (JSON), primary key (JSON), its current version, and the oid's own quoted name
/// and relkind (a partition's, where the oid is one).
const LOOKUP_SQL: &str = "
WITH r AS (SELECT coalesce(pg_partition_root($1::oid::regclass)::oid, $1::oid) AS oid)
SELECT n.nspname::text, c.relname::text, c.relpersistence::text,
  coalesce((SELECT json_agg(json_build_object('name', a.attname, 'generated', a.attgenerated <> '',
                                              'always', a.attidentity = 'a') ORDER BY a.attnum)
            FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
           '[]')::text,
  coalesce((SELECT json_agg(a.attname ORDER BY k.ord)
            FROM pg_index i
            CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = c.oid AND i.indisprimary), '[]')::text,
  (SELECT t.version FROM _switchyard.tables t WHERE t.relid = c.oid)::text,
  (SELECT format('%I.%I %s', o.nspname, p.relname, p.relkind)
   FROM pg_class p JOIN pg_namespace o ON o.oid = p.relnamespace WHERE p.oid = $1::oid)
FROM r JOIN pg_class c ON c.oid = r.oid JOIN pg_namespace n ON n.oid = c.relnamespace";

/// The lookup for one oid as plain SQL, for the client's own connection.
pub fn lookup_sql(oid: u32) -> String {
    LOOKUP_SQL.replace("$1", &oid.to_string())
}

/// What a lookup found.
pub enum Found {
    Table(Arc<TableInfo>),
    /// The table does not exist (any more): dropped later in the same transaction.
    Missing,
    /// The proxy's connection sees another version: look it up in the client's transaction.
    OtherVersion,
}

#[derive(Default)]
pub struct Tables {
    by_version: DashMap<(u32, i64), Arc<TableInfo>>,
}

impl Tables {
    pub fn cached(&self, oid: u32, version: i64) -> Option<Arc<TableInfo>> {
        self.by_version.get(&(oid, version)).map(|t| t.clone())
    }

    /// Looks the table up on the proxy's own connection.
    pub async fn lookup(
        &self,
        control: &Control,
        oid: u32,
        version: i64,
    ) -> Result<Found, MirrorError> {
        if let Some(t) = self.cached(oid, version) {
            return Ok(Found::Table(t));
        }
        let client = control.client().await?;
        let row = client
            .query_opt(LOOKUP_SQL, &[&oid])
            .await
            .map_err(|e| MirrorError::Catalog(format!("looking up table oid {oid}: {e}")))?;
        let Some(row) = row else {
            return Ok(Found::OtherVersion);
        };
        let values: Vec<Option<String>> = (0..7).map(|i| row.get::<_, Option<String>>(i)).collect();
        self.from_values(oid, version, &values)
    }

    /// Builds (and caches) a table from the seven columns of the lookup; `OtherVersion` when
    /// they describe another version than `version`.
    pub fn from_values(
        &self,
        oid: u32,
        version: i64,
        values: &[Option<String>],
    ) -> Result<Found, MirrorError> {
        let get = |i: usize| {
            values.get(i).cloned().flatten().ok_or_else(|| {
                MirrorError::Catalog(format!("table oid {oid}: incomplete catalog row"))
            })
        };
        if values.is_empty() {
            return Ok(Found::Missing);
        }
        if values
            .get(5)
            .cloned()
            .flatten()
            .and_then(|v| v.parse::<i64>().ok())
            != Some(version)
        {
            return Ok(Found::OtherVersion);
        }
        let (schema, table) = (get(0)?, get(1)?);
        let columns: Vec<ApplyColumn> = serde_json::from_str(&get(3)?)
            .map_err(|e| MirrorError::Catalog(format!("columns of {schema}.{table}: {e}")))?;
        let key: Vec<String> = serde_json::from_str(&get(4)?)
            .map_err(|e| MirrorError::Catalog(format!("key of {schema}.{table}: {e}")))?;
        let name = format!(
            "{}.{}",
            switchyard_core::ident::quote_ident(&schema),
            switchyard_core::ident::quote_ident(&table)
        );
        let truncates = match get(6)?.rsplit_once(' ') {
            Some((_, "p")) => None,
            Some((own, _)) => Some(own.to_string()),
            None => Some(name.clone()),
        };
        let info = Arc::new(TableInfo {
            shared_name: Arc::from(name.as_str()),
            truncates,
            name,
            schema,
            table,
            columns,
            key,
            by_columns: Mutex::new(Vec::new()),
        });
        if self.by_version.len() > 100_000 {
            self.by_version.clear();
        }
        self.by_version.insert((oid, version), info.clone());
        Ok(Found::Table(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(version: &str) -> Vec<Option<String>> {
        vec![
            Some("public".into()),
            Some("t".into()),
            Some("p".into()),
            Some(r#"[{"name":"id","generated":false,"always":false},{"name":"w","generated":false,"always":false}]"#.into()),
            Some(r#"["id"]"#.into()),
            Some(version.into()),
            Some("public.t r".into()),
        ]
    }

    #[test]
    fn cached_by_version_and_columns() {
        let tables = Tables::default();
        assert!(matches!(
            tables.from_values(7, 3, &values("4")),
            Ok(Found::OtherVersion)
        ));
        let Ok(Found::Table(t)) = tables.from_values(7, 4, &values("4")) else {
            panic!("expected the table");
        };
        assert!(tables.cached(7, 4).is_some() && tables.cached(7, 3).is_none());
        let before_add: BTreeSet<String> = ["id".to_string()].into();
        let sql = t.sql(&before_add);
        assert!(
            sql.write.contains("(\"id\")") && !sql.write.contains("\"w\""),
            "{}",
            sql.write
        );
        assert!(t.full_sql().write.contains("\"w\""));
        assert_eq!(t.truncates.as_deref(), Some("public.t"));
    }

    #[test]
    fn a_truncate_empties_the_partition_itself_and_skips_a_partitioned_table() {
        let tables = Tables::default();
        let mut v = values("1");
        v[6] = Some(r#"public."m_EU" r"#.into());
        let Ok(Found::Table(leaf)) = tables.from_values(8, 1, &v) else {
            panic!("expected the table");
        };
        assert_eq!(leaf.truncates.as_deref(), Some(r#"public."m_EU""#));
        v[6] = Some("public.m p".into());
        let Ok(Found::Table(root)) = tables.from_values(9, 1, &v) else {
            panic!("expected the table");
        };
        assert_eq!(root.truncates, None);
    }
}
