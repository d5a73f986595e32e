//! The schema check that runs before any data is read: same tables, same columns with the
//! same types, and the same primary key on both sides, or none on either (a table without
//! one is compared as a multiset of rows).

use switchyard_core::catalog::TableMeta;

/// Outcome of comparing one table's definition on the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaCheck {
    /// Comparable: the column names to hash, in old's order; `keyless` when neither side
    /// has a primary key (rows are then matched by their whole image, copies counted).
    Comparable { columns: Vec<String>, keyless: bool },
    /// Not comparable; one plain sentence per difference.
    Different(Vec<String>),
}

fn key_names(t: &TableMeta) -> Vec<&str> {
    t.key_columns().map(|c| c.name.as_str()).collect()
}

/// Compares a table as found on old and new (`None`: the table is not there). Types must
/// be identical as `format_type` prints them (`integer` and `bigint` differ, and so do
/// `varchar(10)` and `varchar(20)`): values of different types can print differently, and
/// a repair could not write one into the other safely.
pub fn compare(old: Option<&TableMeta>, new: Option<&TableMeta>) -> SchemaCheck {
    let (old, new) = match (old, new) {
        (Some(o), Some(n)) => (o, n),
        (Some(_), None) => return SchemaCheck::Different(vec!["table is missing in new".into()]),
        (None, Some(_)) => return SchemaCheck::Different(vec!["table is missing in old".into()]),
        (None, None) => return SchemaCheck::Different(vec!["table exists on neither side".into()]),
    };
    let mut problems = Vec::new();
    for c in &old.columns {
        match new.column(&c.name) {
            None => problems.push(format!("column {:?} is missing in new", c.name)),
            Some(n) if n.type_name != c.type_name => problems.push(format!(
                "column {:?} has type {} in old, {} in new",
                c.name, c.type_name, n.type_name
            )),
            Some(_) => {}
        }
    }
    for c in &new.columns {
        if old.column(&c.name).is_none() {
            problems.push(format!(
                "column {:?} is missing in old (extra in new)",
                c.name
            ));
        }
    }
    let (ko, kn) = (key_names(old), key_names(new));
    match (ko.is_empty(), kn.is_empty()) {
        (true, true) => {}
        (true, false) => problems.push("no primary key in old".into()),
        (false, true) => problems.push("no primary key in new".into()),
        (false, false) if ko != kn => problems.push(format!(
            "primary key ({}) in old, ({}) in new",
            ko.join(", "),
            kn.join(", ")
        )),
        _ => {}
    }
    if problems.is_empty() {
        SchemaCheck::Comparable {
            columns: old.columns.iter().map(|c| c.name.clone()).collect(),
            keyless: ko.is_empty(),
        }
    } else {
        SchemaCheck::Different(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::catalog::ColumnMeta;

    fn col(name: &str, ty: &str) -> ColumnMeta {
        ColumnMeta {
            name: name.into(),
            type_name: ty.into(),
            type_oid: 0,
            not_null: false,
            identity: None,
            generated: false,
            collatable: false,
        }
    }

    fn table(cols: &[(&str, &str)], pk: &[usize]) -> TableMeta {
        TableMeta {
            schema: "public".into(),
            name: "t".into(),
            columns: cols.iter().map(|(n, t)| col(n, t)).collect(),
            primary_key: pk.to_vec(),
        }
    }

    #[test]
    fn column_order_does_not_matter() {
        let a = table(&[("id", "integer"), ("v", "text")], &[0]);
        let b = table(&[("v", "text"), ("id", "integer")], &[1]);
        assert_eq!(
            compare(Some(&a), Some(&b)),
            SchemaCheck::Comparable {
                columns: vec!["id".into(), "v".into()],
                keyless: false
            }
        );
    }

    #[test]
    fn tables_without_a_key_on_either_side_compare_as_multisets() {
        let a = table(&[("at", "timestamp"), ("v", "text")], &[]);
        let b = table(&[("v", "text"), ("at", "timestamp")], &[]);
        assert_eq!(
            compare(Some(&a), Some(&b)),
            SchemaCheck::Comparable {
                columns: vec!["at".into(), "v".into()],
                keyless: true
            }
        );
        let keyed = table(&[("at", "timestamp"), ("v", "text")], &[0]);
        assert_eq!(
            compare(Some(&a), Some(&keyed)),
            SchemaCheck::Different(vec!["no primary key in old".into()])
        );
    }

    #[test]
    fn every_difference_is_named() {
        let a = table(&[("id", "integer"), ("v", "text"), ("gone", "text")], &[0]);
        let b = table(&[("id", "bigint"), ("v", "text"), ("new", "text")], &[]);
        let SchemaCheck::Different(p) = compare(Some(&a), Some(&b)) else {
            panic!("comparable")
        };
        assert_eq!(
            p,
            vec![
                "column \"id\" has type integer in old, bigint in new",
                "column \"gone\" is missing in new",
                "column \"new\" is missing in old (extra in new)",
                "no primary key in new",
            ]
        );
        assert_eq!(
            compare(Some(&a), None),
            SchemaCheck::Different(vec!["table is missing in new".into()])
        );
        let c = table(&[("id", "integer"), ("v", "text"), ("gone", "text")], &[1]);
        let SchemaCheck::Different(p) = compare(Some(&a), Some(&c)) else {
            panic!("comparable")
        };
        assert_eq!(p, vec!["primary key (id) in old, (v) in new"]);
    }
}
