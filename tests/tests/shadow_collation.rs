//! Shadow reads under a text sort whose collation differs between the databases (issue #22,
//! item 4): old sorts `name` under "C", new under ICU's root collation, so upper and lower
//! case interleave differently. Same rows in another order, or other rows under a LIMIT, are
//! confirmed mismatches of kind `collation` per query shape, until the shape is accepted
//! (`shadow.accept_collation`); a text sort both sides agree on still matches.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use switchyard_proxy::RunningProxy;
use switchyard_tests::mirror::{init_tracing, on};
use switchyard_tests::proxy::{connect_proxy, start_proxy, Pair};
use switchyard_tests::shadow::{
    count, entry, fingerprint_of, mismatches, settled, shadow_config, wait_shadow,
};

/// "C" puts upper case first (A B a b); ICU's root collation puts a before A (a A b B).
const PEOPLE_OLD: &str = r#"
CREATE TABLE people (id int PRIMARY KEY, name text COLLATE "C" NOT NULL);
INSERT INTO people VALUES (1, 'b'), (2, 'B'), (3, 'a'), (4, 'A');
CREATE TABLE fruits (id int PRIMARY KEY, name text COLLATE "C" NOT NULL);
INSERT INTO fruits VALUES (1, 'apple'), (2, 'cherry'), (3, 'apple'), (4, 'banana'),
  (5, 'banana'), (6, 'date');
CREATE TABLE codes (id int PRIMARY KEY, code text COLLATE "C" NOT NULL);
INSERT INTO codes VALUES (1, 'b'), (2, 'B'), (3, 'a'), (4, 'A');
"#;

/// The same rows; fruits in another physical order, so ties come back in other orders.
/// `codes` has the same collation on both sides and one value changed on new.
const PEOPLE_NEW: &str = r#"
CREATE TABLE people (id int PRIMARY KEY, name text COLLATE "und-x-icu" NOT NULL);
INSERT INTO people VALUES (4, 'A'), (3, 'a'), (2, 'B'), (1, 'b');
CREATE TABLE fruits (id int PRIMARY KEY, name text COLLATE "und-x-icu" NOT NULL);
INSERT INTO fruits VALUES (6, 'date'), (5, 'banana'), (4, 'banana'), (3, 'apple'),
  (2, 'cherry'), (1, 'apple');
CREATE TABLE codes (id int PRIMARY KEY, code text COLLATE "C" NOT NULL);
INSERT INTO codes VALUES (1, 'b'), (2, 'Z'), (3, 'a'), (4, 'A');
"#;

/// All rows, sorted by a text column.
const ALL_BY_NAME: &str = "SELECT name FROM people ORDER BY name";
/// The first rows of the same sort: which rows survive the cut depends on the collation.
const FIRST_BY_NAME: &str = "SELECT id, name FROM people ORDER BY name LIMIT $1";

async fn pair() -> Result<Pair> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    on(&pair.old, PEOPLE_OLD).context("schema on old")?;
    on(&pair.new, PEOPLE_NEW).context("schema on new")?;
    // The premise: the two databases order the same names differently.
    let order = "SELECT string_agg(name, ',' ORDER BY name) FROM people";
    ensure!(on(&pair.old, order)? == "A,B,a,b", "old sorts under C");
    ensure!(on(&pair.new, order)? == "a,A,b,B", "new sorts under ICU");
    Ok(pair)
}

/// The samples of `/api/mismatches` for the shape whose query contains `needle`.
fn samples_of<'a>(m: &'a Value, needle: &str) -> Vec<&'a Value> {
    m["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["query"].as_str().is_some_and(|q| q.contains(needle)))
                .collect()
        })
        .unwrap_or_default()
}

/// The entry of `/api/mismatches`' per-shape collation list for `fingerprint`.
fn collation_shape<'a>(m: &'a Value, fingerprint: &str) -> Option<&'a Value> {
    m["collation"]
        .as_array()?
        .iter()
        .find(|s| s["fingerprint"] == fingerprint)
}

