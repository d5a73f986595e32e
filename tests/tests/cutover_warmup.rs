//! `switchyard-proxy cutover warm-up` on real clusters restarted with cold caches: a table
//! and its index read on old end up whole in new's buffer cache (pg_buffercache on new),
//! a table old did not read does not, `--dry-run` loads nothing, the budget leaves out
//! what does not fit, and a role that may not create or read pg_buffercache gets the fix
//! in the error. The status API shows both databases' cache hit ratios.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::process::Output;
use switchyard_tests::cutover::cutover_cli;
use switchyard_tests::http::get;
use switchyard_tests::mirror::{on, pair_with};
use switchyard_tests::proxy::{proxy_bin, start_proxy, Pair, DB};
use switchyard_tests::PgCluster;

/// `hot` is read on old after the restart, `cold` is not (and autovacuum leaves it alone,
/// so nothing else brings it into old's cache).
const SCHEMA: &str = "
CREATE TABLE hot (id int PRIMARY KEY, pad text NOT NULL);
INSERT INTO hot SELECT g, repeat('h', 100) FROM generate_series(1, 20000) g;
CREATE TABLE cold (id int PRIMARY KEY, pad text NOT NULL) WITH (autovacuum_enabled = false);
INSERT INTO cold SELECT g, repeat('c', 100) FROM generate_series(1, 5000) g;";

