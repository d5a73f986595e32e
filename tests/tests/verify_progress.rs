//! Progress of `switchyard-reconciler verify` and `replay`: with stderr not a terminal
//! (piped, as here) the output is what it always was, nothing on stderr; `--progress`
//! prints lines on stderr and leaves stdout's JSON whole; on a terminal (a pty from
//! `script`) it is drawn.

use anyhow::{ensure, Context, Result};
use switchyard_tests::mirror::{on, pair_with, reconciler};
use switchyard_tests::proxy::DB;
use switchyard_tests::reconciler::reconciler_bin;

const SCHEMA: &str = "CREATE TABLE a (id int PRIMARY KEY, v text);
                      CREATE TABLE b (id int PRIMARY KEY, v text);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_stays_off_a_pipe_unless_asked_for_and_never_in_the_json() -> Result<()> {
    let pair = pair_with(SCHEMA).await?;
    for c in [&pair.old, &pair.new] {
        on(
            c,
            "INSERT INTO a SELECT g, g::text FROM generate_series(1, 3000) g;
             INSERT INTO b SELECT g, g::text FROM generate_series(1, 50) g",
        )?;
    }
    on(&pair.new, "UPDATE b SET v = 'x' WHERE id = 7")?;

    let run = reconciler(&pair, "verify", &["--skip-sequences"])
        .await?
        .exits(1)?;
    ensure!(
        run.stderr.is_empty(),
        "stderr of a piped run:\n{}",
        run.text()
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    ensure!(
        lines.len() >= 3
            && lines.iter().any(|l| l.starts_with("public.a"))
            && lines.iter().any(|l| l.starts_with("public.b")),
        "a line per table, then the summary:\n{}",
        run.text()
    );
    ensure!(
        !run.stdout.contains('\r') && !run.stdout.contains('\u{1b}'),
        "no redraws on stdout:\n{}",
        run.text()
    );

    let run = reconciler(
        &pair,
        "verify",
        &["--skip-sequences", "--format", "json", "--progress"],
    )
    .await?;
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .with_context(|| format!("stdout is not JSON:\n{}", run.text()))?;
    ensure!(
        json["tables"].as_array().map(Vec::len) == Some(2),
        "{json:#}"
    );
    ensure!(
        run.stderr
            .contains("verify: 0/2 tables, 0 rows compared, 0 differing"),
        "a progress line on stderr when asked for:\n{}",
        run.text()
    );

    let run = reconciler(&pair, "replay", &[]).await?.exits(0)?;
    ensure!(
        !run.stderr.contains("records replayed"),
        "no progress on a pipe:\n{}",
        run.text()
    );
    let run = reconciler(&pair, "replay", &["--format", "json", "--progress"])
        .await?
        .exits(0)?;
    serde_json::from_str::<serde_json::Value>(&run.stdout)
        .with_context(|| format!("stdout is not JSON:\n{}", run.text()))?;
    ensure!(
        run.stderr.contains("replay: 0 records replayed"),
        "{}",
        run.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_drawn_on_a_terminal() -> Result<()> {
    let pair = pair_with(SCHEMA).await?;
    on(
        &pair.old,
        "INSERT INTO a SELECT g, g::text FROM generate_series(1, 3000) g",
    )?;
    on(
        &pair.new,
        "INSERT INTO a SELECT g, g::text FROM generate_series(1, 3000) g",
    )?;
    let bin = reconciler_bin()?;
    // `script` gives the tool a pseudo-terminal and copies what it draws to stdout.
    let line = format!(
        "{} verify --skip-sequences --old {} --new {}",
        bin.display(),
        pair.old.url(DB),
        pair.new.url(DB)
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running script (util-linux) for a pseudo-terminal")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "verify under a terminal: {text}");
    ensure!(
        text.contains("/2 tables,") && text.contains("verify"),
        "no progress drawn on the terminal:\n{text}"
    );
    Ok(())
}
