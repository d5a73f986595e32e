//! Primary-key values as text, half-open key ranges, and the SQL fragments that select them.
//!
//! Keys travel as the text form of each key column (`col::text`) and come back into SQL as
//! `$n::text::<type>`, so every key type round-trips exactly and a retry-log record (which
//! stores keys as text) can be used as it is. Ranges compare in byte order: collatable key
//! columns get `COLLATE "C"`, so two servers with different collations (or collation
//! library versions) still agree on which rows a range holds.

use crate::catalog::{ColumnMeta, TableMeta};
use crate::ident::quote_literal;
use std::fmt;

/// Text forms of a row's primary-key values, in key order.
pub type KeyText = Vec<Option<String>>;

/// The text values in columns `cols` of `row` (SQL NULL is None): a key, or a row's values.
pub fn texts_of(row: &tokio_postgres::Row, cols: impl IntoIterator<Item = usize>) -> KeyText {
    cols.into_iter().map(|i| row.get(i)).collect()
}

/// Renders a key for people: `42`, `(1, abc)`, `NULL` for a missing value.
pub struct DisplayKey<'a>(pub &'a [Option<String>]);

impl fmt::Display for DisplayKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = |f: &mut fmt::Formatter<'_>, v: &Option<String>| match v {
            Some(s) => write!(f, "{s}"),
            None => write!(f, "NULL"),
        };
        if self.0.len() == 1 {
            return one(f, &self.0[0]);
        }
        write!(f, "(")?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            one(f, v)?;
        }
        write!(f, ")")
    }
}

/// A half-open range of keys `[lo, hi)`; `None` is unbounded on that side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRange {
    pub lo: Option<KeyText>,
    pub hi: Option<KeyText>,
}

impl KeyRange {
    /// The whole key space.
    pub fn all() -> Self {
        KeyRange::default()
    }

    /// Cuts this range at the given points (ascending, inside the range), giving
    /// `points.len() + 1` adjacent ranges that together cover exactly this one.
    pub fn split_at(&self, points: Vec<KeyText>) -> Vec<KeyRange> {
        let mut out = Vec::with_capacity(points.len() + 1);
        let mut lo = self.lo.clone();
        for p in points {
            out.push(KeyRange {
                lo: lo.take(),
                hi: Some(p.clone()),
            });
            lo = Some(p);
        }
        out.push(KeyRange {
            lo,
            hi: self.hi.clone(),
        });
        out
    }
}

/// Type OIDs of the integer types, whose key space can be cut arithmetically.
pub const INT2_OID: u32 = 21;
pub const INT4_OID: u32 = 23;
pub const INT8_OID: u32 = 20;

/// SQL fragments for a table's primary key. Built once per table; every query that names
/// keys or ranges goes through it so they all agree on order and casts.
#[derive(Debug, Clone)]
pub struct KeySql {
    /// Per key column: the column as a sort/compare expression (with `COLLATE "C"` when
    /// collatable), its quoted name, and its type for casts.
    cols: Vec<(String, String, String, bool)>,
}

impl KeySql {
    /// Fragments for `table`'s primary key (which must not be empty: callers check).
    pub fn new(table: &TableMeta) -> Self {
        KeySql {
            cols: table
                .key_columns()
                .map(|c: &ColumnMeta| {
                    let q = c.quoted();
                    let cmp = if c.collatable {
                        format!("({q} COLLATE \"C\")")
                    } else {
                        q.clone()
                    };
                    (cmp, q, c.type_name.clone(), c.collatable)
                })
                .collect(),
        }
    }

    /// Number of key columns.
    pub fn arity(&self) -> usize {
        self.cols.len()
    }

