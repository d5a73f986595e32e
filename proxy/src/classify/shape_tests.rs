//! The cache hands a statement the classification of the first statement with its
//! literal-blind key, so statements sharing a key must classify alike under a full parse.
//! These properties check that over statements built from real shapes and from token
//! soup, with constants valid and invalid. The fingerprint is left out: it names the
//! shape, and pg_query keeps some constants in it (a COPY option's value) that the key
//! does not, so a cached statement carries its first sibling's.

use super::{classify_uncached, literal_blind_key, Classified, Classifier, StatementClass};
use proptest::prelude::*;

const SHAPES: &[&str] = &[
    "SELECT * FROM t WHERE id = {}",
    "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
    "UPDATE t SET a = {} WHERE id = {}",
    "INSERT INTO t (a, b) VALUES ({}, {}) ON CONFLICT (a) DO UPDATE SET b = {}",
    "DELETE FROM t WHERE a IN ({}, {})",
    "SELECT nextval({})",
    "SELECT set_config({}, {}, false)",
    "SELECT pg_advisory_lock({})",
    "SELECT {}::regclass, {}::int",
    "WITH x AS (DELETE FROM t WHERE a = {} RETURNING *) SELECT * FROM x",
    "SELECT * FROM t WHERE a = {} FOR UPDATE",
    "BEGIN; UPDATE t SET a = {}; COMMIT",
    "SELECT {} -- comment\n, {} /* c */",
    "EXPLAIN ANALYZE UPDATE t SET a = {}",
    "SET statement_timeout = {}",
    "SELECT * FROM t LIMIT {} OFFSET {}",
    "COPY t FROM STDIN WITH (DELIMITER {})",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = {}",
    "SELECT f({}) FROM t WHERE b = {}",
    "INSERT INTO t SELECT {} WHERE {} > 0",
    "FETCH {} FROM c",
    "ALTER TABLE t ALTER c SET STATISTICS {}",
    "COMMENT ON TABLE t IS {}",
    "SELECT * FROM t FETCH FIRST {} ROWS ONLY",
    "SELECT data ? {} FROM t",
    "SELECT int {}, interval {} day",
];

/// Constants by the token the scanner makes of them, with text it rejects among them.
const CONSTANTS: &[&[&str]] = &[
    &[
        "1",
        "42",
        "0x1F",
        "0o17",
        "0b1_0",
        "1_000",
        "2147483647",
        "1abc",
        "1_",
        "0b2",
        "0x",
    ],
    &[
        "1.5",
        ".5",
        "1.",
        "1e10",
        "1.e5",
        "2E-3",
        "2147483648",
        "99999999999999999999999",
    ],
    &["1e", "1e+", "1..2", "1.2.3", "1__0"],
    &[
        "'a'",
        "'it''s'",
        "''",
        "E'x'",
        "E'\\n'",
        "E'\\u00'",
        "e'\\xff'",
        "U&'\\0061'",
        "U&'\\zz'",
        "$$d$$",
        "$q$ ' ; $q$",
        "'a'\n'b'",
        "'; DELETE FROM t; --'",
        "'unterminated",
    ],
    &["B'101'", "B'102'", "b''"],
    &["X'1F'", "X'zz'", "x''"],
    &["N'n'", "n''"],
];

/// Tokens for statements no application would send but a scanner must survive.
const SOUP: &[&str] = &[
    "SELECT",
    "UPDATE t SET a =",
    "INSERT INTO t VALUES (",
    ")",
    "(",
    ",",
    ";",
    " ",
    "\n",
    "--",
    "/*",
    "*/",
    "\"",
    "\"q\"",
    "'",
    "$",
    "$1",
    "$a$",
    "E",
    "U&",
    "x",
    "t1",
    ".",
    "-",
    "FROM t",
    "WHERE",
    "=",
    "?",
    "nextval(",
    "FOR UPDATE",
    "{}",
    "{}",
    "{}",
];

/// What routing decides by.
fn classes(c: &[Classified]) -> Vec<(StatementClass, bool, bool)> {
    c.iter()
        .map(|c| (c.class, c.parsed, c.calls_functions))
        .collect()
}

fn fill(shape: &str, constants: &[&str]) -> String {
    let mut out = String::new();
    let mut parts = shape.split("{}");
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push_str(constants[i % constants.len()]);
        out.push_str(part);
    }
    out
}

/// Two statements of one shape, each constant replaced by another of its kind.
fn siblings() -> impl Strategy<Value = (String, String)> {
    let shape = prop_oneof![
        prop::sample::select(SHAPES).prop_map(str::to_owned),
        prop::collection::vec(prop::sample::select(SOUP), 1..16).prop_map(|t| t.concat()),
    ];
    // Mostly two of one kind; sometimes any two, for keys that would wrongly meet.
    let any = || prop::sample::select(CONSTANTS.concat());
    let pair = prop_oneof![
        3 => prop::sample::select(CONSTANTS).prop_flat_map(|group| {
            (prop::sample::select(group), prop::sample::select(group))
        }),
        1 => (any(), any()),
    ];
    (shape, prop::collection::vec(pair, 1..4)).prop_map(|(shape, pairs)| {
        let (a, b): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
        (fill(&shape, &a), fill(&shape, &b))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 5000,
        max_global_rejects: 100_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn statements_sharing_a_key_classify_alike((a, b) in siblings()) {
        let key = literal_blind_key(&a);
        prop_assume!(key.is_some() && key == literal_blind_key(&b));
        prop_assert_eq!(
            classes(&classify_uncached(&a)),
            classes(&classify_uncached(&b)),
            "{:?} / {:?}", a, b
        );
    }

    #[test]
    fn a_cached_classification_is_the_full_parse((a, b) in siblings()) {
        let cache = Classifier::new(16);
        cache.classify(&a);
        prop_assert_eq!(
            classes(&cache.classify(&b).0),
            classes(&classify_uncached(&b)),
            "{:?} after {:?}", b, a
        );
    }
}
