//! `verify` and `repair` of what has no key to match rows by, against real clusters:
//! tables without a primary key (compared as multisets: duplicates count, NULLs are
//! values) and sequences (one behind on the side that takes writes next is a difference).

use anyhow::{Context, Result};
use serde_json::Value;
use switchyard_tests::mirror::{reconciler, reconciler_json};
use switchyard_tests::proxy::{Pair, DB};

fn table<'a>(json: &'a Value, name: &str) -> Result<&'a Value> {
    json["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == name))
        .with_context(|| format!("table {name} not in the report: {json:#}"))
}

/// Every row of `t` with its number of copies, in one text (the multiset, sorted).
fn multiset(c: &switchyard_tests::pg::PgCluster, t: &str) -> Result<String> {
    c.psql(
        DB,
        &format!(
            "SELECT coalesce(string_agg(r || ' x' || n, E'\\n' ORDER BY r), '')
             FROM (SELECT x::text AS r, count(*) AS n FROM {t} x GROUP BY 1) s"
        ),
    )
}

fn assert_same_rows(pair: &Pair, t: &str) -> Result<()> {
    let (a, b) = (multiset(&pair.old, t)?, multiset(&pair.new, t)?);
    assert_eq!(a, b, "{t} differs:\nold:\n{a}\nnew:\n{b}");
    Ok(())
}

/// (row text, copies on old, copies on new) of every listed row of `name`.
fn listed(json: &Value, name: &str) -> Result<Vec<(String, i64, i64)>> {
    let mut out: Vec<(String, i64, i64)> = table(json, name)?["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .map(|r| {
            (
                r["row"].as_str().unwrap_or("?").to_string(),
                r["copies_old"].as_i64().unwrap_or(-1),
                r["copies_new"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

const KEYLESS: &str = "CREATE TABLE events (at timestamptz, kind text, amount numeric, tags text[]);
     INSERT INTO events VALUES
       ('2026-01-01 10:00+00', 'pay', 10.50, '{a,b}'),
       ('2026-01-01 10:00+00', 'pay', 10.50, '{a,b}'),
       ('2026-01-01 10:00+00', 'pay', 10.50, '{a,b}'),
       (NULL, 'refund', NULL, NULL),
       (NULL, 'refund', NULL, NULL),
       ('2026-01-02 11:00+00', NULL, 1e-3, '{}');
     CREATE TABLE history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));";

/// Duplicates, NULLs and empty tables: equal multisets exit 0; one copy too many, one too
/// few and one changed row are found exactly, listed with their copies, and repaired from
/// old, then from new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_a_key_are_compared_as_multisets_and_repaired() -> Result<()> {
    let pair = Pair::start()?;
    pair.old.psql(DB, KEYLESS)?;
    pair.new.psql(DB, KEYLESS)?;
    // Same rows, another physical order on new: still equal.
    pair.new.psql(
        DB,
        "CREATE TABLE tmp AS SELECT * FROM events ORDER BY kind DESC NULLS FIRST;
         TRUNCATE events; INSERT INTO events SELECT * FROM tmp; DROP TABLE tmp;",
    )?;
    let (code, j) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(table(&j, "public.events")?["status"], "equal");
    assert_eq!(table(&j, "public.events")?["rows_old"], 6);
    assert_eq!(
        table(&j, "public.history")?["status"],
        "equal",
        "empty keyless table"
    );

    // A duplicate lost on new, a NULL-bearing duplicate doubled, a row changed.
    pair.new.psql(
        DB,
        "DELETE FROM events WHERE ctid = (SELECT ctid FROM events WHERE kind = 'pay' LIMIT 1);
         INSERT INTO events VALUES (NULL, 'refund', NULL, NULL);
         UPDATE events SET amount = 2 WHERE amount = 1e-3;",
    )?;
    let (code, j) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 1, "{j:#}");
    let t = table(&j, "public.events")?;
    assert_eq!(t["status"], "different");
    // One pay copy and the original 1e-3 row missing; one refund copy and the changed
    // row extra.
    assert_eq!(
        (t["missing_in_new"].clone(), t["extra_in_new"].clone()),
        (2.into(), 2.into())
    );
    let rows = listed(&j, "public.events")?;
    assert_eq!(rows.len(), 4, "{rows:?}");
    // (part of the row, copies on old, copies on new)
    for (part, on_old, on_new) in [
        ("pay", 3, 2),
        ("refund", 2, 3),
        ("0.001", 1, 0),
        (",2,", 0, 1),
    ] {
        assert!(
            rows.iter()
                .any(|(r, o, n)| r.contains(part) && (*o, *n) == (on_old, on_new)),
            "{part}: {rows:?}"
        );
    }
    let run = reconciler(&pair, "verify", &[]).await?;
    assert!(
        run.stdout.contains("(no primary key: whole rows)")
            && run.stdout.contains("(copies: old 3, new 2)"),
        "{}",
        run.text()
    );

    // Dry run: counts only, nothing changes.
    let (code, j) = reconciler_json(&pair, "repair", &["--dry-run"]).await?;
    assert_eq!(code, 1, "{j:#}");
    let r = &table(&j, "public.events")?["repair"];
    assert_eq!(
        (r["upserted"].clone(), r["deleted"].clone()),
        (2.into(), 2.into()),
        "{r:#}"
    );
    assert_ne!(
        multiset(&pair.old, "events")?,
        multiset(&pair.new, "events")?
    );

    let (code, j) = reconciler_json(&pair, "repair", &[]).await?;
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(table(&j, "public.events")?["status"], "repaired");
    assert_same_rows(&pair, "events")?;
    let (code, j) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 0, "{j:#}");

    // From new: old is made to hold new's copies.
    pair.new.psql(
        DB,
        "INSERT INTO events SELECT * FROM events WHERE kind = 'pay' LIMIT 2",
    )?;
    let (code, j) = reconciler_json(&pair, "repair", &["--source", "new"]).await?;
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(table(&j, "public.events")?["repair"]["upserted"], 2);
    assert_eq!(
        pair.old
            .psql(DB, "SELECT count(*) FROM events WHERE kind = 'pay'")?,
        "5"
    );
    assert_same_rows(&pair, "events")?;
    Ok(())
}

