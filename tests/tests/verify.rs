//! `switchyard-reconciler verify` and `repair` against real clusters (scenarios 28 and 29):
//! every key type, empty tables, sparse keys, exactly the injected differences found,
//! agreement with reladiff, repair (also dry run and from new), schema differences, bad
//! URLs, and no false alarm under live writes.

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use switchyard_tests::mirror::{reconciler, reconciler_json};
use switchyard_tests::proxy::{Pair, DB};

#[path = "verify/errors.rs"]
mod errors;
#[path = "verify/live.rs"]
mod live;
#[path = "verify/reladiff.rs"]
mod reladiff;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// (table, kind, key values).
type Found = BTreeSet<(String, String, Vec<String>)>;

fn found(json: &Value) -> Result<Found> {
    let mut out = Found::new();
    for t in json["tables"].as_array().context("no tables array")? {
        let table = t["table"].as_str().context("table name")?.to_string();
        for r in t["rows"].as_array().context("rows")? {
            let kind = r["kind"].as_str().context("kind")?.to_string();
            let key = r["key"]
                .as_array()
                .context("key")?
                .iter()
                .map(|v| v.as_str().unwrap_or("NULL").to_string())
                .collect();
            out.insert((table.clone(), kind, key));
        }
    }
    Ok(out)
}

fn table<'a>(json: &'a Value, name: &str) -> Result<&'a Value> {
    json["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == name))
        .with_context(|| format!("table {name} not in the report: {json:#}"))
}

fn both(pair: &Pair, sql: &str) -> Result<()> {
    pair.old.psql(DB, sql)?;
    pair.new.psql(DB, sql)?;
    Ok(())
}

fn key(table: &str, kind: &str, key: &[&str]) -> (String, String, Vec<String>) {
    (
        format!("public.{table}"),
        kind.to_string(),
        key.iter().map(|s| s.to_string()).collect(),
    )
}

