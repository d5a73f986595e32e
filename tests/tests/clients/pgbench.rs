//! pgbench through the proxy in all three query modes (simple, extended, prepared).

use super::*;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use switchyard_tests::clients::{pgbench_bin, run_client_ok, ClientOutput};
use tokio::process::Command;

/// The value after `label` on its own line of pgbench's report, e.g.
/// "number of failed transactions: 0 (0.000%)" → "0 (0.000%)".
fn report_value<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    report.lines().find_map(|l| {
        l.strip_prefix(label)
            .map(|v| v.trim_start_matches(':').trim())
    })
}

async fn pgbench(url: &str, args: &[&str], what: &str) -> Result<ClientOutput> {
    run_client_ok(
        Command::new(pgbench_bin()).args(args).arg(url),
        what,
        Duration::from_secs(300),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_all_query_modes_through_proxy() -> Result<()> {
    let s = setup().await?;
    // Initialisation through the proxy: DDL, client-side COPY of the data, VACUUM, keys.
    pgbench(&s.url, &["-i", "-s", "1"], "pgbench -i -s 1").await?;
    assert_eq!(
        old_psql(
            &s.pair,
            "SELECT (SELECT count(*) FROM pgbench_branches), (SELECT count(*) FROM pgbench_tellers), \
             (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history)"
        )
        .await?,
        "1|10|100000|0"
    );

    const CLIENTS: u64 = 4;
    const TRANSACTIONS: u64 = 200;
    let (c, t) = (CLIENTS.to_string(), TRANSACTIONS.to_string());
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [true, false] {
            let what = format!(
                "pgbench -M {mode}{}",
                if select_only { " -S" } else { " (tpcb-like)" }
            );
            let before: u64 = old_psql(&s.pair, "SELECT count(*) FROM pgbench_history")
                .await?
                .parse()?;
            let mut args = vec!["-n", "-M", mode, "-c", &c, "-j", "2", "-t", &t];
            if select_only {
                args.push("-S");
            }
            let started = Instant::now();
            let out = pgbench(&s.url, &args, &what).await?;
            eprintln!("{what}: {:?}", started.elapsed());
            let report = &out.stdout;
            assert_eq!(
                report_value(report, "number of transactions actually processed"),
                Some(format!("{}/{}", CLIENTS * TRANSACTIONS, CLIENTS * TRANSACTIONS).as_str()),
                "{what}:\n{report}\n{}",
                out.stderr
            );
            let failed = report_value(report, "number of failed transactions")
                .with_context(|| format!("{what}: no failed-transactions line:\n{report}"))?;
            assert!(
                failed.starts_with("0 "),
                "{what}: failed transactions: {failed}\n{report}"
            );
            assert_eq!(
                report_value(report, "query mode"),
                Some(mode),
                "{what}:\n{report}"
            );

            let after: u64 = old_psql(&s.pair, "SELECT count(*) FROM pgbench_history")
                .await?
                .parse()?;
            let expected = if select_only {
                before
            } else {
                before + CLIENTS * TRANSACTIONS
            };
            assert_eq!(
                after, expected,
                "{what}: pgbench_history rows before {before}, after {after}"
            );
        }
    }
    // Every committed tpcb transaction moved the same delta through all four tables.
    let sums = old_psql(
        &s.pair,
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), \
         (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(delta) FROM pgbench_history)",
    )
    .await?;
    let parts: Vec<&str> = sums.split('|').collect();
    assert!(
        parts.len() == 4 && parts.iter().all(|p| *p == parts[0]),
        "balances disagree: {sums}"
    );
    s.proxy.shutdown().await;
    Ok(())
}