fn first_names(side: &Value) -> Vec<String> {
    side["first_rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r[0].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads [`ALL_BY_NAME`] through `proxy` until its collation mismatch is confirmed; the
/// status, and the shape's fingerprint (what an operator learns it by).
async fn learn_shape(proxy: &RunningProxy) -> Result<(Value, String)> {
    connect_proxy(proxy).await?.query(ALL_BY_NAME, &[]).await?;
    let s = confirmed_collation(proxy, ALL_BY_NAME).await?;
    let fp = fingerprint_of(&s, ALL_BY_NAME).context("fingerprint")?;
    Ok((s, fp))
}

/// `/api/mismatches` lists no shape among the collation differences.
fn no_collation_shape(m: &Value, what: &str) -> Result<()> {
    ensure!(
        m["collation"].as_array().is_some_and(Vec::is_empty),
        "{what}: {m:#}"
    );
    Ok(())
}

async fn confirmed_collation(proxy: &RunningProxy, needle: &str) -> Result<Value> {
    wait_shadow(proxy, "the collation mismatch to be confirmed", |s| {
        settled(s) && count(entry(s, needle), "confirmed") == 1
    })
    .await
}

/// Same rows in another order under a text sort: a confirmed mismatch of kind `collation`
/// (not matched), with its shape on `/api/mismatches`, both orders in the sample, and the
/// mismatch counter labelled with the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_rows_in_another_text_order_is_a_collation_mismatch() -> Result<()> {
    let pair = pair().await?;
    let mut cfg = shadow_config(&pair);
    cfg.shadow.redact = false;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    c.query(ALL_BY_NAME, &[]).await?;
    let s = confirmed_collation(&proxy, ALL_BY_NAME).await?;
    let e = entry(&s, ALL_BY_NAME).context("the shape's entry")?;
    ensure!(
        count(Some(e), "matched") == 0 && e["differences"]["collation"] == 1,
        "counted as a collation mismatch, not matched: {s:#}"
    );
    ensure!(
        e["order_unchecked"]
            .as_object()
            .is_some_and(|o| o.is_empty()),
        "the text order was checked: {s:#}"
    );
    let fp = fingerprint_of(&s, ALL_BY_NAME).context("fingerprint")?;

    let (m, _) = mismatches(&proxy).await?;
    let samples = samples_of(&m, ALL_BY_NAME);
    ensure!(samples.len() == 1, "one sample: {m:#}");
    let sample = samples[0];
    ensure!(
        sample["difference"] == "collation" && sample["fingerprint"] == fp.as_str(),
        "{sample:#}"
    );
    ensure!(
        sample["old"]["rows"] == 4 && sample["other"]["rows"] == 4,
        "{sample:#}"
    );
    ensure!(
        first_names(&sample["old"]) == ["A", "B", "a", "b"]
            && first_names(&sample["other"]) == ["a", "A", "b", "B"],
        "both orders are shown: {sample:#}"
    );
    ensure!(
        sample["old"]["sort_collations"] == serde_json::json!(["name: C (libc)"])
            && sample["other"]["sort_collations"][0]
                .as_str()
                .is_some_and(|c| c.starts_with("name: und-x-icu (icu, version ")),
        "each side's collation of the sort column: {sample:#}"
    );
    let shape = collation_shape(&m, &fp).context("the shape in the collation list")?;
    ensure!(
        shape["confirmed"] == 1
            && shape["accepted"] == 0
            && shape["accepted_by_setting"] == false
            && shape["query"] == ALL_BY_NAME,
        "{shape:#}"
    );

    let admin = proxy.admin_addr().context("admin server")?;
    let (_, metrics) = switchyard_tests::http::get(admin, "/metrics").await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_shadow_mismatches_total{")
                && l.contains("difference=\"collation\"")
                && l.contains(&format!("fingerprint=\"{fp}\""))),
        "{metrics}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// ORDER BY a text column with LIMIT: the cut falls elsewhere, so other rows come back.
/// Also a collation mismatch, with the rows found on one side only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_sort_with_limit_returning_other_rows_is_a_collation_mismatch() -> Result<()> {
    let pair = pair().await?;
    let mut cfg = shadow_config(&pair);
    cfg.shadow.redact = false;
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    // Old keeps A, B; new keeps a, A.
    c.query(FIRST_BY_NAME, &[&2i64]).await?;
    let s = confirmed_collation(&proxy, "SELECT id, name FROM people").await?;
    let e = entry(&s, "SELECT id, name FROM people").context("entry")?;
    ensure!(
        count(Some(e), "matched") == 0 && e["differences"]["collation"] == 1,
        "{s:#}"
    );
    let (m, _) = mismatches(&proxy).await?;
    let samples = samples_of(&m, "SELECT id, name FROM people");
    ensure!(samples.len() == 1, "{m:#}");
    let sample = samples[0];
    ensure!(sample["difference"] == "collation", "{sample:#}");
    let only = |side: &str| -> Vec<String> {
        sample[side]["only_here"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r[1].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    ensure!(
        only("old") == ["B"] && only("other") == ["a"],
        "the rows on one side only: {sample:#}"
    );
    let fp = fingerprint_of(&s, "SELECT id, name FROM people").context("fingerprint")?;
    ensure!(
        collation_shape(&m, &fp).is_some_and(|shape| shape["confirmed"] == 1),
        "{m:#}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// Under a limit, other rows with another key sequence while both sides name the same
/// collation for the sort column: a changed value, not the sort, so `rows`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_rows_under_a_limit_with_the_same_collation_are_rows() -> Result<()> {
    let pair = pair().await?;
    let proxy = start_proxy(shadow_config(&pair)).await?;
    // Old keeps A, B; new keeps A, Z (B changed to Z).
    let q = "SELECT id, code FROM codes ORDER BY code LIMIT 2";
    connect_proxy(&proxy).await?.query(q, &[]).await?;
    let s = confirmed_collation(&proxy, "FROM codes").await?;
    let e = entry(&s, "FROM codes").context("entry")?;
    ensure!(e["differences"]["rows"] == 1, "{s:#}");
    let (m, _) = mismatches(&proxy).await?;
    let samples = samples_of(&m, "FROM codes");
    ensure!(
        samples.len() == 1 && samples[0]["difference"] == "rows",
        "{m:#}"
    );
    ensure!(
        samples[0]["old"]["sort_collations"] == samples[0]["other"]["sort_collations"]
            && samples[0]["old"]["sort_collations"][0] == "code: C (libc)",
        "{m:#}"
    );
    no_collation_shape(&m, "not a collation difference")?;
    proxy.shutdown().await;
    Ok(())
}

/// Once a shape is accepted by setting, its collation differences are counted as accepted,
/// not confirmed: no sample, no confirmed count (so nothing for the cutover's pre-flight).
/// Acceptance is per shape and per kind: another shape still confirms, and a data
/// difference in the accepted shape still confirms as `rows`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_shape_counts_collation_differences_as_accepted() -> Result<()> {
    let pair = pair().await?;
    // Learn the shape's fingerprint the way an operator would: from a first confirmation.
    let proxy = start_proxy(shadow_config(&pair)).await?;
    let (_, fp) = learn_shape(&proxy).await?;
    proxy.shutdown().await;

    let mut cfg = shadow_config(&pair);
    cfg.shadow.accept_collation = vec![fp.clone()];
    let proxy = start_proxy(cfg).await?;
    let c = connect_proxy(&proxy).await?;
    c.query(ALL_BY_NAME, &[]).await?;
    c.query(FIRST_BY_NAME, &[&2i64]).await?;
    let s = wait_shadow(&proxy, "both shapes to be compared", |s| {
        settled(s)
            && count(entry(s, ALL_BY_NAME), "accepted") == 1
            && count(entry(s, "SELECT id, name FROM people"), "confirmed") == 1
    })
    .await?;
    let e = entry(&s, ALL_BY_NAME).context("entry")?;
    ensure!(
        count(Some(e), "confirmed") == 0
            && count(Some(e), "matched") == 0
            && e["accepted_differences"]["collation"] == 1
            && e["differences"].as_object().is_some_and(|d| d.is_empty()),
        "accepted, neither matched nor confirmed: {s:#}"
    );
    ensure!(
        s["totals"]["confirmed"] == 1 && s["totals"]["accepted"] == 1,
        "{s:#}"
    );
    let (m, _) = mismatches(&proxy).await?;
    ensure!(
        samples_of(&m, ALL_BY_NAME).is_empty(),
        "no sample for an accepted difference: {m:#}"
    );
    let shape = collation_shape(&m, &fp).context("the accepted shape is listed")?;
    ensure!(
        shape["accepted"] == 1 && shape["confirmed"] == 0 && shape["accepted_by_setting"] == true,
        "{shape:#}"
    );

    // Data that really differs is not covered by accepting the sort.
    on(&pair.new, "UPDATE people SET name = 'c' WHERE id = 1")?;
    c.query(ALL_BY_NAME, &[]).await?;
    let s = wait_shadow(&proxy, "the data difference to be confirmed", |s| {
        settled(s) && count(entry(s, ALL_BY_NAME), "confirmed") == 1
    })
    .await?;
    let e = entry(&s, ALL_BY_NAME).context("entry")?;
    ensure!(
        e["differences"]["rows"] == 1 && count(Some(e), "accepted") == 1,
        "{s:#}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// The same collation difference, but data both collations sort alike (lower case only,
/// with ties stored in other physical orders): no false alarm, with or without LIMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_sort_both_sides_agree_on_matches() -> Result<()> {
    let pair = pair().await?;
    let proxy = start_proxy(shadow_config(&pair)).await?;
    let c = connect_proxy(&proxy).await?;
    let queries = [
        "SELECT id, name FROM fruits ORDER BY name",
        "SELECT name, id FROM fruits ORDER BY name DESC, id",
        "SELECT id, name FROM fruits ORDER BY name LIMIT 4",
        "SELECT name FROM fruits ORDER BY 1 LIMIT 3 OFFSET 1",
    ];
    for q in queries {
        c.query(q, &[]).await?;
    }
    let s = wait_shadow(&proxy, "the four comparisons", |s| {
        settled(s) && s["totals"]["sampled"] == 4
    })
    .await?;
    ensure!(
        s["totals"]["matched"] == 4
            && s["totals"]["confirmed"] == 0
            && s["totals"]["transient"] == 0
            && s["totals"]["accepted"] == 0,
        "a text sort both sides agree on matches: {s:#}"
    );
    let (m, _) = mismatches(&proxy).await?;
    no_collation_shape(&m, "a text sort both sides agree on")?;
    proxy.shutdown().await;
    Ok(())
}

/// The dashboard lists the shape among the collation differences, and its sample says what
/// it means and how to accept it, with each side's first rows in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_collation_differences_by_shape() -> Result<()> {
    use switchyard_tests::browser::wait_for_page;

    let pair = pair().await?;
    let proxy = start_proxy(shadow_config(&pair)).await?;
    let (_s, fp) = learn_shape(&proxy).await?;
    let url = format!("http://{}/", proxy.admin_addr().context("admin server")?);
    let dom = wait_for_page(&url, "the page to list the collation difference", |dom| {
        Ok(dom
            .contains("confirmed mismatch: accept once understood")
            .then_some(dom))
    })?;
    let table_at = dom
        .find("id=\"collation\"")
        .context("the collation table")?;
    let table = &dom[table_at..];
    let table = &table[..table.find("</table>").context("table end")?];
    ensure!(
        table.contains(&format!("<td>{fp}</td>")) && table.contains(ALL_BY_NAME),
        "{table}"
    );
    ensure!(
        dom.contains("sort text differently")
            && dom.contains(&format!("shadow.accept_collation = [\"{fp}\"]")),
        "the sample explains the difference: {dom}"
    );
    ensure!(
        dom.contains("sorted under name: C (libc)"),
        "the collations are named: {dom}"
    );
    ensure!(
        dom.matches("first rows, in this side's order").count() == 2,
        "both orders are shown: {dom}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// The instance `id` as the cutover status lists it.
async fn instance(proxy: &RunningProxy, id: &str) -> Result<Option<Value>> {
    let admin = proxy.admin_addr().context("admin server")?;
    let (_, text) = switchyard_tests::http::get(admin, "/api/cutover").await?;
    let v: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
    Ok(v["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"] == id).cloned()))
}

/// The cutover's pre-flight: a confirmed collation mismatch refuses moving reads to new like
/// any other mismatch; once its shape is accepted it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collation_mismatch_blocks_reads_moving_to_new_unless_accepted() -> Result<()> {
    use std::time::{Duration, Instant};
    use switchyard_tests::cutover::{config, failed_checks, flip};
    use switchyard_tests::wait::poll_until_async;
    let canary = r#"{"to": "canary", "percent": 100}"#;

    let pair1 = pair().await?;
    let mut cfg = config(&pair1, "a");
    cfg.shadow.sample_rate = 1.0;
    cfg.shadow.recheck_delay_ms = 200;
    let a = start_proxy(cfg).await?;
    let (_s, fp) = learn_shape(&a).await?;
    poll_until_async(
        "the heartbeat to carry the mismatch",
        Duration::from_secs(30),
        || async {
            let i = instance(&a, "a").await?;
            Ok(i.filter(|i| i["last_mismatch_secs"].is_number()))
        },
    )
    .await?;
    let (status, report) = flip(&a, canary).await?;
    ensure!(status == 409, "refused: {status} {report}");
    ensure!(
        failed_checks(&report)? == ["no recent mismatch"],
        "{report}"
    );
    a.shutdown().await;

    let pair2 = pair().await?;
    let mut cfg = config(&pair2, "b");
    cfg.shadow.sample_rate = 1.0;
    cfg.shadow.recheck_delay_ms = 200;
    cfg.shadow.accept_collation = vec![fp];
    let b = start_proxy(cfg).await?;
    connect_proxy(&b).await?.query(ALL_BY_NAME, &[]).await?;
    wait_shadow(&b, "the collation difference to be accepted", |s| {
        settled(s) && count(entry(s, ALL_BY_NAME), "accepted") == 1
    })
    .await?;
    let accepted_at = Instant::now();
    // A heartbeat after the comparison: had it confirmed a mismatch, this one would say so.
    let i = poll_until_async(
        "a heartbeat after the accepted comparison",
        Duration::from_secs(30),
        || async {
            let i = instance(&b, "b").await?;
            let since = accepted_at.elapsed().as_secs_f64();
            Ok(i.filter(|i| i["last_seen_secs"].as_f64().is_some_and(|s| s < since)))
        },
    )
    .await?;
    ensure!(i["last_mismatch_secs"].is_null(), "{i:#}");
    let (status, report) = flip(&b, canary).await?;
    ensure!(
        status == 200,
        "an accepted shape does not block: {status} {report}"
    );
    b.shutdown().await;
    Ok(())
}