/// A larger keyless table (buckets narrow the search) with one side missing most rows:
/// the differences are counted exactly, listed up to --max-keys, and repair copies them
/// all over several passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_keyless_differences_are_narrowed_down_and_repaired() -> Result<()> {
    let pair = Pair::start()?;
    let schema = "CREATE TABLE log (n int, v text);
         INSERT INTO log SELECT g % 20000, md5((g % 20000)::text) FROM generate_series(1, 40000) g;";
    pair.old.psql(DB, schema)?;
    pair.new.psql(DB, schema)?;
    pair.new.psql(
        DB,
        "DELETE FROM log WHERE ctid IN (SELECT ctid FROM log WHERE n % 1000 = 7 LIMIT 15);
         INSERT INTO log VALUES (-1, 'only on new'), (-1, 'only on new');",
    )?;
    let (code, j) = reconciler_json(&pair, "verify", &["--leaf-rows", "1000"]).await?;
    assert_eq!(code, 1, "{j:#}");
    let t = table(&j, "public.log")?;
    assert_eq!(
        (t["missing_in_new"].clone(), t["extra_in_new"].clone()),
        (15.into(), 2.into()),
        "{t:#}"
    );
    assert!(
        t["ranges_checked"].as_u64() > Some(16),
        "buckets were used: {t:#}"
    );
    let rows = listed(&j, "public.log")?;
    assert!(
        rows.contains(&("(-1,\"only on new\")".to_string(), 0, 2)),
        "{rows:?}"
    );

    pair.new.psql(DB, "TRUNCATE log")?;
    let (code, j) = reconciler_json(&pair, "verify", &["--max-keys", "100"]).await?;
    assert_eq!(code, 1);
    let t = table(&j, "public.log")?;
    assert_eq!(t["missing_in_new"], 40000, "{t:#}");
    assert_eq!(t["truncated"], true);
    assert_eq!(t["rows"].as_array().map(Vec::len), Some(100));
    let (code, j) = reconciler_json(
        &pair,
        "repair",
        &["--max-keys", "5000", "--leaf-rows", "5000"],
    )
    .await?;
    assert_eq!(code, 0, "{j:#}");
    let r = &table(&j, "public.log")?["repair"];
    assert_eq!(r["upserted"], 40000, "{r:#}");
    assert!(r["passes"].as_u64() >= Some(2), "{r:#}");
    assert_same_rows(&pair, "log")?;
    Ok(())
}

