//! What verify tells a user about what it cannot compare: schema differences (exit 1, before
//! any data is read), bad URLs and unreachable servers (exit 2).

use super::*;
use anyhow::{Context, Result};
use serde_json::Value;
use switchyard_tests::mirror::pair_with;
use switchyard_tests::mirror::{reconciler, reconciler_json};
use switchyard_tests::proxy::DB;
use switchyard_tests::reconciler::run_reconciler;
use switchyard_tests::refusing_port;

/// Schema differences are reported before any data is read, plainly, with exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_differences_are_reported_plainly() -> Result<()> {
    let pair = pair_with(
        "CREATE TABLE s_ok (id int PRIMARY KEY, a text); INSERT INTO s_ok VALUES (1, 'x');
         CREATE TABLE s_nopk (id int, a text);",
    )
    .await?;
    pair.old.psql(
        DB,
        "CREATE TABLE s_missing (id int PRIMARY KEY);
         CREATE TABLE s_col (id int PRIMARY KEY, a text, b text);
         CREATE TABLE s_type (id int PRIMARY KEY, a int);",
    )?;
    pair.new.psql(
        DB,
        "CREATE TABLE s_col (id int PRIMARY KEY, a text);
         CREATE TABLE s_type (id int PRIMARY KEY, a bigint);",
    )?;
    let (code, json) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 1, "{json:#}");
    let problems = |name: &str| -> Result<Vec<String>> {
        let t = table(&json, name)?;
        assert_eq!(t["status"], "schema_different", "{t:#}");
        Ok(t["schema_differences"]
            .as_array()
            .context("schema_differences")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    };
    assert_eq!(
        problems("public.s_missing")?,
        vec!["table is missing in new"]
    );
    assert_eq!(
        problems("public.s_col")?,
        vec!["column \"b\" is missing in new"]
    );
    assert_eq!(
        problems("public.s_type")?,
        vec!["column \"a\" has type integer in old, bigint in new"]
    );
    // Without a key on either side the table is compared (as a multiset), not refused.
    assert_eq!(table(&json, "public.s_nopk")?["status"], "equal");
    assert_eq!(table(&json, "public.s_ok")?["status"], "equal");

    // Human format: schema findings come before any data result.
    let run = reconciler(&pair, "verify", &[]).await?;
    assert_eq!(run.code(), Some(1), "{}", run.text());
    let schema_at = run
        .stdout
        .find("public.s_type: schema differs")
        .context(run.text())?;
    let data_at = run.stdout.find("public.s_ok: equal").context(run.text())?;
    assert!(schema_at < data_at, "{}", run.text());

    // A table that exists nowhere is a usage error: exit 2.
    reconciler(&pair, "verify", &["--tables", "s_ok,nosuch"])
        .await?
        .exits(2)?
        .stdout_has("public.nosuch: ERROR: table public.nosuch exists on neither database")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_servers_exit_2() -> Result<()> {
    run_reconciler(
        &[
            "verify",
            "--old",
            "mysql://u:pw@h/db",
            "--new",
            "postgres://u@h/db",
        ],
        RUN_TIMEOUT,
    )
    .await?
    .exits(2)?
    .stderr_has("old: connection URL must start with postgres://")?;

    let (_refusing, port) = refusing_port()?;
    let old = format!("postgres://postgres:sekrit-pw@127.0.0.1:{port}/app");
    let run = run_reconciler(
        &["verify", "--old", &old, "--new", &old, "--format", "json"],
        RUN_TIMEOUT,
    )
    .await?;
    assert_eq!(run.code(), Some(2), "{}", run.text());
    let json: Value = serde_json::from_str(&run.stdout).context(run.text())?;
    let error = json["error"].as_str().context(run.text())?;
    assert!(
        error.contains("connecting to the old database at postgres://postgres:***@127.0.0.1"),
        "{error}"
    );
    assert!(
        !run.text().contains("sekrit-pw"),
        "password printed: {}",
        run.text()
    );

    // Missing flags, for every subcommand.
    for cmd in ["verify", "repair", "replay", "recover"] {
        let run = run_reconciler(&[cmd], RUN_TIMEOUT).await?;
        assert_eq!(run.code(), Some(2), "{cmd}: {}", run.text());
        assert!(run.stderr.contains("old"), "{cmd}: {}", run.text());
    }
    Ok(())
}
