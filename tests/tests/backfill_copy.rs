//! `switchyard-backfill` against real clusters, one run at a time (scenario 28): every
//! key type, empty tables and sparse keys copied and verified; the direct path's
//! read-back check; foreign-key order and cycles; bad input.

use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::Duration;
use switchyard_tests::backfill::backfill;
use switchyard_tests::mirror::{assert_verified, on, pair_with};
use switchyard_tests::refusing_port;

/// Scenario 28: integer, sparse bigint, uuid, text (non-ASCII, where byte order and
/// collation order differ), composite keys, identity and generated columns, a foreign
/// key, an empty table: all copied in several chunks each and verified equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_type_is_copied_and_verified() -> Result<()> {
    // `texts` sorts by an ICU collation, whose order differs from byte order ('Ärger'
    // next to 'a', not after 'z'): chunk ranges must still agree on both sides.
    let schema = "
        CREATE TABLE ints (id int PRIMARY KEY, v text);
        CREATE TABLE sparse (id bigint PRIMARY KEY, v text);
        CREATE TABLE uuids (id uuid PRIMARY KEY, v int);
        CREATE TABLE texts (k text COLLATE \"und-x-icu\" PRIMARY KEY, v int);
        CREATE TABLE composite (region text, n int, v numeric, PRIMARY KEY (region, n));
        CREATE TABLE empty (id int PRIMARY KEY);
        CREATE TABLE parent (id int PRIMARY KEY, name text);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent);
        CREATE TABLE wide (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, j jsonb,
                           ts timestamptz, f float8, twice int GENERATED ALWAYS AS (id * 2) STORED);";
    let pair = pair_with(schema).await?;
    on(
        &pair.old,
        "INSERT INTO ints SELECT g, 'v' || g FROM generate_series(1, 2000) g;
         INSERT INTO sparse SELECT g::bigint * 1000000007, 's' FROM generate_series(-500, 500) g;
         INSERT INTO uuids SELECT md5(g::text)::uuid, g FROM generate_series(1, 1000) g;
         INSERT INTO texts SELECT 'k' || g, g FROM generate_series(1, 800) g;
         INSERT INTO texts VALUES ('Ärger', 1), ('zebra', 2), ('éclair', 3), ('Zulu', 4),
                                  ('ß', 5), ('日本', 6), ('a''quote', 7), ('back\\slash', 8), ('', 9);
         INSERT INTO composite SELECT r, n, n / 7.0 FROM unnest(ARRAY['eu', 'us', 'ÿ', 'EU', 'é']) r,
                                      generate_series(1, 300) n;
         INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 500) g;
         INSERT INTO child SELECT g, 1 + g % 500 FROM generate_series(1, 1500) g;
         INSERT INTO wide (j, ts, f) SELECT jsonb_build_object('g', g, 'a', ARRAY[g, g]),
                                           now() - g * interval '1 minute', g / 3.0
                                    FROM generate_series(1, 700) g;",
    )?;
    let tables = "child,ints,sparse,uuids,texts,composite,empty,parent,wide";
    let _run = backfill(
        &pair,
        &["--tables", tables, "--chunk-rows", "97", "--jobs", "3"],
    )
    .await?
    .exits(0)?;
    assert_verified(&pair, tables).await?;
    let per_table = on(
        &pair.new,
        "SELECT table_name, count(*), count(*) FILTER (WHERE status = 'done'), sum(rows_old), \
                bool_and(checksum_old = checksum_new) \
         FROM _switchyard.backfill_chunks GROUP BY 1 ORDER BY 1",
    )?;
    let mut seen = BTreeMap::new();
    for line in per_table.lines() {
        let f: Vec<&str> = line.split('|').collect();
        ensure!(f.len() == 5, "{line}");
        seen.insert(
            f[0].to_string(),
            (
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].to_string(),
            ),
        );
    }
    for (table, rows) in [
        ("ints", 2000),
        ("sparse", 1001),
        ("uuids", 1000),
        ("texts", 809),
        ("composite", 1500),
        ("empty", 0),
        ("parent", 500),
        ("child", 1500),
        ("wide", 700),
    ] {
        let key = format!("\"public\".\"{table}\"");
        let (chunks, done, sum, same) = seen
            .get(&key)
            .with_context(|| format!("{key} not in {per_table}"))?;
        let chunks: i64 = chunks.parse()?;
        ensure!(
            chunks.to_string() == *done,
            "{table}: not all chunks done: {per_table}"
        );
        ensure!(*sum == rows.to_string(), "{table}: rows {sum}, want {rows}");
        ensure!(same == "t", "{table}: checksums differ in the chunk table");
        if rows > 200 {
            ensure!(chunks > 2, "{table}: {chunks} chunks for {rows} rows");
        } else if rows == 0 {
            ensure!(chunks == 1, "{table}: {chunks} chunks for an empty table");
        }
    }
    let splits = on(
        &pair.new,
        "SELECT string_agg(table_name || '=' || split, ' ' ORDER BY table_name) FROM _switchyard.backfill_tables",
    )?;
    ensure!(
        splits.contains("\"ints\"=int-range") && splits.contains("\"sparse\"=keyset"),
        "dense ints cut by range, sparse bigints by keyset: {splits}"
    );
    // The parent's chunks were all done before the child's first started.
    let order = on(
        &pair.new,
        "SELECT (SELECT max(finished_at) FROM _switchyard.backfill_chunks WHERE table_name = '\"public\".\"parent\"') \
             <= (SELECT min(started_at) FROM _switchyard.backfill_chunks WHERE table_name = '\"public\".\"child\"')",
    )?;
    ensure!(order == "t", "child started before parent was done");
    // A second run finds everything done and copies nothing.
    let again = backfill(&pair, &["--tables", tables, "--format", "json"])
        .await?
        .exits(0)?;
    let doc: serde_json::Value =
        serde_json::from_str(&again.stdout).with_context(|| again.text())?;
    ensure!(doc["rows_this_run"] == 0, "{}", again.text());
    let attempts = on(
        &pair.new,
        "SELECT max(attempts) FROM _switchyard.backfill_chunks",
    )?;
    ensure!(
        attempts == "1",
        "a chunk was copied twice: max attempts {attempts}"
    );
    Ok(())
}

