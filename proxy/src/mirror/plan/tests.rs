use super::*;

/// Functions named `my_writer*` may write; procedure `plain` does not commit.
struct Known;

impl Routines for Known {
    fn may_write(&self, name: &str) -> bool {
        name.starts_with("my_writer")
    }
    fn plain_procedure(&self, name: &str) -> bool {
        name == "plain"
    }
}

fn p(sql: &str) -> Plan {
    plan(sql, &Known)
}

#[test]
fn writes_ddl_and_reads() {
    for (sql, want) in [
        ("INSERT INTO t VALUES (now())", Plan::Write),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            Plan::Write,
        ),
        (
            "WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d",
            Plan::Write,
        ),
        ("COPY t FROM STDIN", Plan::CopyFrom),
        ("COPY t TO STDOUT", Plan::Pass),
        ("TRUNCATE t", Plan::Write),
        ("SELECT * FROM t FOR UPDATE", Plan::Pass),
        ("SELECT nextval('s'), count(*) FROM t", Plan::Pass),
        ("SELECT my_writer(1)", Plan::Write),
        ("EXPLAIN ANALYZE UPDATE t SET a = 1", Plan::Write),
        ("CREATE TEMP TABLE s (id int)", Plan::Pass),
        ("SELECT 1 AS a INTO TEMP scratch", Plan::Pass),
        ("CREATE TEMP TABLE scratch AS SELECT 1 AS a", Plan::Pass),
        ("RESET ALL", Plan::ResetsClaim),
        ("SET search_path = a", Plan::Pass),
        ("SELEC broken", Plan::Pass),
    ] {
        assert_eq!(p(sql), want, "{sql}");
    }
    for (sql, reason) in [
        ("SELECT lo_import('/tmp/x')", "large object"),
        (
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "CREATE INDEX CONCURRENTLY",
        ),
    ] {
        assert_eq!(p(sql), Plan::Flagged { reason }, "{sql}");
    }
    assert_eq!(
        p("CREATE TABLE x (id int)"),
        Plan::Ddl {
            secondary: Arc::from("CREATE TABLE x (id int)"),
            refill: None
        }
    );
    let refill = |sql: &str| match p(sql) {
        Plan::Ddl { refill, .. } => refill.map(|r| r.to_string()),
        other => panic!("{sql}: {other:?}"),
    };
    // The table an ALTER TABLE fills with values the secondary would compute differently.
    for (sql, table) in [
        ("ALTER TABLE app.t ADD COLUMN at timestamptz NOT NULL DEFAULT now(), ADD COLUMN k uuid DEFAULT gen_random_uuid()", Some("\"app\".\"t\"")),
        ("ALTER TABLE t ADD COLUMN n bigserial", Some("\"t\"")),
        ("ALTER TABLE t ADD COLUMN n int GENERATED ALWAYS AS IDENTITY", Some("\"t\"")),
        ("ALTER TABLE t ADD COLUMN at timestamptz DEFAULT CURRENT_TIMESTAMP", Some("\"t\"")),
        ("ALTER TABLE t ALTER COLUMN v TYPE int USING length(v)", Some("\"t\"")),
        ("ALTER TABLE t ADD COLUMN n int DEFAULT 7", None),
        ("ALTER TABLE t ALTER COLUMN v SET DEFAULT now()", None),
    ] {
        assert_eq!(refill(sql).as_deref(), table, "{sql}");
    }
}

#[test]
fn create_table_as_reaches_the_secondary_without_rows() {
    let Plan::Ddl { secondary: s, .. } =
        p("CREATE TABLE t2 AS SELECT now() AS at, g FROM generate_series(1, 3) g")
    else {
        panic!("expected DDL with a secondary text");
    };
    assert!(s.ends_with("WITH NO DATA"), "{s}");
    let Plan::Ddl { secondary: s, .. } = p("SELECT * INTO t3 FROM t") else {
        panic!("expected DDL with a secondary text");
    };
    assert!(
        s.starts_with("CREATE TABLE t3 AS SELECT") && s.ends_with("WITH NO DATA"),
        "{s}"
    );
    assert_eq!(
        p("CREATE MATERIALIZED VIEW v AS SELECT 1"),
        Plan::Ddl {
            secondary: Arc::from("CREATE MATERIALIZED VIEW v AS SELECT 1"),
            refill: None
        }
    );
}

#[test]
fn procedures_and_do_blocks() {
    assert_eq!(p("DO $$BEGIN INSERT INTO t VALUES (1); END$$"), Plan::Write);
    assert_eq!(
        p("DO $$BEGIN INSERT INTO t VALUES (1); COMMIT; END$$"),
        Plan::SelfCommitting
    );
    assert_eq!(p("CALL p(1)"), Plan::SelfCommitting);
    assert_eq!(p("CALL plain(1)"), Plan::Write);
    assert_eq!(p("SELECT my_reader(1)"), Plan::Pass);
    assert!(!controls_transactions("INSERT INTO commits VALUES (1)"));
    assert!(!controls_transactions(
        "INSERT INTO t VALUES (i, 'call'); -- commit later\n"
    ));
    assert!(!controls_transactions(
        "x := $q$ rollback $q$; /* commit */"
    ));
    assert!(controls_transactions("x := 1; COMMIT;"));
}

#[test]
fn transaction_control() {
    assert_eq!(p("BEGIN"), Plan::Txn(TxnOp::Begin));
    assert_eq!(p("end"), Plan::Txn(TxnOp::Commit { chain: false }));
    assert_eq!(
        p("COMMIT AND CHAIN"),
        Plan::Txn(TxnOp::Commit { chain: true })
    );
    assert_eq!(p("PREPARE TRANSACTION 'x'"), Plan::Txn(TxnOp::Prepare));
    assert_eq!(p("COMMIT PREPARED 'x'"), Plan::Txn(TxnOp::FinishPrepared));
    assert_eq!(
        p("ROLLBACK TO SAVEPOINT a"),
        Plan::Txn(TxnOp::RollbackTo("a".into()))
    );
}

#[test]
fn several_statements() {
    let Plan::Multi(pieces) =
        p("INSERT INTO t VALUES (1); BEGIN; INSERT INTO t VALUES (2); COMMIT")
    else {
        panic!("expected a multi-statement plan");
    };
    let texts: Vec<&str> = pieces.iter().map(|p| p.sql.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "INSERT INTO t VALUES (1)",
            "BEGIN",
            "INSERT INTO t VALUES (2)",
            "COMMIT"
        ]
    );
    assert_eq!(p("SELECT 1; SELECT 2"), Plan::Pass);
}