/// Same schema and data on both sides, then the differences below applied to new.
fn load_key_type_tables(pair: &Pair) -> Result<()> {
    both(
        pair,
        "CREATE TABLE t_int (id int PRIMARY KEY, v text, n numeric, ts timestamptz, f float8,
                             b bytea, j jsonb, arr int[]);
         INSERT INTO t_int SELECT g, 'v' || g, g / 7.0,
                timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute', g / 3.0::float8,
                decode(md5(g::text), 'hex'), jsonb_build_object('g', g), ARRAY[g, g + 1]
           FROM generate_series(1, 3000) g;
         CREATE TABLE t_sparse (id bigint PRIMARY KEY, v text);
         INSERT INTO t_sparse SELECT g::bigint * g * 1000003 * (CASE WHEN g % 2 = 0 THEN 1 ELSE -1 END),
                'v' || g FROM generate_series(1, 2000) g;
         CREATE TABLE t_uuid (id uuid PRIMARY KEY, v int);
         INSERT INTO t_uuid SELECT md5('u' || g)::uuid, g FROM generate_series(1, 2000) g;
         CREATE TABLE t_comp (region text, id int, v text, PRIMARY KEY (region, id));
         INSERT INTO t_comp SELECT r, g, r || g FROM unnest(ARRAY['eu', 'us', 'ap', 'Ünïcode']) r,
                generate_series(1, 400) g;
         CREATE TABLE t_ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text,
                               g int GENERATED ALWAYS AS (length(v)) STORED);
         INSERT INTO t_ident (v) SELECT repeat('x', g % 13) FROM generate_series(1, 500) g;
         CREATE TABLE t_empty (id int PRIMARY KEY, v text);",
    )?;
    // Text keys whose order depends on the collation: ICU on old, C on new. Ranges must
    // compare in byte order on both sides or rows land in the wrong range.
    let words = "ARRAY['a', 'A', 'b', 'B', 'ä', 'Ä', 'z', 'Z', 'é', 'e', 'ß', 'ss', '日本', '中文',
                       '😀', '', ' ', 'a b', 'a-b', 'ab', 'a_b', 'ＡＢ', 'Ω', 'o']";
    for (cluster, collation) in [(&pair.old, "\"en-x-icu\""), (&pair.new, "\"C\"")] {
        cluster.psql(
            DB,
            &format!(
                "CREATE TABLE t_text (k text COLLATE {collation} PRIMARY KEY, v int);
                 INSERT INTO t_text SELECT w, 1 FROM unnest({words}) w WHERE w <> 'Ω';
                 INSERT INTO t_text SELECT 'k' || g || 'é', g FROM generate_series(1, 1500) g;"
            ),
        )?;
    }
    pair.new.psql(
        DB,
        "DELETE FROM t_int WHERE id IN (5, 1500, 3000);
         INSERT INTO t_int (id, v) VALUES (3001, 'extra'), (0, 'zero'), (-7, 'neg');
         UPDATE t_int SET v = 'changed' WHERE id = 7;
         UPDATE t_int SET n = n + 1 WHERE id = 2999;
         UPDATE t_int SET ts = ts + interval '1 microsecond' WHERE id = 100;
         UPDATE t_int SET f = f + 1e-12 WHERE id = 1234;
         DELETE FROM t_sparse WHERE id IN (-1000003, 4000012000000);
         INSERT INTO t_sparse VALUES (42, 'extra');
         UPDATE t_sparse SET v = 'changed' WHERE id = 1000003000000;
         DELETE FROM t_uuid WHERE id = md5('u1')::uuid;
         UPDATE t_uuid SET v = -2 WHERE id = md5('u2')::uuid;
         INSERT INTO t_uuid VALUES (md5('new')::uuid, 0);
         DELETE FROM t_text WHERE k = 'ä';
         UPDATE t_text SET v = 2 WHERE k = 'B';
         INSERT INTO t_text VALUES ('Ω', 1), ('aB', 1);
         DELETE FROM t_comp WHERE region = 'eu' AND id = 1;
         UPDATE t_comp SET v = 'changed' WHERE region = 'Ünïcode' AND id = 5;
         INSERT INTO t_comp VALUES ('zz', 1, 'extra');
         DELETE FROM t_ident WHERE id = 10;
         UPDATE t_ident SET v = 'longer value' WHERE id = 20;",
    )?;
    Ok(())
}

fn expected_differences(pair: &Pair) -> Result<Found> {
    let uuid = |s: &str| pair.old.psql(DB, &format!("SELECT md5('{s}')::uuid"));
    let (u1, u2, unew) = (uuid("u1")?, uuid("u2")?, uuid("new")?);
    let m = "missing_in_new";
    let e = "extra_in_new";
    let d = "different";
    Ok([
        key("t_int", m, &["5"]),
        key("t_int", m, &["1500"]),
        key("t_int", m, &["3000"]),
        key("t_int", e, &["3001"]),
        key("t_int", e, &["0"]),
        key("t_int", e, &["-7"]),
        key("t_int", d, &["7"]),
        key("t_int", d, &["2999"]),
        key("t_int", d, &["100"]),
        key("t_int", d, &["1234"]),
        key("t_sparse", m, &["-1000003"]),
        key("t_sparse", m, &["4000012000000"]),
        key("t_sparse", e, &["42"]),
        key("t_sparse", d, &["1000003000000"]),
        key("t_uuid", m, &[&u1]),
        key("t_uuid", d, &[&u2]),
        key("t_uuid", e, &[&unew]),
        key("t_text", m, &["ä"]),
        key("t_text", d, &["B"]),
        key("t_text", e, &["Ω"]),
        key("t_text", e, &["aB"]),
        key("t_comp", m, &["eu", "1"]),
        key("t_comp", d, &["Ünïcode", "5"]),
        key("t_comp", e, &["zz", "1"]),
        key("t_ident", m, &["10"]),
        key("t_ident", d, &["20"]),
    ]
    .into_iter()
    .collect())
}

