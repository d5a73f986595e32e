//! TLS to the databases (issue #26) against real PostgreSQL servers with `ssl = on`, a CA
//! and certificates made by the test, and `pg_hba.conf` accepting TCP over TLS only
//! (`hostssl`): the proxy dual-writes and shadow-reads, the backfill copies (its COPY path
//! too) and the reconciler verifies and replays, all over TLS with `verify-full` and SCRAM
//! channel binding required; a server with a client-certificate requirement; and the
//! refusals: `require` against a server without TLS, `verify-full` against a wrong host
//! name, settings that cannot be honoured, never with the password shown.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_core::copy_conn::CopyConn;
use switchyard_tests::backfill::run_backfill;
use switchyard_tests::mirror::{assert_same, on};
use switchyard_tests::proxy::{connect_proxy, start_proxy, Pair, DB};
use switchyard_tests::reconciler::run_reconciler;
use switchyard_tests::shadow::wait_shadow;
use switchyard_tests::tls_certs::{ServerTls, TestCa};
use switchyard_tests::{Auth, PgCluster};

const RUN: Duration = Duration::from_secs(180);

/// Two SCRAM clusters serving TLS only, certificates for 127.0.0.1 signed by `ca`.
fn tls_pair(ca: &TestCa, client_cert: bool) -> Result<Pair> {
    let server = ca.issue("server", &["127.0.0.1"])?;
    let tls = ServerTls {
        cert: server,
        ca_file: ca.ca_file.clone(),
        client_cert,
    };
    Pair::start_with(
        PgCluster::builder().auth(Auth::Scram).tls(tls.clone()),
        PgCluster::builder().auth(Auth::Scram).tls(tls),
    )
}

/// `c`'s URL with TLS parameters.
fn url(c: &PgCluster, params: &str) -> String {
    format!("{}?{params}", c.url(DB))
}

fn verify_full(ca: &TestCa) -> String {
    format!(
        "sslmode=verify-full&sslrootcert={}&channel_binding=require",
        ca.ca_file.display()
    )
}