/// Direct path (dual writes off): each chunk is checked by hashing the rows as they are
/// relayed from old and reading the range back from new. A chunk that reads back
/// different (here a trigger on new rewrites one row as COPY inserts it; `ENABLE ALWAYS`,
/// as the loading sessions fire no ordinary trigger) is checked again in SQL and the row
/// repaired from old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_chunks_that_read_back_different_are_repaired() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    on(
        &pair.new,
        "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.id = 42 AND current_query() ILIKE 'COPY%' THEN NEW.v := 'tampered'; END IF;
         RETURN NEW; END $$;
         CREATE TRIGGER tamper BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION tamper();
         ALTER TABLE t ENABLE ALWAYS TRIGGER tamper",
    )?;
    on(
        &pair.old,
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    )?;
    backfill(
        &pair,
        &[
            "--tables",
            "t",
            "--chunk-rows",
            "100",
            "--dual-writes",
            "off",
            "--bulk",
            "off",
        ],
    )
    .await?
    .exits(0)?;
    let stats = on(
        &pair.new,
        "SELECT count(*), \
                count(*) FILTER (WHERE status = 'done' AND path = 'direct' AND rows_repaired = 0 \
                                 AND checksum_old LIKE 'xxh3:%' AND checksum_new = checksum_old), \
                count(*) FILTER (WHERE status = 'done' AND rows_repaired = 1 \
                                 AND checksum_old NOT LIKE 'xxh3:%' AND checksum_new = checksum_old \
                                 AND (lo IS NULL OR lo[1]::int <= 42) AND (hi IS NULL OR 42 < hi[1]::int)) \
         FROM _switchyard.backfill_chunks",
    )?;
    let f: Vec<&str> = stats.split('|').collect();
    ensure!(
        f[2] == "1" && f[1].parse::<i64>()? + 1 == f[0].parse::<i64>()?,
        "one chunk repaired in SQL, the others verified from the stream: {stats}"
    );
    ensure!(
        on(&pair.new, "SELECT v FROM t WHERE id = 42")?
            == on(&pair.old, "SELECT v FROM t WHERE id = 42")?
    );
    assert_verified(&pair, "t").await
}