/// Sequences: new's behind old's is a difference (exit 1, listed with both next values);
/// `--skip-sequences` leaves them out; repair sets new's past old's; during the cutover's
/// `writes-new` phase the side checked is old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_behind_on_the_side_taking_writes_next_are_differences() -> Result<()> {
    let pair = Pair::start()?;
    let schema = "CREATE TABLE orders (id bigserial PRIMARY KEY, v text);
         CREATE TABLE tickets (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);
         CREATE SEQUENCE invoice_no START 1000;";
    pair.old.psql(DB, schema)?;
    pair.new.psql(DB, schema)?;
    let (code, j) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(j["sequences"].as_array().map(Vec::len), Some(0));

    // Old hands out ids; rows reach new with them (as dual writes do), new's sequences stay.
    pair.old.psql(
        DB,
        "INSERT INTO orders (v) SELECT 'o' FROM generate_series(1, 50);
         INSERT INTO tickets DEFAULT VALUES; SELECT nextval('invoice_no');",
    )?;
    pair.new.psql(
        DB,
        "INSERT INTO orders SELECT g, 'o' FROM generate_series(1, 50) g;
         INSERT INTO tickets VALUES (1);",
    )?;
    let (code, j) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 1, "{j:#}");
    assert_eq!(
        table(&j, "public.orders")?["status"],
        "equal",
        "rows are equal"
    );
    let seqs = j["sequences"].as_array().context("sequences")?;
    let find = |name: &str| seqs.iter().find(|s| s["name"] == name).cloned();
    let orders = find("public.orders_id_seq").with_context(|| format!("{j:#}"))?;
    assert_eq!(orders["behind"], "new");
    assert_eq!(
        (orders["next_old"].clone(), orders["next_new"].clone()),
        (51.into(), 1.into())
    );
    assert!(find("public.tickets_id_seq").is_some(), "{j:#}");
    assert_eq!(
        find("public.invoice_no").context("invoice_no")?["next_old"],
        1001
    );
    let run = reconciler(&pair, "verify", &[]).await?;
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stdout
            .contains("sequence public.orders_id_seq: BEHIND on new: hands out 1 next, old 51"),
        "{}",
        run.text()
    );
    // Rows only.
    let (code, j) = reconciler_json(&pair, "verify", &["--skip-sequences"]).await?;
    assert_eq!(code, 0, "{j:#}");
    // Naming tables narrows the check to the sequences their columns own.
    let (code, j) = reconciler_json(&pair, "verify", &["--tables", "tickets"]).await?;
    assert_eq!(code, 1, "{j:#}");
    assert_eq!(j["sequences"].as_array().map(Vec::len), Some(1), "{j:#}");

    let (code, j) = reconciler_json(&pair, "repair", &[]).await?;
    assert_eq!(code, 0, "{j:#}");
    assert!(
        j["sequences"]
            .as_array()
            .context("sequences")?
            .iter()
            .all(|s| s["status"] == "repaired"),
        "{j:#}"
    );
    let next: i64 = pair
        .new
        .psql(DB, "SELECT nextval('orders_id_seq')")?
        .parse()?;
    assert!(next > 50, "new's next order id {next} collides with old's");
    let (code, j) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 0, "{j:#}");

    // In writes-new, new takes the writes and old is where they go back: old is checked.
    let client = switchyard_core::connect::connect(
        switchyard_core::connect::Db::Old,
        &pair.old.url(DB),
        "test",
    )
    .await?;
    switchyard_core::cutover::ensure_schema(&client).await?;
    client
        .batch_execute("UPDATE _switchyard.cutover SET phase = 'writes-new'")
        .await?;
    let (code, j) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 1, "{j:#}");
    let seqs = j["sequences"].as_array().context("sequences")?;
    assert!(
        seqs.iter()
            .any(|s| s["name"] == "public.orders_id_seq" && s["behind"] == "old"),
        "{j:#}"
    );
    Ok(())
}
