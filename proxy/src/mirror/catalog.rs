//! Facts about mirrored tables, looked up on the primary by the oid each captured row
//! carries (so the session's search_path never matters), cached across sessions and
//! dropped after DDL.

use super::control::Control;
use super::rewrite::quote_ident;
use super::MirrorError;
use dashmap::DashMap;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
struct Column {
    name: String,
    generated: bool,
    always: bool,
}

/// A table as the mirror writes it on the secondary.
#[derive(Debug)]
pub struct TableInfo {
    /// Quoted, schema-qualified name; the partition root for a partition.
    pub name: String,
    /// `name`, shared by the keys a transaction tracks.
    pub shared_name: Arc<str>,
    /// Temporary tables live and die with the session; they are not mirrored.
    pub temporary: bool,
    pub primary_key: Vec<String>,
    /// Upsert of a JSON array of row images (`$1`), keyed by the primary key.
    pub upsert_sql: String,
    /// Delete by the keys of a JSON array of row images (`$1`).
    pub delete_sql: String,
    /// Plain insert of row images, for tables without a primary key.
    pub insert_sql: String,
}

impl TableInfo {
    pub fn has_key(&self) -> bool {
        !self.primary_key.is_empty()
    }
}

pub struct Catalog {
    tables: DashMap<u32, Arc<TableInfo>>,
}

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
            WHERE i.indrelid = c.oid AND i.indisprimary), '[]')::text
FROM r JOIN pg_class c ON c.oid = r.oid JOIN pg_namespace n ON n.oid = c.relnamespace";

impl Catalog {
    pub fn new() -> Self {
        Catalog {
            tables: DashMap::new(),
        }
    }

    /// Forgets everything (after DDL ran through the proxy).
    pub fn invalidate(&self) {
        self.tables.clear();
    }

    /// The table with this oid, or None when the proxy's own connection cannot see it (a
    /// table created in the client's still-open transaction, or a temporary table): then
    /// the session looks it up itself with [`lookup_sql`].
    pub async fn table(
        &self,
        control: &Control,
        oid: u32,
    ) -> Result<Option<Arc<TableInfo>>, MirrorError> {
        if let Some(t) = self.tables.get(&oid) {
            return Ok(Some(t.clone()));
        }
        let client = control.client().await?;
        let Some(row) = client
            .query_opt(LOOKUP_SQL, &[&oid])
            .await
            .map_err(|e| MirrorError::Catalog(format!("looking up table oid {oid}: {e}")))?
        else {
            return Ok(None);
        };
        let values: Vec<Option<String>> = (0..5).map(|i| row.get::<_, Option<String>>(i)).collect();
        self.from_values(oid, &values).map(Some)
    }

    /// Builds (and caches) a table from the five columns of the lookup query.
    pub fn from_values(
        &self,
        oid: u32,
        values: &[Option<String>],
    ) -> Result<Arc<TableInfo>, MirrorError> {
        let get = |i: usize| {
            values.get(i).cloned().flatten().ok_or_else(|| {
                MirrorError::Catalog(format!("table oid {oid}: incomplete catalog row"))
            })
        };
        let (schema, table, persistence) = (get(0)?, get(1)?, get(2)?);
        let columns: Vec<Column> = serde_json::from_str(&get(3)?)
            .map_err(|e| MirrorError::Catalog(format!("columns of {schema}.{table}: {e}")))?;
        let primary_key: Vec<String> = serde_json::from_str(&get(4)?)
            .map_err(|e| MirrorError::Catalog(format!("key of {schema}.{table}: {e}")))?;
        let info = Arc::new(build(
            &schema,
            &table,
            persistence == "t",
            &columns,
            primary_key,
        ));
        if self.tables.len() > 100_000 {
            self.tables.clear();
        }
        self.tables.insert(oid, info.clone());
        Ok(info)
    }
}

/// The lookup for one oid as plain SQL, for the session's own connection.
pub fn lookup_sql(oid: u32) -> String {
    LOOKUP_SQL.replace("$1", &oid.to_string())
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

fn build(
    schema: &str,
    table: &str,
    temporary: bool,
    columns: &[Column],
    primary_key: Vec<String>,
) -> TableInfo {
    let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let written: Vec<&Column> = columns.iter().filter(|c| !c.generated).collect();
    let list = written
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let key = primary_key
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let overriding = if written.iter().any(|c| c.always) {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    // Identity ALWAYS columns cannot be assigned by UPDATE; they never change after insert.
    let set = written
        .iter()
        .filter(|c| !c.always && !primary_key.contains(&c.name))
        .map(|c| {
            let q = quote_ident(&c.name);
            format!("{q} = EXCLUDED.{q}")
        })
        .collect::<Vec<_>>();
    let conflict = if set.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", set.join(", "))
    };
    let upsert_sql = format!(
        "INSERT INTO {name} ({list}){overriding} SELECT {list} \
         FROM json_populate_recordset(NULL::{name}, $1::text::json) ON CONFLICT ({key}) {conflict}"
    );
    let insert_sql = format!(
        "INSERT INTO {name} ({list}){overriding} SELECT {list} \
         FROM json_populate_recordset(NULL::{name}, $1::text::json)"
    );
    let delete_sql = format!(
        "DELETE FROM {name} WHERE ({key}) IN \
         (SELECT {key} FROM json_populate_recordset(NULL::{name}, $1::text::json))"
    );
    TableInfo {
        shared_name: Arc::from(name.as_str()),
        name,
        temporary,
        primary_key,
        upsert_sql,
        delete_sql,
        insert_sql,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_skips_generated_and_overrides_identity() {
        let cols = vec![
            Column {
                name: "id".into(),
                generated: false,
                always: true,
            },
            Column {
                name: "v".into(),
                generated: false,
                always: false,
            },
            Column {
                name: "g".into(),
                generated: true,
                always: false,
            },
        ];
        let t = build("public", "t", false, &cols, vec!["id".into()]);
        assert_eq!(
            t.upsert_sql,
            "INSERT INTO \"public\".\"t\" (\"id\", \"v\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"v\" \
             FROM json_populate_recordset(NULL::\"public\".\"t\", $1::text::json) ON CONFLICT (\"id\") \
             DO UPDATE SET \"v\" = EXCLUDED.\"v\""
        );
        assert!(t.delete_sql.contains("WHERE (\"id\") IN"));
    }
}
