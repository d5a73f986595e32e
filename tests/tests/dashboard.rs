//! The dashboard page at `/` on the admin port, rendered by headless Chromium: it shows what
//! the proxy knows (a secondary that is down, queued rows, the retry backlog), served with
//! its assets from the binary. The screenshot is kept under the target directory.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_tests::browser::{dump_dom, screenshot, wait_for_page};
use switchyard_tests::cutover::flip;
use switchyard_tests::mirror::pair_with;
use switchyard_tests::proxy::{connect_proxy, start_proxy};
use switchyard_tests::wait::poll_until;

/// A screenshot of the page at `url`, kept as the test's artifact under the target
/// directory as `name`; it must hold a drawn page (over 10 kB).
fn keep_screenshot(url: &str, name: &str) -> Result<()> {
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    tokio::task::block_in_place(|| screenshot(url, &shot))?;
    let size = std::fs::metadata(&shot)?.len();
    ensure!(
        size > 10_000,
        "screenshot {} is only {size} bytes",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
    Ok(())
}

/// Text of the element with `id` in a dumped DOM (the page sets values as plain text).
fn text_of(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let open_end = start + dom[start..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(dom[open_end..close].trim().to_string())
}

/// The table row (up to its `</tr>`) that starts with `first_cell`.
fn row_of(dom: &str, first_cell: &str) -> Option<String> {
    let start = dom.find(first_cell)?;
    let end = start + dom[start..].find("</tr>")?;
    Some(dom[start..end].to_string())
}

/// Polls the page at `url` until the row starting with `first_cell` passes `ready`, then
/// returns it. The summary behind the page is refreshed every few seconds, so an earlier
/// snapshot may show for a while; if the row never gets there, the error carries the last
/// row and page seen, which say whether it was stale, missing or wrong. Blocks off the
/// runtime's threads.
fn wait_for_row(
    url: &str,
    first_cell: &str,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> Result<String> {
    let mut last_page = String::new();
    let found = tokio::task::block_in_place(|| {
        poll_until(what, Duration::from_secs(60), || {
            last_page = dump_dom(url)?;
            Ok(row_of(&last_page, first_cell).filter(|row| ready(row)))
        })
    });
    found.with_context(|| {
        let row = row_of(&last_page, first_cell);
        format!(
            "the last row seen: {}\nthe last page seen:\n{last_page}",
            row.as_deref().unwrap_or("(none)")
        )
    })
}

/// The opening tag of the element with `id`, and the markup inside it up to its close.
fn element_of<'a>(dom: &'a str, tag: &str, id: &str) -> Option<(&'a str, &'a str)> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let open = dom[..at].rfind(&format!("<{tag}"))?;
    let open_end = at + dom[at..].find('>')? + 1;
    let close = open_end + dom[open_end..].find(&format!("</{tag}>"))?;
    Some((&dom[open..open_end], &dom[open_end..close]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_down_secondary_and_queued_rows() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    let mut config = pair.config();
    config.health_check_interval_secs = 1;
    let proxy = start_proxy(config).await?;
    let admin = proxy.admin_addr().context("admin server")?;
    let client = connect_proxy(&proxy).await?;
    client
        .execute("INSERT INTO t VALUES (1, 'both up')", &[])
        .await?;
    tokio::task::block_in_place(|| pair.new.stop_immediate())?;
    for id in 2..=4 {
        client
            .execute("INSERT INTO t VALUES ($1, 'new is down')", &[&id])
            .await?;
    }
    let url = format!("http://{admin}/");
    let dom = wait_for_page(&url, "the page to show the down secondary", |dom| {
        let ready = text_of(&dom, "new-up").as_deref() == Some("down")
            && text_of(&dom, "rows-queued").as_deref() == Some("3");
        Ok(ready.then_some(dom))
    })?;
    ensure!(text_of(&dom, "old-up").as_deref() == Some("up"), "{dom}");
    ensure!(
        text_of(&dom, "rows-mirrored").as_deref() == Some("1"),
        "{dom}"
    );
    let verdict = text_of(&dom, "verdict").unwrap_or_default();
    ensure!(verdict.contains("new database down"), "verdict: {verdict}");
    // Shadow reads are off in this proxy: the page says so instead of failing.
    ensure!(
        text_of(&dom, "match-rate").as_deref() == Some("off"),
        "{dom}"
    );
    // No credentials on the page (the URLs are shown without passwords).
    ensure!(!dom.contains("password"), "{dom}");

    keep_screenshot(&url, "dashboard-secondary-down.png")
}

/// The assets are served from the binary with the right types, and the page forbids inline
/// script (it shows query texts and values that clients control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_assets_are_embedded_and_locked_down() -> Result<()> {
    let pair = pair_with("SELECT 1").await?;
    let proxy = start_proxy(pair.config()).await?;
    let admin = proxy.admin_addr().context("admin server")?;
    for (path, ty) in [
        ("/", "text/html"),
        ("/assets/dashboard.js", "text/javascript"),
        ("/assets/charts.js", "text/javascript"),
        ("/assets/dashboard.css", "text/css"),
    ] {
        let (code, headers, body) =
            switchyard_tests::http::request_full(admin, "GET", path, "").await?;
        ensure!(code == 200, "{path}: {code}");
        ensure!(
            headers
                .to_ascii_lowercase()
                .contains(&format!("content-type: {ty}")),
            "{path}: {headers}"
        );
        ensure!(!body.is_empty(), "{path} is empty");
        if path == "/" {
            ensure!(
                headers
                    .to_ascii_lowercase()
                    .contains("content-security-policy: default-src 'self'"),
                "{headers}"
            );
            ensure!(!body.contains("<script>"), "no inline script");
            ensure!(
                !body.contains("http://") && !body.contains("https://"),
                "no CDN"
            );
        }
    }
    Ok(())
}

/// A backfill's chunk table on the new database shows up on the page, per table, with its
/// chunks done and rows copied; then a verify run's outcome per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_backfill_progress() -> Result<()> {
    let pair = pair_with("CREATE TABLE big (id int PRIMARY KEY, v text)").await?;
    switchyard_tests::mirror::on(
        &pair.old,
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
    )?;
    let proxy = start_proxy(pair.config()).await?;
    let admin = proxy.admin_addr().context("admin server")?;
    let _run =
        switchyard_tests::backfill::backfill(&pair, &["--tables", "big", "--chunk-rows", "1000"])
            .await?
            .exits(0)?;
    let url = format!("http://{admin}/");
    // The proxy refreshes its summary every few seconds: a refresh taken while the last
    // chunks were still being marked shows the row "running" for a while after the run.
    let row = wait_for_row(
        &url,
        "<td>backfill</td>",
        "the page to show the backfill done",
        |row| row.contains(">done<"),
    )?;
    ensure!(row.contains("big"), "{row}");
    ensure!(
        row.contains(">5<") && row.contains(">5,000<") && row.contains(">done<"),
        "5 of 5 chunks, 5,000 rows, done: {row}"
    );

    // Then a verify run with one difference injected: its table shows up as different.
    switchyard_tests::mirror::on(&pair.new, "UPDATE big SET v = 'changed' WHERE id = 42")?;
    let _run = switchyard_tests::mirror::reconciler(&pair, "verify", &["--tables", "big"])
        .await?
        .exits(1)?;
    // "different" is written with the run's figures at the table's end: a final state.
    let row = wait_for_row(
        &url,
        "<td>verify</td>",
        "the page to show the verify run finished",
        |row| row.contains("different"),
    )?;
    ensure!(
        row.contains("different (1 rows)") && row.contains(">5,000<"),
        "{row}"
    );
    Ok(())
}

/// The issue's check: a known mismatch (a row changed on the new database behind the proxy's
/// back) is confirmed by shadow reads and the page shows it: the verdict, the confirmed
/// count, the fingerprint's row, and the sample side by side with the differing row as a
/// keyed hash, never the raw value. The screenshot is kept as the test's artifact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_an_injected_mismatch() -> Result<()> {
    use switchyard_tests::shadow::{count, entry, shadow_config, wait_shadow};
    let pair = pair_with(
        "CREATE TABLE prices (id int PRIMARY KEY, sku text, cents int); \
         INSERT INTO prices SELECT g, 'sku-' || g, g * 100 FROM generate_series(1, 20) g",
    )
    .await?;
    // The injected difference: one price differs on new only.
    switchyard_tests::mirror::on(&pair.new, "UPDATE prices SET cents = 424242 WHERE id = 7")?;
    let proxy = start_proxy(shadow_config(&pair)).await?;
    let admin = proxy.admin_addr().context("admin server")?;
    let client = connect_proxy(&proxy).await?;
    client
        .query(
            "SELECT id, sku, cents FROM prices WHERE cents > 0 ORDER BY id",
            &[],
        )
        .await?;
    wait_shadow(&proxy, "the mismatch to be confirmed", |s| {
        count(entry(s, "FROM prices"), "confirmed") == 1
    })
    .await?;
    let url = format!("http://{admin}/");
    let dom = wait_for_page(&url, "the page to show the mismatch", |dom| {
        Ok((text_of(&dom, "confirmed").as_deref() == Some("1")).then_some(dom))
    })?;
    let verdict = text_of(&dom, "verdict").unwrap_or_default();
    ensure!(
        verdict.contains("confirmed mismatches"),
        "verdict: {verdict}"
    );
    ensure!(
        dom.contains("FROM prices"),
        "the fingerprint's query is listed: {dom}"
    );
    let sample_at = dom
        .find("class=\"sample\"")
        .context("a mismatch sample on the page")?;
    let sample = &dom[sample_at..];
    ensure!(
        sample.contains("<h3>old: 20 rows</h3>") && sample.contains("<h3>new: 20 rows</h3>"),
        "{sample}"
    );
    ensure!(
        sample.contains("class=\"only\""),
        "the differing rows are shown: {sample}"
    );
    ensure!(
        !dom.contains("424242"),
        "no raw value on the page with redaction on"
    );
    ensure!(
        text_of(&dom, "redaction").is_some_and(|t| t.contains("keyed hashes")),
        "{dom}"
    );

    keep_screenshot(&url, "dashboard-mismatch.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_cutover_phase_instances_and_timeline() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    let mut config = pair.config();
    config.instance_id = Some("dash-1".into());
    config.cutover.poll_ms = 100;
    let proxy = start_proxy(config).await?;
    let admin = proxy.admin_addr().context("admin server")?;
    let (code, body) = flip(
        &proxy,
        r#"{"to": "canary", "percent": 25, "by": "dashboard test"}"#,
    )
    .await?;
    ensure!(code == 200, "{code} {body}");
    let url = format!("http://{admin}/");
    let dom = wait_for_page(&url, "the page to show the canary", |dom| {
        Ok((text_of(&dom, "phase").as_deref() == Some("canary")).then_some(dom))
    })?;
    let note = text_of(&dom, "phase-note").unwrap_or_default();
    ensure!(note.contains("epoch 1") && note.contains("25 %"), "{note}");
    ensure!(
        dom.contains("<td>dash-1</td>"),
        "the instance is listed: {dom}"
    );
    ensure!(
        dom.contains("shadow → canary 25 %") && dom.contains("<td>dashboard test</td>"),
        "the flip is in the timeline: {dom}"
    );
    for id in ["cache-old", "cache-new"] {
        let ratio = text_of(&dom, id).unwrap_or_default();
        ensure!(ratio.ends_with(" %"), "{id} shows a hit ratio: {ratio:?}");
    }
    let note = text_of(&dom, "cutover-note").unwrap_or_default();
    ensure!(
        note.contains("Sessions write to old."),
        "the primary is named: {note}"
    );
    ensure!(
        text_of(&dom, "checklist-title").as_deref() == Some("Checklist for reads-new")
            && dom.contains("<td>retry backlog empty</td>"),
        "the next phase's checklist is shown: {dom}"
    );
    Ok(())
}

/// The plots: with statements flowing through the proxy, `/api/history` gains one sample a
/// second with their rate, and the page draws the statements chart (a non-empty line, and
/// the chart marked as drawn once it has two points); a flip shows up in the phase timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_plots_the_last_minutes_and_the_phase_timeline() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    let mut config = pair.config();
    config.cutover.poll_ms = 100;
    let proxy = start_proxy(config).await?;
    let admin = proxy.admin_addr().context("admin server")?;
    let client = connect_proxy(&proxy).await?;
    // An application's steady trickle, for as long as the test runs.
    let app = tokio::spawn(async move {
        for i in 1i32.. {
            client
                .execute("INSERT INTO t VALUES ($1, 'x')", &[&i])
                .await?;
            client.query("SELECT count(*) FROM t", &[]).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>(())
    });
    let (code, body) = flip(
        &proxy,
        r#"{"to": "canary", "percent": 10, "by": "plots test"}"#,
    )
    .await?;
    ensure!(code == 200, "{code} {body}");

    let history = switchyard_tests::wait::poll_until_async(
        "two samples with statements and the flip",
        Duration::from_secs(30),
        || async {
            let (code, body) = switchyard_tests::http::get(admin, "/api/history").await?;
            ensure!(code == 200, "{code} {body}");
            let h: serde_json::Value = serde_json::from_str(&body)?;
            let rates = h["statements_per_sec"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let busy = rates.iter().filter(|r| r.as_f64() > Some(0.0)).count();
            let flipped = h["phases"]
                .as_array()
                .is_some_and(|p| p.iter().any(|c| c["to"] == "canary"));
            Ok((busy >= 2 && flipped).then_some(h))
        },
    )
    .await?;
    ensure!(history["capacity"] == 600, "{history}");
    let n = history["t"].as_array().map_or(0, Vec::len);
    ensure!(
        history["retry_backlog"].as_array().map(Vec::len) == Some(n),
        "every series lines up with t: {history}"
    );

    let url = format!("http://{admin}/");
    let (tag, inner) = wait_for_page(&url, "the statements chart to draw", |dom| {
        let chart = element_of(&dom, "figure", "chart-statements")
            .map(|(tag, inner)| (tag.to_string(), inner.to_string()));
        Ok(chart.filter(|(tag, _)| tag.contains("data-drawn=\"true\"")))
    })?;
    ensure!(
        inner.contains("class=\"line s0\" d=\"M"),
        "a line is drawn: {inner}"
    );
    let max: f64 = tag
        .split("data-max=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("data-max")?
        .parse()?;
    ensure!(max > 0.0, "the plotted rate is above zero: {tag}");
    let dom = tokio::task::block_in_place(|| dump_dom(&url))?;
    let (_, changes) = element_of(&dom, "ul", "phase-changes").context("the phase list")?;
    ensure!(changes.contains("shadow → canary (epoch 1)"), "{changes}");
    let (_, strip) = element_of(&dom, "svg", "phase-strip").context("the phase strip")?;
    ensure!(
        strip.contains("class=\"phase p1\""),
        "the canary band: {strip}"
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-plots.png");
    tokio::task::block_in_place(|| screenshot(&url, &shot))?;
    eprintln!("screenshot: {}", shot.display());
    ensure!(
        !app.is_finished(),
        "the application stopped: {:?}",
        app.await
    );
    app.abort();
    Ok(())
}
