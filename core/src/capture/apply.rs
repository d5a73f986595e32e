//! The statements that apply captured events on a target database, built once per table
//! version. Every statement takes one parameter: a JSON array (`$1::text::json`) of row
//! images, or of key objects for deletes.

use crate::ident::quote_ident;
use serde::Deserialize;

/// A column as the applier writes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ApplyColumn {
    pub name: String,
    /// Computed by the server (`GENERATED ALWAYS AS ... STORED`): never written.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: written with `OVERRIDING SYSTEM VALUE`, never updated.
    pub always: bool,
}

/// How events of one table are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplySql {
    /// Quoted, schema-qualified name.
    pub name: String,
    /// Primary-key column names in key order; empty for a table without one.
    pub key: Vec<String>,
    /// Keyed: upsert of images by key. Keyless: plain insert.
    pub write: String,
    /// Keyed: delete by key objects.
    pub delete_keys: String,
    /// Keyless: remove one equal row per image (a multiset difference).
    pub delete_rows: String,
}

impl ApplySql {
    pub fn new(schema: &str, table: &str, columns: &[ApplyColumn], key: Vec<String>) -> ApplySql {
        let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let written: Vec<&ApplyColumn> = columns.iter().filter(|c| !c.generated).collect();
        let list = written
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let overriding = if written.iter().any(|c| c.always) {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let images = format!("json_populate_recordset(NULL::{name}, $1::text::json)");
        let insert = format!("INSERT INTO {name} ({list}){overriding} SELECT {list} FROM {images}");
        let write = if key.is_empty() {
            insert
        } else {
            let key_list = key
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            // Identity ALWAYS columns cannot be assigned by UPDATE; they never change after
            // insert.
            let set = written
                .iter()
                .filter(|c| !c.always && !key.contains(&c.name))
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
            format!("{insert} ON CONFLICT ({key_list}) {conflict}")
        };
        let key_list = key
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let delete_keys = if key.is_empty() {
            String::new()
        } else {
            format!("DELETE FROM {name} WHERE ({key_list}) IN (SELECT {key_list} FROM {images})")
        };
        // Rows compare by their text form: every type has one (json has no equality). Rows
        // another transaction has locked are skipped, so two transactions removing two equal
        // rows each remove their own.
        let delete_rows = format!(
            "WITH o AS (SELECT o::text AS img, count(*) AS m FROM {images} o GROUP BY 1), \
             l AS (SELECT t.ctid AS c, t::text AS img FROM {name} t WHERE t::text IN (SELECT img FROM o) \
                   FOR UPDATE OF t SKIP LOCKED), \
             x AS (SELECT c, img, row_number() OVER (PARTITION BY img) AS rn FROM l) \
             DELETE FROM {name} t USING x JOIN o ON o.img = x.img WHERE t.ctid = x.c AND x.rn <= o.m"
        );
        ApplySql {
            name,
            key,
            write,
            delete_keys,
            delete_rows,
        }
    }

    pub fn has_key(&self) -> bool {
        !self.key.is_empty()
    }

    /// The key objects (`{"col": value}`) of a JSON array of images or keys.
    pub fn keys_of(&self, rows: &str) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        let images: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(rows)?;
        Ok(images
            .into_iter()
            .map(|image| {
                serde_json::Value::Object(
                    self.key
                        .iter()
                        .map(|c| {
                            (
                                c.clone(),
                                image.get(c).cloned().unwrap_or(serde_json::Value::Null),
                            )
                        })
                        .collect(),
                )
            })
            .collect())
    }

    /// A self-contained statement equal to running `sql` with `rows` as its parameter, for
    /// a record replayed once (rows of a table without a key cannot be re-read by key).
    pub fn inline(sql: &str, rows: &str) -> String {
        sql.replace(
            "$1::text::json",
            &format!("{}::json", crate::ident::dollar_quoted(rows)),
        )
    }
}

/// `TRUNCATE ONLY` of each of the tables truncated together (a `TRUNCATE ... CASCADE` on the primary
/// truncates the referencing tables in the same command: one statement keeps the secondary's
/// foreign-key check satisfied).
pub fn truncate_sql(names: &[String]) -> String {
    let only: Vec<String> = names.iter().map(|n| format!("ONLY {n}")).collect();
    format!("TRUNCATE {}", only.join(", "))
}

impl From<&crate::catalog::TableMeta> for ApplySql {
    fn from(t: &crate::catalog::TableMeta) -> ApplySql {
        let columns: Vec<ApplyColumn> = t
            .columns
            .iter()
            .map(|c| ApplyColumn {
                name: c.name.clone(),
                generated: c.generated,
                always: c.identity == Some(crate::catalog::IdentityKind::Always),
            })
            .collect();
        let key = t.key_columns().map(|c| c.name.clone()).collect();
        ApplySql::new(&t.schema, &t.name, &columns, key)
    }
}

/// Records once-only marks on the target in `tx`; how many were new (0: all applied before).
pub async fn mark_applied(
    tx: &tokio_postgres::Transaction<'_>,
    marks: &[String],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO _switchyard.applied_statements (idempotency_key) SELECT unnest($1::text[]) \
         ON CONFLICT DO NOTHING",
        &[&marks],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, generated: bool, always: bool) -> ApplyColumn {
        ApplyColumn {
            name: name.into(),
            generated,
            always,
        }
    }

    #[test]
    fn upsert_skips_generated_and_overrides_identity() {
        let t = ApplySql::new(
            "public",
            "t",
            &[
                col("id", false, true),
                col("v", false, false),
                col("g", true, false),
            ],
            vec!["id".into()],
        );
        assert_eq!(
            t.write,
            "INSERT INTO \"public\".\"t\" (\"id\", \"v\") OVERRIDING SYSTEM VALUE SELECT \"id\", \"v\" \
             FROM json_populate_recordset(NULL::\"public\".\"t\", $1::text::json) ON CONFLICT (\"id\") \
             DO UPDATE SET \"v\" = EXCLUDED.\"v\""
        );
        assert!(t.delete_keys.contains("WHERE (\"id\") IN"));
    }

    #[test]
    fn keyless_tables_insert_and_remove_equal_rows() {
        let t = ApplySql::new("s", "j", &[col("a", false, false)], Vec::new());
        assert!(!t.write.contains("ON CONFLICT"));
        assert!(t.delete_rows.contains("SKIP LOCKED"));
        assert!(t.delete_keys.is_empty());
    }

    #[test]
    fn keys_and_inlining() {
        let t = ApplySql::new(
            "public",
            "t",
            &[col("a", false, false), col("b", false, false)],
            vec!["b".into(), "a".into()],
        );
        let keys = t
            .keys_of(r#"[{"a": 1, "b": "x", "c": 3}]"#)
            .expect("parses");
        assert_eq!(keys[0].to_string(), r#"{"a":1,"b":"x"}"#);
        let sql = ApplySql::inline(&t.write, r#"[{"a":"$sy$"}]"#);
        assert!(sql.contains("$syx$[{\"a\":\"$sy$\"}]$syx$::json"), "{sql}");
    }
}