/// Scenarios 28 and 29: every key type, exactly the injected rows, with and without forced
/// bisection; dry run changes nothing; repair makes the sides equal, also from new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_exactly_the_injected_differences_and_repairs_them() -> Result<()> {
    let pair = Pair::start()?;
    load_key_type_tables(&pair)?;
    let expected = expected_differences(&pair)?;

    let (code, json) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 1, "{json:#}");
    assert_eq!(found(&json)?, expected, "{json:#}");
    assert_eq!(json["equal"], false);
    let t_int = table(&json, "public.t_int")?;
    assert_eq!(t_int["rows_old"], 3000);
    assert_eq!(t_int["rows_new"], 3000);
    assert_eq!(t_int["missing_in_new"], 3);
    assert_eq!(t_int["extra_in_new"], 3);
    assert_eq!(t_int["different"], 4);
    assert_eq!(t_int["status"], "different");
    let empty = table(&json, "public.t_empty")?;
    assert_eq!(empty["status"], "equal");
    assert_eq!(empty["rows_old"], 0);

    // Tiny ranges force several levels of bisection: the same rows must come out.
    let (code, bisected) = reconciler_json(
        &pair,
        "verify",
        &[
            "--chunk-rows",
            "64",
            "--leaf-rows",
            "8",
            "--bisection-factor",
            "3",
            "--jobs",
            "3",
        ],
    )
    .await?;
    assert_eq!(code, 1);
    assert_eq!(found(&bisected)?, expected, "{bisected:#}");
    let ranges = table(&bisected, "public.t_int")?["ranges_checked"]
        .as_u64()
        .context("ranges_checked")?;
    assert!(ranges > 50, "bisection did not run: {ranges} ranges");

    // The text row hash (servers before PostgreSQL 14) finds the same rows.
    let (code, text_mode) = reconciler_json(&pair, "verify", &["--row-hash", "text"]).await?;
    assert_eq!(code, 1);
    assert_eq!(found(&text_mode)?, expected, "{text_mode:#}");

    // The human summary names the table and its counts.
    let human = reconciler(&pair, "verify", &["--tables", "t_int,t_empty"]).await?;
    assert_eq!(human.code(), Some(1), "{}", human.text());
    assert!(
        human
            .stdout
            .contains("public.t_int: DIFFERENT: 3 missing in new, 3 extra in new, 4 different"),
        "{}",
        human.text()
    );
    assert!(
        human.stdout.contains("public.t_empty: equal, 0 rows"),
        "{}",
        human.text()
    );

    // Dry run: reports the plan, changes nothing.
    let (code, dry) = reconciler_json(&pair, "repair", &["--dry-run"]).await?;
    assert_eq!(code, 1, "{dry:#}");
    let plan = &table(&dry, "public.t_int")?["repair"];
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["upserted"], 7, "{dry:#}");
    assert_eq!(plan["deleted"], 3, "{dry:#}");
    let (code, again) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 1);
    assert_eq!(found(&again)?, expected, "the dry run changed something");

    // Repair from old, then verify reports nothing.
    let (code, repaired) = reconciler_json(&pair, "repair", &[]).await?;
    assert_eq!(code, 0, "{repaired:#}");
    let fix = &table(&repaired, "public.t_int")?["repair"];
    assert_eq!(fix["upserted"], 7, "{repaired:#}");
    assert_eq!(fix["deleted"], 3, "{repaired:#}");
    assert_eq!(table(&repaired, "public.t_int")?["status"], "repaired");
    let (code, after) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 0, "{after:#}");
    assert!(found(&after)?.is_empty());
    assert_eq!(after["equal"], true);
    // The identity row came back with its own id and the generated column recomputed.
    assert_eq!(
        pair.new.psql(
            DB,
            "SELECT id, v, g FROM t_ident WHERE id IN (10, 20) ORDER BY id"
        )?,
        pair.old.psql(
            DB,
            "SELECT id, v, g FROM t_ident WHERE id IN (10, 20) ORDER BY id"
        )?
    );
    // Repair is idempotent: a second run finds nothing to do.
    let (code, _) = reconciler_json(&pair, "repair", &[]).await?;
    assert_eq!(code, 0);

    // Repair from new: old takes new's rows.
    pair.new.psql(
        DB,
        "UPDATE t_text SET v = 999 WHERE k = '日本'; DELETE FROM t_text WHERE k = 'ß';
         INSERT INTO t_text VALUES ('ñ', 5)",
    )?;
    let (code, from_new) =
        reconciler_json(&pair, "repair", &["--source", "new", "--tables", "t_text"]).await?;
    assert_eq!(code, 0, "{from_new:#}");
    let fix = &table(&from_new, "public.t_text")?["repair"];
    assert_eq!(fix["source"], "new");
    assert_eq!(fix["upserted"], 2, "{from_new:#}");
    assert_eq!(fix["deleted"], 1, "{from_new:#}");
    assert_eq!(
        pair.old.psql(DB, "SELECT v FROM t_text WHERE k = '日本'")?,
        "999"
    );
    assert_eq!(
        pair.old
            .psql(DB, "SELECT count(*) FROM t_text WHERE k = 'ß'")?,
        "0"
    );
    let (code, _) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_and_empty_tables_exit_zero() -> Result<()> {
    let pair = Pair::start()?;
    // No user tables at all.
    let (code, json) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["tables"].as_array().map(Vec::len), Some(0));

    both(
        &pair,
        "CREATE TABLE empty_a (id bigint PRIMARY KEY);
         CREATE TABLE empty_b (k text PRIMARY KEY, v int);
         CREATE TABLE full_a (id int PRIMARY KEY, v text);
         INSERT INTO full_a SELECT g, repeat('x', g % 50) FROM generate_series(1, 25000) g;
         ANALYZE full_a;",
    )?;
    // Switchyard's own schema is not compared even when it differs.
    pair.old.psql(
        DB,
        "CREATE SCHEMA _switchyard; CREATE TABLE _switchyard.retry (id int PRIMARY KEY)",
    )?;
    let metrics = tempfile::NamedTempFile::new()?;
    let metrics_path = metrics.path().to_str().context("temp path")?.to_string();
    let (code, json) = reconciler_json(
        &pair,
        "verify",
        &["--jobs", "2", "--metrics-file", &metrics_path],
    )
    .await?;
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["tables"].as_array().map(Vec::len), Some(3), "{json:#}");
    let prom = std::fs::read_to_string(metrics.path())?;
    for line in [
        "switchyard_reconciler_rows{command=\"verify\",table=\"public.full_a\",side=\"new\"} 25000",
        "switchyard_reconciler_differences{command=\"verify\",table=\"public.full_a\",kind=\"different\"} 0",
        "switchyard_reconciler_exit_code{command=\"verify\"} 0",
    ] {
        assert!(prom.lines().any(|l| l == line), "{line} not in:\n{prom}");
    }
    assert_eq!(table(&json, "public.full_a")?["rows_new"], 25000);
    // Several first-pass ranges ran (25000 rows at 10000 per range).
    assert!(table(&json, "public.full_a")?["ranges_checked"].as_u64() >= Some(3));

    // One side empty: every row is missing, counted exactly, listed up to --max-keys.
    pair.new.psql(DB, "TRUNCATE full_a")?;
    let (code, json) = reconciler_json(&pair, "verify", &["--max-keys", "100"]).await?;
    assert_eq!(code, 1);
    let t = table(&json, "public.full_a")?;
    assert_eq!(t["missing_in_new"], 25000, "{t:#}");
    assert_eq!(t["rows"].as_array().map(Vec::len), Some(100));
    assert_eq!(t["truncated"], true);
    // Repair copies them all, over several passes.
    let (code, json) = reconciler_json(&pair, "repair", &["--max-keys", "10000"]).await?;
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(table(&json, "public.full_a")?["repair"]["upserted"], 25000);
    assert!(table(&json, "public.full_a")?["repair"]["passes"].as_u64() >= Some(3));
    let (code, json) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 0, "{json:#}");
    Ok(())
}