/// Tables whose foreign keys form a cycle cannot be ordered: the run refuses them and
/// names `--fk-mode replica`, which then loads them with the checks off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_cycle_needs_replica_mode() -> Result<()> {
    let pair = pair_with(
        "CREATE TABLE ca (id int PRIMARY KEY, cb int);
         CREATE TABLE cb (id int PRIMARY KEY, ca int NOT NULL REFERENCES ca);
         ALTER TABLE ca ADD FOREIGN KEY (cb) REFERENCES cb;",
    )
    .await?;
    on(
        &pair.old,
        "INSERT INTO ca SELECT g, NULL FROM generate_series(1, 300) g;
         INSERT INTO cb SELECT g, 301 - g FROM generate_series(1, 300) g;
         UPDATE ca SET cb = id;",
    )?;
    backfill(&pair, &["--tables", "ca,cb", "--chunk-rows", "50"])
        .await?
        .exits(2)?
        .stderr_has("public.ca")?
        .stderr_has("--fk-mode replica")?;
    backfill(
        &pair,
        &[
            "--tables",
            "ca,cb",
            "--chunk-rows",
            "50",
            "--fk-mode",
            "replica",
        ],
    )
    .await?
    .exits(0)?;
    assert_verified(&pair, "ca,cb").await
}

/// A bad URL fails with exit 2 and a message that names the side without the password;
/// an unknown table fails before anything is written; --dry-run writes nothing and shows
/// a table without a primary key planned whole (`keyless`), which the run then copies
/// with the others (`backfill_keyless.rs` has the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_clearly() -> Result<()> {
    let (_refusing, port) = refusing_port()?;
    let bad = format!("postgres://app:sekrit@127.0.0.1:{port}/app");
    let run = switchyard_tests::backfill::run_backfill(
        &["--old", &bad, "--new", &bad],
        Duration::from_secs(60),
    )
    .await?
    .exits(2)?;
    ensure!(
        run.stderr.contains("connecting to the old database")
            && run.stderr.contains(&port.to_string()),
        "{}",
        run.text()
    );
    ensure!(
        !run.text().contains("sekrit"),
        "password leaked: {}",
        run.text()
    );

    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nopk (v int);")
        .await?;
    on(
        &pair.old,
        "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g; INSERT INTO nopk VALUES (1)",
    )?;

    let run = backfill(&pair, &["--tables", "t,nope"]).await?.exits(2)?;
    ensure!(
        run.stderr
            .contains("public.nope does not exist on the old database"),
        "{}",
        run.text()
    );

    let run = backfill(&pair, &["--dry-run"]).await?.exits(0)?;
    ensure!(
        run.stdout.contains("public.t")
            && run
                .stdout
                .lines()
                .any(|l| l.starts_with("public.nopk") && l.contains("keyless"))
            && run.stdout.contains("nothing was written"),
        "{}",
        run.text()
    );
    ensure!(
        on(
            &pair.new,
            "SELECT to_regclass('_switchyard.backfill_chunks') IS NULL"
        )? == "t",
        "dry run wrote the chunk table"
    );
    ensure!(on(&pair.new, "SELECT count(*) FROM t")? == "0");

    let metrics = tempfile::NamedTempFile::new()?;
    let path = metrics.path().to_string_lossy().to_string();
    let run = backfill(&pair, &["--metrics-file", &path])
        .await?
        .exits(0)?;
    ensure!(
        run.stdout.contains("public.nopk") && !run.stdout.contains("skipped"),
        "{}",
        run.text()
    );
    ensure!(on(&pair.new, "SELECT count(*) FROM nopk WHERE v = 1")? == "1");
    let text = std::fs::read_to_string(&path)?;
    ensure!(
        text.contains("switchyard_backfill_tables_refused 0")
            && text.contains("switchyard_backfill_rows_verified{table=\"public.t\"} 100")
            && text.contains("switchyard_backfill_rows_verified{table=\"public.nopk\"} 1"),
        "metrics file:\n{text}"
    );
    assert_verified(&pair, "t").await
}