/// Main-fork buffers of `rel` in `c`'s cache (needs pg_buffercache there).
fn cached(c: &PgCluster, rel: &str) -> Result<i64> {
    Ok(on(
        c,
        &format!(
            "SELECT count(*) FROM pg_buffercache
             WHERE relfilenode = pg_relation_filenode('{rel}') AND relforknumber = 0
               AND reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
    )?
    .parse()?)
}

fn blocks(c: &PgCluster, rel: &str) -> Result<i64> {
    Ok(on(
        c,
        &format!("SELECT pg_relation_size('{rel}') / current_setting('block_size')::int8"),
    )?
    .parse()?)
}

fn warm_up(old_url: &str, new_url: &str, extra: &[&str]) -> Result<Output> {
    tokio::task::block_in_place(|| {
        std::process::Command::new(proxy_bin()?)
            .args(["cutover", "warm-up", "--old", old_url, "--new", new_url])
            .args(extra)
            .output()
            .context("running switchyard-proxy cutover warm-up")
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn item<'a>(report: &'a Value, name: &str) -> Result<&'a Value> {
    report["plan"]["items"]
        .as_array()
        .context("plan items")?
        .iter()
        .find(|i| i["name"] == name)
        .with_context(|| format!("{name} not in the plan: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_loads_what_old_reads_into_new_and_nothing_else() -> Result<()> {
    let pair = pair_with(SCHEMA).await?;
    // Empty caches on both: what is cached from here on was read since.
    for c in [&pair.old, &pair.new] {
        on(c, "VACUUM ANALYZE hot, cold")?;
        tokio::task::block_in_place(|| c.stop_fast().and_then(|_| c.start()))?;
    }
    on(&pair.new, "CREATE EXTENSION pg_buffercache")?;
    on(
        &pair.old,
        "SELECT sum(length(pad)) FROM hot;
         SET enable_seqscan = off; SELECT count(*) FROM hot WHERE id > 0",
    )?;
    let (old_url, new_url) = (pair.old.url(DB), pair.new.url(DB));
    for rel in ["hot", "hot_pkey", "cold"] {
        ensure!(
            cached(&pair.new, rel)? == 0,
            "{rel} cached on new after the restart"
        );
    }

    // A role that may not create the extension on old: nothing happens, the fix is named.
    on(&pair.old, "CREATE ROLE plain LOGIN")?;
    let plain_url = format!(
        "postgres://plain@{}:{}/{DB}",
        pair.old.host(),
        pair.old.port()
    );
    let out = warm_up(&plain_url, &new_url, &[])?;
    let said = text(&out);
    ensure!(
        out.status.code() == Some(1)
            && said.contains("pg_buffercache")
            && said.contains("CREATE EXTENSION pg_buffercache"),
        "{out:?}"
    );

    // Dry run: the plan names hot and its index with what old holds of them, loads nothing.
    let out = warm_up(&old_url, &new_url, &["--dry-run", "--json"])?;
    ensure!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).context("dry run's JSON")?;
    ensure!(report["loaded"].is_null(), "{report}");
    let (hot_old, pkey_old) = (cached(&pair.old, "hot")?, cached(&pair.old, "hot_pkey")?);
    let cold_old = cached(&pair.old, "cold")?;
    ensure!(
        hot_old > 0 && pkey_old > 0 && cold_old == 0,
        "old caches hot {hot_old}, hot_pkey {pkey_old}, cold {cold_old}"
    );
    for (name, on_old, rel) in [
        ("public.hot", hot_old, "hot"),
        ("public.hot_pkey", pkey_old, "hot_pkey"),
    ] {
        let i = item(&report, name)?;
        ensure!(
            i["load"] == true
                && i["old_buffers"] == on_old
                && i["new_blocks"] == blocks(&pair.new, rel)?,
            "{i}"
        );
    }
    ensure!(
        report["plan"]["items"]
            .as_array()
            .is_some_and(|a| a.iter().all(|i| i["name"] != "public.cold")),
        "cold was not read on old: {report}"
    );
    for rel in ["hot", "hot_pkey"] {
        ensure!(cached(&pair.new, rel)? == 0, "the dry run loaded {rel}");
    }

    // A budget hot does not fit in: its index (smaller) still does.
    let shared_buffers: i64 = on(
        &pair.new,
        "SELECT setting FROM pg_settings WHERE name = 'shared_buffers'",
    )?
    .parse()?;
    let budget = shared_buffers / 100;
    let (hot_new, pkey_new) = (blocks(&pair.new, "hot")?, blocks(&pair.new, "hot_pkey")?);
    ensure!(
        pkey_new <= budget && hot_new > budget,
        "the sizes must straddle 1 % of shared_buffers ({budget} blocks): hot {hot_new}, index {pkey_new}"
    );
    let out = warm_up(
        &old_url,
        &new_url,
        &["--dry-run", "--json", "--budget-percent", "1"],
    )?;
    let report: Value = serde_json::from_slice(&out.stdout).context("budget's JSON")?;
    ensure!(report["plan"]["budget_blocks"] == budget, "{report}");
    ensure!(item(&report, "public.hot")?["load"] == false);
    ensure!(item(&report, "public.hot_pkey")?["load"] == true);

    // The warm-up: every block of hot and its index is in new's cache, cold is not.
    let out = warm_up(&old_url, &new_url, &[])?;
    let said = text(&out);
    ensure!(out.status.success(), "{said}");
    ensure!(
        said.contains("public.hot ") && said.contains("cache hit ratio: old"),
        "{said}"
    );
    ensure!(
        cached(&pair.new, "hot")? == hot_new && cached(&pair.new, "hot_pkey")? == pkey_new,
        "new caches hot {} of {hot_new}, hot_pkey {} of {pkey_new}:\n{said}",
        cached(&pair.new, "hot")?,
        cached(&pair.new, "hot_pkey")?
    );
    ensure!(cached(&pair.new, "cold")? == 0, "cold was loaded:\n{said}");

    // The extension exists now; reading it needs pg_monitor, which the error names.
    let out = warm_up(&plain_url, &new_url, &["--dry-run"])?;
    ensure!(
        out.status.code() == Some(1) && text(&out).contains("GRANT pg_monitor"),
        "{out:?}"
    );
    on(&pair.old, "GRANT pg_monitor TO plain")?;
    let out = warm_up(&plain_url, &new_url, &["--dry-run"])?;
    ensure!(out.status.success(), "with pg_monitor: {out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_both_cache_hit_ratios() -> Result<()> {
    let pair: Pair = pair_with("CREATE TABLE t (id int PRIMARY KEY)").await?;
    let proxy = start_proxy(pair.config()).await?;
    let admin = proxy.admin_addr().context("admin server")?;
    let (_, body) = get(admin, "/api/status").await?;
    let v: Value = serde_json::from_str(&body)?;
    let r = &v["cutover"]["cache_hit_ratio"];
    ensure!(r["error"].is_null(), "{r}");
    for side in ["old", "new"] {
        let x = r[side].as_f64().with_context(|| format!("{side}: {r}"))?;
        ensure!((0.0..=1.0).contains(&x), "{side}: {x}");
    }
    Ok(())
}

/// A flip's pre-flight shows both hit ratios; with `--require-warm` a new colder than old
/// refuses the flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_new_refuses_a_flip_that_requires_a_warm_cache() -> Result<()> {
    let pair = pair_with(SCHEMA).await?;
    tokio::task::block_in_place(|| pair.new.stop_fast().and_then(|_| pair.new.start()))?;
    // Old reads hot again and again (hits); new reads it once after its restart (misses).
    for _ in 0..20 {
        on(&pair.old, "SELECT sum(length(pad)) FROM hot")?;
    }
    on(
        &pair.new,
        "SELECT pg_stat_reset(); SELECT sum(length(pad)) FROM hot",
    )?;
    let flip = |extra: &[&str]| {
        cutover_cli(
            &pair,
            &[&["reads-new", "--dry-run", "--json"], extra].concat(),
        )
    };
    let warm_check = |out: &Output| -> Result<Value> {
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("the flip's JSON: {}", text(out)))?;
        let checks = v["checks"].as_array().cloned().unwrap_or_default();
        checks
            .into_iter()
            .find(|c| c["name"] == "new cache warm")
            .with_context(|| format!("no cache check: {v}"))
    };
    let shown = flip(&[])?;
    ensure!(shown.status.success(), "{}", text(&shown));
    let check = warm_check(&shown)?;
    ensure!(
        check["ok"] == true && check["detail"].as_str().unwrap_or("").contains("colder"),
        "{check}"
    );
    let refused = flip(&["--require-warm"])?;
    ensure!(refused.status.code() == Some(1), "{}", text(&refused));
    let check = warm_check(&refused)?;
    ensure!(check["ok"] == false, "{check}");
    Ok(())
}