/// How many of `c`'s sessions from `application` are on TLS, and how many are not.
fn ssl_sessions(c: &PgCluster, application: &str) -> Result<(i64, i64)> {
    let out = on(
        c,
        &format!(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE '{application}%' AND a.client_addr IS NOT NULL"
        ),
    )?;
    let (a, b) = out.split_once('|').context("two counts")?;
    Ok((a.parse()?, b.parse()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_dual_writes_and_shadow_reads_over_verified_tls() -> Result<()> {
    let ca = TestCa::new()?;
    let pair = tokio::task::block_in_place(|| tls_pair(&ca, false))?;
    let schema = "CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric)";
    on(&pair.old, schema)?;
    on(&pair.new, schema)?;
    let tls = verify_full(&ca);
    let mut config = pair.config();
    config.old = url(&pair.old, &tls);
    config.new = url(&pair.new, &tls);
    config.shadow.sample_rate = 1.0;
    config.shadow.recheck_delay_ms = 200;
    let proxy = start_proxy(config).await?;
    let c = connect_proxy(&proxy).await?;
    c.batch_execute(
        "INSERT INTO acct SELECT g, 'o' || g, g * 10 FROM generate_series(1, 50) g;
         BEGIN; UPDATE acct SET balance = balance - 5 WHERE id = 1;
                UPDATE acct SET balance = balance + 5 WHERE id = 2; COMMIT;
         DELETE FROM acct WHERE id = 50;",
    )
    .await?;
    let rows = c
        .query("SELECT owner FROM acct WHERE id = $1", &[&7i32])
        .await?;
    ensure!(rows.len() == 1);
    c.simple_query("SELECT count(*) FROM acct").await?;
    tokio::task::block_in_place(|| assert_same(&pair, &["acct"]))?;
    // Shadow reads ran on new (over TLS: new accepts nothing else) and matched. A read
    // sampled right after a commit may first see new before the commit's second phase
    // there: its recheck then calls it transient, which is no mismatch either.
    let s = wait_shadow(&proxy, "shadow reads to be compared", |s| {
        let t = &s["totals"];
        t["matched"].as_u64().unwrap_or(0) + t["transient"].as_u64().unwrap_or(0) >= 2
    })
    .await?;
    ensure!(
        s["totals"]["matched"].as_u64() >= Some(1) && s["totals"]["confirmed"] == 0,
        "{s:#}"
    );
    // Every connection the proxy holds to either side is encrypted.
    for (side, c) in [("old", &pair.old), ("new", &pair.new)] {
        let (tls_n, plain) = tokio::task::block_in_place(|| ssl_sessions(c, ""))?;
        ensure!(
            tls_n >= 1 && plain == 0,
            "{side}: {tls_n} TLS, {plain} plain"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_verify_and_replay_run_over_tls_with_client_certificates() -> Result<()> {
    let ca = TestCa::new()?;
    let pair = tokio::task::block_in_place(|| tls_pair(&ca, true))?;
    let client = ca.issue(PgCluster::USER, &[])?;
    let schema = "CREATE TABLE items (id bigint PRIMARY KEY, v text);
                  CREATE TABLE log (at int, note text)";
    on(&pair.old, schema)?;
    on(&pair.new, schema)?;
    on(
        &pair.old,
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         INSERT INTO log SELECT g % 7, 'n' FROM generate_series(1, 300) g",
    )?;
    let params = format!(
        "{}&sslcert={}&sslkey={}",
        verify_full(&ca),
        client.cert.display(),
        client.key.display()
    );
    let (old, new) = (url(&pair.old, &params), url(&pair.new, &params));
    let run = run_backfill(&["--old", &old, "--new", &new], RUN).await?;
    ensure!(run.code() == Some(0), "backfill:\n{}", run.text());
    tokio::task::block_in_place(|| assert_same(&pair, &["items", "log"]))?;
    for cmd in ["verify", "replay"] {
        let run = run_reconciler(&[cmd, "--old", &old, "--new", &new], RUN).await?;
        ensure!(run.code() == Some(0), "{cmd}:\n{}", run.text());
    }
    // Without the client certificate the server refuses (clientcert=verify-full), and the
    // message says so without the password.
    let bare = url(&pair.old, &verify_full(&ca));
    let run = run_reconciler(&["verify", "--old", &bare, "--new", &new], RUN)
        .await?
        .exits(2)?;
    ensure!(!run.text().contains(PgCluster::PASSWORD), "{}", run.text());
    Ok(())
}

/// Polls `F` the first time with the task's cooperative budget used up, as a task that has
/// just read a long COPY may find it: every socket operation then answers "not now" once.
struct BudgetSpent<F> {
    inner: std::pin::Pin<Box<F>>,
    spent: bool,
}

impl<F: std::future::Future> std::future::Future for BudgetSpent<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        if !self.spent {
            self.spent = true;
            while tokio::task::coop::has_budget_remaining() {
                match tokio::task::coop::poll_proceed(cx) {
                    std::task::Poll::Ready(unit) => unit.made_progress(),
                    std::task::Poll::Pending => break,
                }
            }
        }
        self.inner.as_mut().poll(cx)
    }
}

/// A request written just as the task's budget runs out: tokio-rustls takes the bytes but
/// keeps the record they make until the socket may be written again, and only a flush
/// sends it. Unflushed, the backfill's COPY reader waited for ever for the answer to a
/// request the server never got (a backfill over TLS hung now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_written_when_the_budget_runs_out_still_reaches_the_server() -> Result<()> {
    let ca = TestCa::new()?;
    let pair = tokio::task::block_in_place(|| tls_pair(&ca, false))?;
    let mut copy = CopyConn::connect(&url(&pair.new, &verify_full(&ca)), "budget").await?;
    for round in 0..3 {
        let sql = format!("COPY (SELECT {round} + 1) TO STDOUT");
        let request = BudgetSpent {
            inner: Box::pin(copy.copy_out_text(&sql)),
            spent: false,
        };
        let got = tokio::time::timeout(Duration::from_secs(20), request)
            .await
            .context("no answer: the request stayed in the TLS buffer")??;
        ensure!(got.trim() == (round + 1).to_string(), "{got}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_honoured_fails_clearly_and_never_shows_the_password() -> Result<()> {
    let ca = TestCa::new()?;
    let tls_pair = tokio::task::block_in_place(|| tls_pair(&ca, false))?;
    let plain = Pair::start_with(
        PgCluster::builder().auth(Auth::Scram),
        PgCluster::builder().auth(Auth::Scram),
    )?;
    let good_new = url(&tls_pair.new, &verify_full(&ca));
    let cases = [
        // A server without TLS, TLS required.
        // (tokio-postgres's words for the reconciler, Switchyard's own for the COPY path.)
        (
            url(&plain.old, "sslmode=require"),
            "not support TLS|not accept TLS",
        ),
        // The certificate names 127.0.0.1, the URL localhost.
        (
            tls_pair.old.url(DB).replace("127.0.0.1", "localhost")
                + &format!("?sslmode=verify-full&sslrootcert={}", ca.ca_file.display()),
            "certificate",
        ),
        // Another CA's certificate.
        (
            url(
                &tls_pair.old,
                &format!(
                    "sslmode=verify-ca&sslrootcert={}",
                    TestCa::new()?.ca_file.display()
                ),
            ),
            "certificate",
        ),
        // Channel binding needs TLS.
        (
            url(&plain.old, "sslmode=prefer&channel_binding=require"),
            "did not use channel binding|channel_binding=require",
        ),
        (url(&tls_pair.old, "sslmode=verify-full"), "sslrootcert"),
        (url(&tls_pair.old, "sslmode=bogus"), "sslmode=\"bogus\""),
    ];
    for (old, needle) in &cases {
        let run = run_reconciler(&["verify", "--old", old, "--new", &good_new], RUN).await?;
        let text = run.text();
        ensure!(run.code() == Some(2), "{old}: {text}");
        ensure!(
            needle.split('|').any(|n| text.contains(n)),
            "{old}: no {needle:?} in:\n{text}"
        );
        ensure!(
            !text.contains(PgCluster::PASSWORD),
            "{old}: password shown:\n{text}"
        );
        let run = run_backfill(&["--old", old, "--new", &good_new], RUN).await?;
        ensure!(run.code() != Some(0), "backfill took {old}: {}", run.text());
        ensure!(!run.text().contains(PgCluster::PASSWORD), "{}", run.text());
    }
    // The proxy refuses at start what it cannot honour.
    let mut config = tls_pair.config();
    config.old = url(
        &tls_pair.old,
        "sslmode=verify-full&sslrootcert=/no/such/ca.crt",
    );
    let err = match start_proxy(config).await {
        Ok(_) => anyhow::bail!("the proxy started with a missing root certificate"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("/no/such/ca.crt"), "{err}");
    ensure!(!err.contains(PgCluster::PASSWORD), "{err}");
    // sslmode=prefer against a server without TLS falls back to plain text, as libpq.
    run_reconciler(
        &[
            "verify",
            "--old",
            &url(&plain.old, "sslmode=prefer"),
            "--new",
            &url(&plain.new, "sslmode=prefer"),
        ],
        RUN,
    )
    .await?
    .exits(0)?;
    Ok(())
}