    /// The key column names, quoted, comma-separated, each prefixed with `alias.` when an
    /// alias is given.
    pub fn names(&self, alias: Option<&str>) -> String {
        self.cols
            .iter()
            .map(|(_, q, _, _)| match alias {
                Some(a) => format!("{a}.{q}"),
                None => q.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `k1::text`, `k2::text`: the key's text forms, one expression per key column.
    pub fn text_exprs(&self, alias: Option<&str>) -> Vec<String> {
        self.cols
            .iter()
            .map(|(_, q, _, _)| match alias {
                Some(a) => format!("{a}.{q}::text"),
                None => format!("{q}::text"),
            })
            .collect()
    }

    /// `k1::text, k2::text`: the key's text forms, for the select list.
    pub fn text_select(&self, alias: Option<&str>) -> String {
        self.text_exprs(alias).join(", ")
    }

    /// `ORDER BY` list in byte order.
    pub fn order_by(&self) -> String {
        self.cols
            .iter()
            .map(|(cmp, _, _, _)| cmp.clone())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `$n::text::type` (with `COLLATE "C"` for collatable columns) for the key column `i`.
    fn param(&self, i: usize, n: usize) -> String {
        let (_, _, ty, collatable) = &self.cols[i];
        if *collatable {
            format!("(${n}::text::{ty} COLLATE \"C\")")
        } else {
            format!("${n}::text::{ty}")
        }
    }

    /// `expr::type` for each key column, comma-separated: turns text columns (for example
    /// of an `unnest`) back into key values. `exprs` names the text inputs in key order.
    pub fn cast_list(&self, exprs: &[String]) -> String {
        self.cols
            .iter()
            .zip(exprs)
            .map(|((_, _, ty, _), e)| format!("{e}::{ty}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The row-comparison predicate for `range` with the bounds written as literals
    /// (`'42'::text::bigint`), for statements that take no parameters (`COPY (SELECT ...)`).
    /// Same order and casts as [`KeySql::range_predicate`].
    pub fn range_predicate_literal(&self, range: &KeyRange) -> String {
        let lhs = format!("({})", self.order_by());
        let mut parts = Vec::new();
        for (bound, op) in [(&range.lo, ">="), (&range.hi, "<")] {
            if let Some(key) = bound {
                let rhs = self
                    .cols
                    .iter()
                    .enumerate()
                    .map(|(i, (_, _, ty, collatable))| {
                        let value = match key.get(i).cloned().flatten() {
                            Some(v) => format!("{}::text::{ty}", quote_literal(&v)),
                            None => format!("NULL::{ty}"),
                        };
                        if *collatable {
                            format!("({value} COLLATE \"C\")")
                        } else {
                            value
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                parts.push(format!("{lhs} {op} ({rhs})"));
            }
        }
        if parts.is_empty() {
            "TRUE".to_string()
        } else {
            parts.join(" AND ")
        }
    }

    /// The row-comparison predicate for `range`, its parameters numbered from
    /// `first_param`. Returns `TRUE` for the whole key space. The parameters (text forms)
    /// are appended to `params`.
    pub fn range_predicate(
        &self,
        range: &KeyRange,
        first_param: usize,
        params: &mut Vec<Option<String>>,
    ) -> String {
        let lhs = format!("({})", self.order_by());
        let mut parts = Vec::new();
        let mut n = first_param;
        for (bound, op) in [(&range.lo, ">="), (&range.hi, "<")] {
            if let Some(key) = bound {
                let rhs = (0..self.arity())
                    .map(|i| {
                        let p = self.param(i, n + i);
                        params.push(key.get(i).cloned().flatten());
                        p
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                n += self.arity();
                // A one-element "row" is just a parenthesised value: fine for either case.
                parts.push(format!("{lhs} {op} ({rhs})"));
            }
        }
        if parts.is_empty() {
            "TRUE".to_string()
        } else {
            parts.join(" AND ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ColumnMeta;

    fn col(name: &str, ty: &str, collatable: bool) -> ColumnMeta {
        ColumnMeta {
            name: name.into(),
            type_name: ty.into(),
            type_oid: 0,
            not_null: true,
            identity: None,
            generated: false,
            collatable,
        }
    }

    fn table() -> TableMeta {
        TableMeta {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                col("v", "text", true),
                col("Region", "text", true),
                col("id", "bigint", false),
            ],
            primary_key: vec![1, 2],
        }
    }

    #[test]
    fn range_predicates_compare_rows_in_byte_order() {
        let k = KeySql::new(&table());
        let mut params = Vec::new();
        let range = KeyRange {
            lo: Some(vec![Some("eu".into()), Some("5".into())]),
            hi: Some(vec![Some("us".into()), Some("1".into())]),
        };
        let sql = k.range_predicate(&range, 3, &mut params);
        assert_eq!(
            sql,
            "((\"Region\" COLLATE \"C\"), \"id\") >= (($3::text::text COLLATE \"C\"), $4::text::bigint) \
             AND ((\"Region\" COLLATE \"C\"), \"id\") < (($5::text::text COLLATE \"C\"), $6::text::bigint)"
        );
        assert_eq!(params.len(), 4);
        let mut none = Vec::new();
        assert_eq!(k.range_predicate(&KeyRange::all(), 1, &mut none), "TRUE");
        assert!(none.is_empty());
        assert_eq!(
            k.text_select(Some("t")),
            "t.\"Region\"::text, t.\"id\"::text"
        );
    }

    #[test]
    fn literal_predicates_match_the_parameter_form() {
        let k = KeySql::new(&table());
        let range = KeyRange {
            lo: Some(vec![Some("e'u".into()), Some("5".into())]),
            hi: None,
        };
        assert_eq!(
            k.range_predicate_literal(&range),
            "((\"Region\" COLLATE \"C\"), \"id\") >= ((E'e\\'u'::text::text COLLATE \"C\"), E'5'::text::bigint)"
        );
        assert_eq!(k.range_predicate_literal(&KeyRange::all()), "TRUE");
    }

    #[test]
    fn split_covers_the_range_exactly() {
        let r = KeyRange {
            lo: Some(vec![Some("1".into())]),
            hi: None,
        };
        let parts = r.split_at(vec![vec![Some("5".into())], vec![Some("9".into())]]);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].lo, r.lo);
        assert_eq!(parts[0].hi, parts[1].lo);
        assert_eq!(parts[1].hi, parts[2].lo);
        assert_eq!(parts[2].hi, None);
        assert_eq!(r.split_at(Vec::new()), vec![r.clone()]);
    }

    #[test]
    fn keys_display_plainly() {
        assert_eq!(DisplayKey(&[Some("7".into())]).to_string(), "7");
        assert_eq!(
            DisplayKey(&[Some("a".into()), None]).to_string(),
            "(a, NULL)"
        );
    }
}
