//! Unit tests of the comparator (`digest.rs`).

use super::*;

fn cols(spec: &[(&str, u32)]) -> Vec<Column> {
    spec.iter()
        .map(|(n, t)| Column {
            name: n.to_string(),
            type_oid: *t,
            source: None,
        })
        .collect()
}

fn shape(order: Vec<SortKey>, limited: bool) -> Shape {
    Shape { order, limited }
}

fn digest(columns: &[(&str, u32)], sh: &Shape, rows: &[&[Option<&str>]]) -> Digest {
    let mut d = Digest::new(cols(columns), sh, 100, true);
    for r in rows {
        let vals: Vec<Option<&[u8]>> = r.iter().map(|v| v.map(str::as_bytes)).collect();
        d.row(&vals);
    }
    d
}

/// `digest` of rows without NULLs.
fn digest_values(columns: &[(&str, u32)], sh: &Shape, rows: &[&[&str]]) -> Digest {
    let rows: Vec<Vec<Option<&str>>> = rows
        .iter()
        .map(|r| r.iter().copied().map(Some).collect())
        .collect();
    let rows: Vec<&[Option<&str>]> = rows.iter().map(Vec::as_slice).collect();
    digest(columns, sh, &rows)
}

const INT: u32 = 23;

#[test]
fn any_order_without_order_by() {
    let sh = shape(vec![], false);
    let c = [("id", INT), ("v", 25)];
    let a = digest(&c, &sh, &[&[Some("1"), Some("x")], &[Some("2"), None]]);
    let b = digest(&c, &sh, &[&[Some("2"), None], &[Some("1"), Some("x")]]);
    assert_eq!(compare(&a, &b), None);
    let b = digest_values(&c, &sh, &[&["2", ""], &["1", "x"]]);
    assert_eq!(compare(&a, &b), Some(Difference::Rows), "NULL is not ''");
    let (oa, ob) = differing_rows(&a, &b, 5);
    assert_eq!((oa.len(), ob.len()), (1, 1));
    assert_eq!(oa[0], a.kept[1]);
}

#[test]
fn order_by_with_ties() {
    let sh = shape(vec![SortKey::Name("g".into())], false);
    // Ties may come in any order, for integer and for text keys.
    for (key_type, [k1, k2]) in [(INT, ["1", "2"]), (TEXT, ["x", "y"])] {
        let c = [("g", key_type), ("id", INT)];
        let a = digest_values(&c, &sh, &[&[k1, "1"], &[k1, "2"], &[k2, "3"]]);
        let b = digest_values(&c, &sh, &[&[k1, "2"], &[k1, "1"], &[k2, "3"]]);
        assert_eq!(compare(&a, &b), None, "key type {key_type}");
    }
    let c = [("g", INT), ("id", INT)];
    let a = digest_values(&c, &sh, &[&["1", "1"], &["1", "2"], &["2", "3"]]);
    let b = digest_values(&c, &sh, &[&["2", "3"], &["1", "1"], &["1", "2"]]);
    assert_eq!(compare(&a, &b), Some(Difference::Order));
}

#[test]
fn limit_cut_inside_a_tie() {
    let sh = shape(vec![SortKey::Position(1)], true);
    let c = [("g", INT), ("id", INT)];
    let a = digest_values(&c, &sh, &[&["1", "1"], &["2", "2"]]);
    let b = digest_values(&c, &sh, &[&["1", "1"], &["2", "9"]]);
    assert_eq!(
        compare(&a, &b),
        None,
        "which tied row survives LIMIT is arbitrary"
    );
    let b = digest_values(&c, &sh, &[&["1", "7"], &["2", "2"]]);
    assert_eq!(compare(&a, &b), Some(Difference::Rows));
}

#[test]
fn limit_without_order_compares_counts() {
    let sh = shape(vec![], true);
    let c = [("id", INT)];
    let a = digest_values(&c, &sh, &[&["1"], &["2"]]);
    let b = digest_values(&c, &sh, &[&["3"], &["4"]]);
    assert_eq!(compare(&a, &b), None);
    let b = digest_values(&c, &sh, &[&["3"]]);
    assert_eq!(compare(&a, &b), Some(Difference::RowCount));
}

#[test]
fn same_divergence_same_signature() {
    let sh = shape(vec![], false);
    let c = [("id", INT), ("v", INT)];
    let a1 = digest_values(&c, &sh, &[&["1", "1"], &["2", "5"]]);
    let b1 = digest_values(&c, &sh, &[&["1", "9"], &["2", "5"]]);
    // Row 2 changed on both sides in between; row 1 still differs the same way.
    let a2 = digest_values(&c, &sh, &[&["1", "1"], &["2", "6"]]);
    let b2 = digest_values(&c, &sh, &[&["1", "9"], &["2", "6"]]);
    assert_eq!(signature(&a1, &b1), signature(&a2, &b2));
    // A writer moving on: the difference is another one each time.
    let a3 = digest_values(&c, &sh, &[&["1", "2"], &["2", "5"]]);
    let b3 = digest_values(&c, &sh, &[&["1", "1"], &["2", "5"]]);
    assert_ne!(signature(&a1, &b1), signature(&a3, &b3));
}

