//! psql through the proxy: a script with multi-statement queries, \copy in both directions
//! and errors, compared with what psql prints against the old cluster directly.

use super::*;
use anyhow::{Context, Result};
use std::time::Duration;
use switchyard_tests::clients::{psql_bin, run_client};
use switchyard_tests::proxy::DB;
use switchyard_tests::wait::poll_until_async;
use tokio::process::Command;

/// `{dir}` is replaced by the test's temporary directory (`\copy` does not interpolate
/// psql variables).
const PSQL_SCRIPT: &str = r#"-- One Query message with several statements.
CREATE TABLE items (id int PRIMARY KEY, name text, qty int) \; INSERT INTO items VALUES (1, 'one', 10), (2, 'two', 20) \; INSERT INTO items VALUES (3, 'three', 30) \; SELECT count(*) AS multi FROM items;
SELECT 'a' AS x \; SELECT 'b' AS y;
-- Savepoints.
BEGIN;
INSERT INTO items VALUES (4, 'four', 40);
SAVEPOINT sp1;
INSERT INTO items VALUES (5, 'five', 50);
ROLLBACK TO SAVEPOINT sp1;
INSERT INTO items VALUES (6, 'six', 60);
RELEASE SAVEPOINT sp1;
COMMIT;
-- Errors inside a transaction, then ROLLBACK.
\set ON_ERROR_STOP 0
BEGIN;
INSERT INTO items VALUES (7, 'seven', 70);
INSERT INTO items VALUES (1, 'duplicate', 0);
\echo duplicate :SQLSTATE
SELECT 1;
\echo in-failed-transaction :SQLSTATE
ROLLBACK;
\echo rollback :SQLSTATE
\set ON_ERROR_STOP 1
SELECT count(*) AS after_rollback FROM items WHERE id = 7;
-- \copy from files, text and csv.
\copy items FROM '{dir}/in.txt'
\copy items FROM '{dir}/in.csv' WITH (FORMAT csv, HEADER true)
-- COPY FROM STDIN, good rows.
COPY items FROM STDIN;
14	fourteen	140
15	fifteen	150
\.
-- COPY FROM STDIN with a bad row in the middle: nothing of it is kept.
\set ON_ERROR_STOP 0
COPY items FROM STDIN;
20	twenty	200
21	twenty-one	not-a-number
22	twenty-two	220
\.
\echo copy-bad-row
\set ON_ERROR_STOP 1
SELECT count(*) AS from_bad_copy FROM items WHERE id BETWEEN 20 AND 29;
-- A temp table across statements.
CREATE TEMP TABLE scratch (id int, name text);
INSERT INTO scratch VALUES (30, 'thirty');
INSERT INTO scratch SELECT id + 1, name || '+1' FROM scratch;
INSERT INTO items SELECT id, name, id * 10 FROM scratch;
SELECT count(*) AS scratch_rows FROM scratch;
-- search_path.
CREATE SCHEMA other;
CREATE TABLE other.notes (v text);
SET search_path = other, public;
SHOW search_path;
INSERT INTO notes VALUES ('resolved through search_path');
SELECT count(*) AS items_via_public FROM items;
RESET search_path;
SHOW search_path;
-- LISTEN/NOTIFY within one session.
LISTEN psql_channel;
NOTIFY psql_channel, 'hello';
SELECT pg_notify('psql_channel', 'second');
UNLISTEN psql_channel;
NOTIFY psql_channel, 'not delivered';
-- \copy to files.
\copy (SELECT * FROM items ORDER BY id) TO '{dir}/out.txt'
\copy (SELECT * FROM items WHERE id >= 10 ORDER BY id) TO '{dir}/out.csv' WITH (FORMAT csv, HEADER true)
\echo done
"#;

/// What the script prints with `-q -At` (notification PIDs replaced by `N`).
const PSQL_EXPECTED_STDOUT: &str = r#"3
a
b
duplicate 23505
in-failed-transaction 25P02
rollback 00000
0
copy-bad-row
0
2
other, public
13
"$user", public
Asynchronous notification "psql_channel" with payload "hello" received from server process with PID N.

Asynchronous notification "psql_channel" with payload "second" received from server process with PID N.
done
"#;

