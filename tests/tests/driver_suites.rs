//! A driver's own test suite through the proxy: asyncpg's (the modules below, fetched by
//! `.ci/setup` from its sdist) runs against PostgreSQL directly and through the proxy, with
//! dual writes and in passthrough. Every test that passes directly must pass through the
//! proxy (failing twice there to count), except those listed, with the reason, in
//! `tests/driver_suites/asyncpg-*.txt`; listed tests that passed are named in the report.

use anyhow::{ensure, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use switchyard_proxy::config::MirrorMode;
use switchyard_proxy::ProxyConfig;
use switchyard_tests::clients::python_bin;
use switchyard_tests::driver_suite::{
    asyncpg_suite, known_list, regressions, run_unittest, Target,
};
use switchyard_tests::mirror::init_tracing;
use switchyard_tests::proxy::{start_proxy, Pair};
use switchyard_tests::PgCluster;

/// The suite's modules that test the wire: queries, prepared statements, transactions,
/// COPY, cursors, notifications, cancellation, timeouts, types, pools, errors. Left out:
/// `test_connect` (starts clusters of its own, tests TLS and auth files), `test__*`
/// (packaging), `test_subinterpreters`, `test_scram` (changes the server's auth).
const MODULES: &[&str] = &[
    "tests.test_execute",
    "tests.test_prepare",
    "tests.test_transaction",
    "tests.test_listeners",
    "tests.test_copy",
    "tests.test_cursor",
    "tests.test_exceptions",
    "tests.test_cancellation",
    "tests.test_timeout",
    "tests.test_codecs",
    "tests.test_record",
    "tests.test_cache_invalidation",
    "tests.test_introspection",
    "tests.test_types",
    "tests.test_pool",
    "tests.test_adversity",
    "tests.test_logging",
    "tests.test_utils",
];

const RUN: Duration = Duration::from_secs(600);
const DATABASE: &str = "postgres";

fn listed(mode: &str) -> Result<BTreeMap<String, String>> {
    known_list(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("driver_suites")
            .join(format!("asyncpg-{mode}.txt")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_suite_passes_through_the_proxy_as_it_passes_directly() -> Result<()> {
    init_tracing();
    let python = python_bin()?;
    let suite = asyncpg_suite(&python)?;

    let direct_cluster =
        tokio::task::spawn_blocking(|| PgCluster::builder().max_prepared_transactions(64).start())
            .await??;
    let direct = run_unittest(
        &python,
        &suite,
        MODULES,
        &target(direct_cluster.port()),
        RUN,
    )
    .await?;
    let passed = direct.outcomes.values().filter(|o| *o == "pass").count();
    ensure!(
        passed >= 250,
        "only {passed} tests passed directly: {:#?}\n{}",
        direct.outcomes,
        tail(&direct.log)
    );
    drop(direct_cluster);

    let mut report = Vec::new();
    let mut wrong = Vec::new();
    let mut logs = Vec::new();
    for (mode, name) in [
        (MirrorMode::TwoPhase, "dual-writes"),
        (MirrorMode::Off, "passthrough"),
    ] {
        let pair = tokio::task::spawn_blocking(Pair::start).await??;
        let mut config = ProxyConfig::new(pair.old.url(DATABASE), pair.new.url(DATABASE));
        config.listen = "127.0.0.1:0".into();
        config.admin_listen = "127.0.0.1:0".into();
        config.mirror.mode = mode;
        let proxy = start_proxy(config).await?;
        let through = run_unittest(
            &python,
            &suite,
            MODULES,
            &target(proxy.listen_addr().port()),
            RUN,
        )
        .await?;
        let mut found = regressions(&direct.outcomes, &through.outcomes);
        // Timing-sensitive tests fail now and then even directly: a difference counts once
        // the test failed twice through the proxy.
        if !found.is_empty() {
            let ids: Vec<&str> = found.keys().map(String::as_str).collect();
            let again = run_unittest(
                &python,
                &suite,
                &ids,
                &target(proxy.listen_addr().port()),
                RUN,
            )
            .await?;
            found.retain(|id, _| again.outcomes.get(id).map(String::as_str) != Some("pass"));
        }
        proxy.shutdown().await;
        let known = listed(name)?;
        report.push(format!(
            "{name}: {} of {passed} passed through the proxy; {} known differences",
            passed - found.len(),
            known.len()
        ));
        for (id, outcome) in &found {
            if !known.contains_key(id) {
                wrong.push(format!(
                    "{name}: {id} passes directly, {outcome} through the proxy"
                ));
            }
        }
        if !found.is_empty() {
            logs.push(format!(
                "--- {name}: the suite's tracebacks\n{}",
                tail(&through.log)
            ));
        }
        // Listed tests that passed this time are shown, not failed on: some are timing
        // sensitive even directly (a list entry comes off once it passes for good).
        for (id, reason) in &known {
            if !found.contains_key(id) {
                report.push(format!(
                    "{name}: listed, but passed this time: {id} ({reason})"
                ));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    ensure!(
        wrong.is_empty(),
        "{}\n{}\n{}",
        report.join("\n"),
        wrong.join("\n"),
        logs.join("\n")
    );
    Ok(())
}

fn target(port: u16) -> Target<'static> {
    Target {
        host: "127.0.0.1",
        port,
        user: PgCluster::USER,
        password: PgCluster::PASSWORD,
        database: DATABASE,
    }
}

/// The end of a long log.
fn tail(log: &str) -> &str {
    let start = log.len().saturating_sub(20_000);
    let start = (start..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(log.len());
    &log[start..]
}