const TEXT: u32 = 25;

fn names(sh: &Shape, names: &[&str]) -> Digest {
    let rows: Vec<&[&str]> = names.iter().map(std::slice::from_ref).collect();
    digest_values(&[("name", TEXT)], sh, &rows)
}

#[test]
fn text_sort_in_another_order_is_a_collation_difference() {
    let sh = shape(vec![SortKey::Name("name".into())], false);
    // "C" against a linguistic collation: upper case first, or a before A.
    let a = names(&sh, &["A", "B", "a", "b"]);
    let b = names(&sh, &["a", "A", "b", "B"]);
    assert_eq!(a.order_unchecked, None, "text order is checked");
    assert_eq!(compare(&a, &b), Some(Difference::Collation));
    assert_eq!(compare(&a, &a.clone()), None, "the same order matches");
    assert_eq!(a.text_sort_columns().len(), 1);
    // Other rows are a data difference whatever the order.
    let b = names(&sh, &["a", "A", "b", "C"]);
    assert_eq!(compare(&a, &b), Some(Difference::Rows));
}

#[test]
fn text_sort_with_limit_cut_elsewhere_is_a_collation_difference() {
    let sh = shape(vec![SortKey::Name("name".into())], true);
    // LIMIT 2 of {a, A, b, B}: "C" keeps A, B; a linguistic collation keeps a, A.
    let a = names(&sh, &["A", "B"]);
    let b = names(&sh, &["a", "A"]);
    assert_eq!(compare(&a, &b), Some(Difference::Collation));
    // Same rows, other order, under a limit: the sort differs.
    let a = names(&sh, &["A", "a", "b"]);
    let b = names(&sh, &["a", "A", "b"]);
    assert_eq!(compare(&a, &b), Some(Difference::Collation));
    // The cut inside the last tie still matches.
    let c = [("name", TEXT), ("id", INT)];
    let a = digest_values(&c, &sh, &[&["a", "1"], &["b", "2"]]);
    let b = digest_values(&c, &sh, &[&["a", "1"], &["b", "3"]]);
    assert_eq!(compare(&a, &b), None);
    // Same key sequence but another value in a non-key column: data, not the sort.
    let b = digest_values(&c, &sh, &[&["a", "9"], &["b", "2"]]);
    assert_eq!(compare(&a, &b), Some(Difference::Rows));
    // A row missing is a count difference.
    let b = digest_values(&c, &sh, &[&["a", "1"]]);
    assert_eq!(compare(&a, &b), Some(Difference::RowCount));
}

#[test]
fn mixed_keys_and_non_text_order() {
    // A text key after an integer key still makes an order difference a collation one.
    let sh = shape(vec![SortKey::Position(1), SortKey::Position(2)], false);
    let c = [("g", INT), ("name", TEXT)];
    let a = digest_values(&c, &sh, &[&["1", "B"], &["1", "a"]]);
    let b = digest_values(&c, &sh, &[&["1", "a"], &["1", "B"]]);
    assert_eq!(compare(&a, &b), Some(Difference::Collation));
    // Without a text key an order difference stays `order`, and under a limit other rows
    // stay `rows`.
    let sh = shape(vec![SortKey::Position(1)], true);
    let c = [("g", INT)];
    let a = digest_values(&c, &sh, &[&["1"], &["2"]]);
    let b = digest_values(&c, &sh, &[&["2"], &["3"]]);
    assert_eq!(compare(&a, &b), Some(Difference::Rows));
}

#[test]
fn collation_difference_has_a_stable_signature() {
    let sh = shape(vec![SortKey::Name("name".into())], false);
    let a = names(&sh, &["A", "B", "a", "b"]);
    let b = names(&sh, &["a", "A", "b", "B"]);
    let again = (a.clone(), names(&sh, &["a", "A", "b", "B"]));
    assert_eq!(signature(&a, &b), signature(&again.0, &again.1));
    let other = names(&sh, &["a", "b", "A", "B"]);
    assert_ne!(signature(&a, &b), signature(&a, &other));
}

#[test]
fn columns_and_types() {
    let sh = shape(vec![], false);
    let a = digest_values(&[("a", 114)], &sh, &[&[r#"{"x": 1, "y": 2}"#]]);
    let b = digest_values(&[("a", 3802)], &sh, &[&[r#"{"y": 2, "x": 1}"#]]);
    assert_eq!(compare(&a, &b), None, "json and jsonb");
    let b = digest(&[("b", 3802)], &sh, &[]);
    assert_eq!(compare(&a, &b), Some(Difference::Columns));
    let b = digest(&[("a", 25)], &sh, &[]);
    assert_eq!(compare(&a, &b), Some(Difference::Types));
}

#[test]
fn floats_and_numeric_normalized() {
    let sh = shape(vec![], false);
    let a = digest_values(
        &[("f", 701), ("n", 1700)],
        &sh,
        &[&["-0", "1.50"], &["NaN", "2"]],
    );
    let b = digest_values(
        &[("f", 701), ("n", 1700)],
        &sh,
        &[&["0", "1.5000"], &["NaN", "2.00"]],
    );
    assert_eq!(compare(&a, &b), None);
}