const PSQL_IN_TXT: &str = "10\tten\t100\n11\t\\N\t110\n";
const PSQL_IN_CSV: &str = "id,name,qty\n12,\"twelve, with comma\",120\n13,\"quote \"\"q\"\"\",\n";

const PSQL_OUT_TXT: &str = "1\tone\t10\n2\ttwo\t20\n3\tthree\t30\n4\tfour\t40\n6\tsix\t60\n\
10\tten\t100\n11\t\\N\t110\n12\ttwelve, with comma\t120\n13\tquote \"q\"\t\\N\n\
14\tfourteen\t140\n15\tfifteen\t150\n30\tthirty\t300\n31\tthirty+1\t310\n";

const PSQL_OUT_CSV: &str = "id,name,qty\n10,ten,100\n11,,110\n12,\"twelve, with comma\",120\n\
13,\"quote \"\"q\"\"\",\n14,fourteen,140\n15,fifteen,150\n30,thirty,300\n31,thirty+1,310\n";

/// Replaces the digits after every "PID " with `N`.
fn mask_pids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("PID ") {
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            out.push('N');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_through_proxy() -> Result<()> {
    let s = setup().await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("in.txt"), PSQL_IN_TXT)?;
    std::fs::write(d.join("in.csv"), PSQL_IN_CSV)?;
    let script = PSQL_SCRIPT.replace("{dir}", d.to_str().context("non-UTF-8 temp dir")?);
    std::fs::write(d.join("script.sql"), script)?;

    let out = run_client(
        Command::new(psql_bin())
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(d.join("script.sql"))
            .arg(&s.url),
        "psql",
        Duration::from_secs(120),
    )
    .await?
    .success("psql through the proxy")?;

    assert_eq!(
        mask_pids(&out.stdout),
        PSQL_EXPECTED_STDOUT,
        "psql stdout; stderr:\n{}",
        out.stderr
    );
    // Exactly the three errors the script provokes, nothing else.
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .collect();
    assert_eq!(errors.len(), 3, "stderr:\n{}", out.stderr);
    assert!(
        errors[0].contains("duplicate key value violates unique constraint \"items_pkey\""),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("current transaction is aborted"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("invalid input syntax for type integer: \"not-a-number\""),
        "{}",
        errors[2]
    );

    assert_eq!(
        std::fs::read_to_string(d.join("out.txt"))?,
        PSQL_OUT_TXT,
        "\\copy TO text file"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("out.csv"))?,
        PSQL_OUT_CSV,
        "\\copy TO csv file"
    );

    // The old cluster has exactly what was committed.
    assert_eq!(
        old_psql(&s.pair, "SELECT id, coalesce(name, '<null>'), coalesce(qty::text, '<null>') FROM items ORDER BY id").await?,
        "1|one|10\n2|two|20\n3|three|30\n4|four|40\n6|six|60\n10|ten|100\n11|<null>|110\n\
         12|twelve, with comma|120\n13|quote \"q\"|<null>\n14|fourteen|140\n15|fifteen|150\n\
         30|thirty|300\n31|thirty+1|310"
    );
    assert_eq!(
        old_psql(&s.pair, "SELECT v FROM other.notes").await?,
        "resolved through search_path"
    );
    // Dual writes mirrored the script's DDL: new has the same tables as old.
    let tables_sql =
        "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY schemaname, tablename) FROM pg_tables \
                      WHERE schemaname NOT IN ('pg_catalog', 'information_schema', '_switchyard')";
    let old_tables = old_psql(&s.pair, tables_sql).await?;
    let new_tables = tokio::task::block_in_place(|| s.pair.new.psql(DB, tables_sql))?;
    assert_eq!(new_tables, old_tables);
    // The session ended: its temp table went with its backend.
    let pair = &s.pair;
    poll_until_async(
        "the psql session's temp table to be dropped",
        Duration::from_secs(10),
        || async move {
            Ok((old_psql(
                pair,
                "SELECT count(*) FROM pg_class WHERE relpersistence = 't'",
            )
            .await?
                == "0")
                .then_some(()))
        },
    )
    .await?;
    s.proxy.shutdown().await;
    Ok(())
}
