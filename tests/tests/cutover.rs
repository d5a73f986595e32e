//! The cutover flag on real clusters with two proxy instances: reads move to new and back
//! (simple and extended protocol, canary sticky per session, read-your-writes across
//! instances, reads in transactions and session-bound reads kept on old), flips under
//! pgbench load, a flip abandoned while one instance is frozen, an instance cut off from
//! the control table stops writing, pre-flight refusals (retry backlog, phases not
//! available yet), the CLI and the admin token.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::time::{Duration, Instant};
use switchyard_proxy::RunningProxy;
use switchyard_tests::cutover::{
    admin, config, cutover_cli, failed_checks, flip, one, pair, pair_client,
    pgbench_without_failures, phase_of, port_of, refused_flip, wait_active,
};
use switchyard_tests::http::{get, request, request_with};
use switchyard_tests::mirror::{
    assert_mirrored, assert_nothing_queued, assert_same, init_tracing, reconciler, retry_records,
    PGBENCH_TABLES,
};
use switchyard_tests::proxy::{connect_proxy, start_proxy, ProxyProcess, DB};
use switchyard_tests::wait::poll_until_async;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_move_to_new_and_back_across_two_instances() -> Result<()> {
    let pair = pair().await?;
    let (old_port, new_port) = (pair.old.port(), pair.new.port());
    let a = start_proxy(config(&pair, "a")).await?;
    let b = start_proxy(config(&pair, "b")).await?;
    let ca = connect_proxy(&a).await?;
    let cb = connect_proxy(&b).await?;
    ensure!(port_of(&ca).await? == old_port, "shadow reads from old");
    ensure!(phase_of(&a).await? == ("shadow".into(), 0));
    let by_id = ca.prepare("SELECT v FROM t WHERE id = $1").await?;

    // A row only new has (written around the proxy): seen through the proxy once reads
    // moved there.
    tokio::task::block_in_place(|| pair.new.psql(DB, "INSERT INTO t VALUES (-1, 'new only')"))?;
    let (status, report) = flip(&a, r#"{"to": "reads-new", "by": "test"}"#).await?;
    ensure!(status == 200, "flip to reads-new: {status} {report}");
    ensure!(
        report["epoch"] == 1 && report["converged"] == true,
        "{report}"
    );
    for p in [&a, &b] {
        ensure!(phase_of(p).await? == ("reads-new".into(), 1));
    }
    ensure!(port_of(&ca).await? == new_port && port_of(&cb).await? == new_port);
    ensure!(one(&cb, "SELECT v FROM t WHERE id = -1").await? == "new only");
    tokio::task::block_in_place(|| pair.new.psql(DB, "DELETE FROM t WHERE id = -1"))?;

    // Read-your-writes across instances: a commit through a is answered once new has it,
    // so the next read through b (on new) sees it.
    for i in 0..100 {
        ca.simple_query(&format!("INSERT INTO t VALUES ({i}, 'w{i}')"))
            .await?;
        let n = one(&cb, "SELECT count(*) FROM t").await?;
        ensure!(
            n == (i + 1).to_string(),
            "after insert {i}, b read {n} rows"
        );
    }
    // Inside a transaction, reads stay with the writes on old.
    ca.batch_execute("BEGIN").await?;
    ensure!(
        port_of(&ca).await? == old_port,
        "a read inside a transaction"
    );
    ca.batch_execute("COMMIT").await?;
    // Extended protocol: each tokio-postgres query is a Parse/Describe batch (on old) then
    // a Bind/Execute batch, which new answers after preparing the statement there.
    let n: i64 = ca.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    ensure!(n == 100);
    for c in [&ca, &cb] {
        let port: String = c.query_one("SHOW port", &[]).await?.get(0);
        ensure!(
            port == new_port.to_string(),
            "an extended-protocol read: {port}"
        );
    }
    // A statement prepared before the flip, on old only, runs on new after it.
    tokio::task::block_in_place(|| pair.new.psql(DB, "INSERT INTO t VALUES (-2, 'new only')"))?;
    let v: String = ca.query_one(&by_id, &[&-2i64]).await?.get(0);
    ensure!(
        v == "new only",
        "the statement prepared before the flip read {v}"
    );
    tokio::task::block_in_place(|| pair.new.psql(DB, "DELETE FROM t WHERE id = -2"))?;
    // A type of the database's own that both sides numbered alike (the same script made
    // both) is read on new.
    let url = switchyard_tests::proxy::proxy_url(&a, "postgres");
    let same = "SELECT x, current_setting('port') FROM m";
    let out = switchyard_tests::clients::psql_url(&url, same).await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == format!("sad|{new_port}"),
        "{out:?}"
    );
    // One whose OID differs on new is read on old: a client that learned it by old's OID
    // would misread new's description.
    tokio::task::block_in_place(|| {
        pair.new.psql(DB, "CREATE TYPE filler AS ENUM ('f')")?;
        for c in [&pair.old, &pair.new] {
            c.psql(
                DB,
                "CREATE TYPE size AS ENUM ('s', 'l'); CREATE TABLE z (id int PRIMARY KEY, s size); \
                 INSERT INTO z VALUES (1, 'l')",
            )?;
        }
        anyhow::Ok(())
    })?;
    let differs = "SELECT s, current_setting('port') FROM z";
    let out = switchyard_tests::clients::psql_url(&url, differs).await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == format!("l|{old_port}"),
        "{out:?}"
    );
    let metrics = get(admin(&a)?, "/metrics").await?.1;
    ensure!(
        metrics.contains("why=\"user_types\""),
        "counted as read on old"
    );
    // The session's settings follow it to new.
    ca.batch_execute("SET search_path TO s2").await?;
    ensure!(one(&ca, "SELECT w FROM t").await? == "in s2");
    ca.batch_execute("RESET search_path").await?;
    ensure!(one(&ca, "SELECT count(*) FROM t").await? == "100");
    // A temporary table exists on old only: the session's reads stay there.
    let cc = connect_proxy(&b).await?;
    cc.batch_execute("CREATE TEMP TABLE scratch AS SELECT 7 AS x")
        .await?;
    ensure!(one(&cc, "SELECT x FROM scratch").await? == "7");
    ensure!(
        port_of(&cc).await? == old_port,
        "a session with temp tables"
    );
    // Session-bound functions stay on old.
    ensure!(one(&ca, "SELECT pg_try_advisory_lock(42)").await? == "t");
    ensure!(
        one(
            &pair_client(&pair.old).await?,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        )
        .await?
            == "1",
        "the advisory lock is held on old"
    );

    // Canary: half the sessions read from new, each always from the same side.
    let (status, report) = flip(&b, r#"{"to": "canary", "percent": 50}"#).await?;
    ensure!(status == 200, "flip to canary: {status} {report}");
    let (mut on_new, mut on_old) = (0, 0);
    for _ in 0..40 {
        let c = connect_proxy(if on_new % 2 == 0 { &a } else { &b }).await?;
        let first = port_of(&c).await?;
        for _ in 0..3 {
            ensure!(port_of(&c).await? == first, "canary is sticky per session");
        }
        if first == new_port {
            on_new += 1
        } else {
            on_old += 1
        }
    }
    ensure!(
        on_new > 0 && on_old > 0,
        "canary 50%: {on_new} on new, {on_old} on old"
    );

    // Back to shadow: every read from old again.
    let (status, report) = flip(&a, r#"{"to": "shadow"}"#).await?;
    ensure!(status == 200, "back to shadow: {status} {report}");
    ensure!(port_of(&ca).await? == old_port && port_of(&cb).await? == old_port);
    let (_, text) = get(admin(&a)?, "/api/cutover").await?;
    let v: Value = serde_json::from_str(&text)?;
    let history = v["history"].as_array().context("history")?;
    ensure!(history.len() == 3, "three flips in the timeline: {text}");
    ensure!(history[2]["by"] == "test" && history[0]["to"] == "shadow");
    ensure!(v["instances"].as_array().map(Vec::len) == Some(2), "{text}");

    assert_mirrored(&pair, &["t"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_waits_for_every_instance_and_is_abandoned_when_one_is_frozen() -> Result<()> {
    let pair = pair().await?;
    let a = start_proxy(config(&pair, "a")).await?;
    let b = tokio::task::block_in_place(|| {
        ProxyProcess::spawn_for(
            &pair,
            &[
                ("SWITCHYARD_INSTANCE_ID", "frozen-b"),
                ("SWITCHYARD_CUTOVER__POLL_MS", "100"),
            ],
        )
    })?;
    let cb = b.client().await?;
    // Both registered.
    poll_until_async("b to register", Duration::from_secs(10), || async {
        let (_, text) = get(admin(&a)?, "/api/cutover").await?;
        let v: Value = serde_json::from_str(&text)?;
        Ok((v["instances"].as_array().map(Vec::len) == Some(2)).then_some(()))
    })
    .await?;

    // Checks only: nothing changes.
    let (status, report) = flip(&a, r#"{"to": "reads-new", "dry_run": true}"#).await?;
    ensure!(status == 200 && report["dry_run"] == true, "{report}");
    ensure!(phase_of(&a).await? == ("shadow".into(), 0));
    // Phases this version cannot run are refused before anything waits.
    // Done only follows writes-new: refused before anything waits.
    refused_flip(&a, r#"{"to": "done"}"#, 409, "follows writes-new").await?;
    let (status, _) = request(admin(&a)?, "POST", "/api/cutover", r#"{"to": "sideways"}"#).await?;
    ensure!(status == 400, "an unknown phase is a bad request");

    let pid = b.pid().context("b's pid")? as i32;
    switchyard_tests::process::send_signal(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let started = Instant::now();
    let flipped = flip(&a, r#"{"to": "reads-new"}"#).await;
    let waited = started.elapsed();
    switchyard_tests::process::send_signal(pid, nix::sys::signal::Signal::SIGCONT)?;
    let (status, report) = flipped?;
    ensure!(
        status == 409,
        "a flip with a frozen instance: {status} {report}"
    );
    ensure!(
        report["waiting_for"]
            .as_array()
            .is_some_and(|w| w.iter().any(|i| i == "frozen-b")),
        "{report}"
    );
    ensure!(
        waited < Duration::from_secs(10),
        "abandoned after its timeout, not later"
    );
    ensure!(
        phase_of(&a).await? == ("shadow".into(), 0),
        "everyone stays on epoch 0"
    );
    ensure!(port_of(&cb).await? == pair.old.port());

    // Thawed, b confirms: the same flip goes through.
    let (status, report) = flip(&a, r#"{"to": "reads-new"}"#).await?;
    ensure!(
        status == 200 && report["converged"] == true,
        "{status} {report}"
    );
    ensure!(port_of(&cb).await? == pair.new.port(), "b follows the flip");

    // A flip waiting for a frozen instance is withdrawn by `cutover cancel`, which is safe
    // to repeat.
    switchyard_tests::process::send_signal(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let pending = {
        let body = r#"{"to": "shadow"}"#;
        let admin = admin(&a)?;
        tokio::spawn(async move { request(admin, "POST", "/api/cutover", body).await })
    };
    let old = pair_client(&pair.old).await?;
    poll_until_async(
        "the flip to be proposed",
        Duration::from_secs(3),
        || async {
            let proposed = one(
                &old,
                "SELECT count(proposed_epoch) FROM _switchyard.cutover",
            )
            .await?;
            Ok((proposed == "1").then_some(()))
        },
    )
    .await?;
    let cancel = || cutover_cli(&pair, &["cancel"]);
    let out = cancel()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success() && text.contains("withdrew the flip to shadow"),
        "{text}"
    );
    let (status, answer) = pending.await??;
    switchyard_tests::process::send_signal(pid, nix::sys::signal::Signal::SIGCONT)?;
    ensure!(
        status == 409 && answer.contains("withdrawn"),
        "{status} {answer}"
    );
    let out = cancel()?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("no flip is being confirmed"),
        "{out:?}"
    );
    ensure!(
        phase_of(&a).await? == ("reads-new".into(), 1),
        "everyone stays on epoch 1"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_the_control_table_stops_writing() -> Result<()> {
    let pair = pair().await?;
    let mut cfg = config(&pair, "cut-off");
    cfg.cutover.lease_secs = 1;
    let p = start_proxy(cfg).await?;
    let c = connect_proxy(&p).await?;
    c.simple_query("INSERT INTO t VALUES (1, 'before')").await?;
    // Someone holds the control table: the heartbeat cannot get through.
    let locker = pair_client(&pair.old).await?;
    locker
        .batch_execute("BEGIN; LOCK TABLE _switchyard.cutover IN ACCESS EXCLUSIVE MODE")
        .await?;
    let refused = poll_until_async("writes to be refused", Duration::from_secs(15), || async {
        match c.simple_query("INSERT INTO t VALUES (2, 'during')").await {
            Err(e) => Ok(Some(e)),
            Ok(_) => {
                c.simple_query("DELETE FROM t WHERE id = 2").await?;
                Ok(None)
            }
        }
    })
    .await?;
    let text = refused
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    ensure!(
        text.contains("lost the cutover control table"),
        "{refused:?}"
    );
    // Reads still work, and the table is unchanged.
    ensure!(one(&c, "SELECT v FROM t WHERE id = 1").await? == "before");
    locker.batch_execute("COMMIT").await?;
    poll_until_async("writes to come back", Duration::from_secs(15), || async {
        let r = c.simple_query("INSERT INTO t VALUES (3, 'after')").await;
        Ok(r.is_ok().then_some(()))
    })
    .await?;
    assert_mirrored(&pair, &["t"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_move_while_new_misses_changes() -> Result<()> {
    let pair = pair().await?;
    let p = start_proxy(config(&pair, "a")).await?;
    let c = connect_proxy(&p).await?;
    tokio::task::block_in_place(|| pair.new.stop_fast())?;
    c.simple_query("INSERT INTO t VALUES (1, 'while new was down')")
        .await?;
    tokio::task::block_in_place(|| pair.new.start())?;
    ensure!(retry_records(&pair)? > 0, "the write was queued");
    let (status, report) = flip(&p, r#"{"to": "reads-new"}"#).await?;
    ensure!(status == 409, "{status} {report}");
    ensure!(
        failed_checks(&report)? == ["retry backlog empty"],
        "{report}"
    );
    // Replayed, new has everything: the flip goes through and the row is read from new.
    let run = reconciler(&pair, "replay", &[]).await?;
    ensure!(run.code() == Some(0), "replay: {}", run.text());
    assert_nothing_queued(&pair)?;
    let (status, report) = flip(&p, r#"{"to": "reads-new"}"#).await?;
    ensure!(status == 200, "{status} {report}");
    ensure!(one(&c, "SELECT v FROM t WHERE id = 1").await? == "while new was down");
    // The instance counts the retry log every few seconds; reads move once it saw it
    // empty.
    poll_until_async("reads to move to new", Duration::from_secs(15), || async {
        Ok((port_of(&c).await? == pair.new.port()).then_some(()))
    })
    .await?;
    assert_same(&pair, &["t"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_moves_and_shows_the_flag_and_the_token_guards_the_api() -> Result<()> {
    let pair = pair().await?;
    let mut cfg = config(&pair, "a");
    cfg.admin_token = Some("s3cret".into());
    let p = start_proxy(cfg).await?;
    let cli = |args: &[&str]| cutover_cli(&pair, &[args, &["--timeout-secs", "3"]].concat());
    let out = cli(&["status"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("phase shadow (epoch 0)"),
        "{text}"
    );
    ensure!(text.contains("instance a"), "{text}");
    let out = cli(&["done"])?;
    ensure!(out.status.code() == Some(1), "done is refused: {out:?}");
    ensure!(String::from_utf8_lossy(&out.stderr).contains("[FAIL] phase available"));
    let out = cli(&["nowhere"])?;
    ensure!(out.status.code() == Some(2), "an unknown phase: {out:?}");
    let out = cli(&["reads-new"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("shadow → reads-new: epoch 1"),
        "{text} {out:?}"
    );
    ensure!(phase_of(&p).await? == ("reads-new".into(), 1));

    // Over HTTP, the token is required.
    let body = r#"{"to": "shadow"}"#;
    for (token, want) in [
        ("", 401),
        ("Authorization: Bearer wrong\r\n", 401),
        ("Authorization: Bearer s3cret\r\n", 200),
    ] {
        let (status, _, text) =
            request_with(admin(&p)?, "POST", "/api/cutover", body, token).await?;
        ensure!(status == want, "{token:?}: {status} {text}");
    }
    ensure!(phase_of(&p).await? == ("shadow".into(), 2));
    Ok(())
}

/// Scenario 30: pgbench through two instances (simple protocol through one, prepared
/// statements through the other) while reads move to new and back six times: reads reach
/// new through both, no failed transaction, and old and new equal after, without replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flips_under_pgbench_load_cause_no_client_error() -> Result<()> {
    init_tracing();
    let pair = switchyard_tests::mirror::pgbench_pair().await?;
    let a = start_proxy(config(&pair, "a")).await?;
    let b = start_proxy(config(&pair, "b")).await?;
    let run = |p: &RunningProxy, mode: &'static str| {
        let url = switchyard_tests::proxy::proxy_url(p, "postgres");
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(switchyard_tests::clients::pgbench_bin())
                .args(["-n", "-M", mode, "-c", "3", "-j", "3", "-T", "8"])
                .args(["-b", "tpcb-like@1", "-b", "select-only@3"])
                .arg(url)
                .output()
        })
    };
    let simple = run(&a, "simple");
    let prepared = run(&b, "prepared");
    let mut epochs = Vec::new();
    for phase in [
        "reads-new",
        "shadow",
        "canary",
        "reads-new",
        "shadow",
        "reads-new",
    ] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let body = if phase == "canary" {
            r#"{"to": "canary", "percent": 50}"#.to_string()
        } else {
            format!(r#"{{"to": "{phase}"}}"#)
        };
        let (status, report) = flip(&a, &body).await?;
        ensure!(
            status == 200,
            "flip to {phase} under load: {status} {report}"
        );
        epochs.push(report["epoch"].as_i64().unwrap_or(-1));
    }
    ensure!(epochs == [1, 2, 3, 4, 5, 6], "{epochs:?}");
    for (what, out) in [("simple", simple.await??), ("prepared", prepared.await??)] {
        pgbench_without_failures(what, out)?;
    }
    for (what, p) in [("simple", &a), ("prepared", &b)] {
        let routed = get(admin(p)?, "/metrics").await?.1;
        ensure!(
            routed.contains("switchyard_reads_routed_total{to=\"new\"}"),
            "pgbench -M {what}: reads went to new under load"
        );
    }
    assert_mirrored(&pair, &PGBENCH_TABLES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_read_running_on_new() -> Result<()> {
    let pair = pair().await?;
    let a = start_proxy(config(&pair, "a")).await?;
    let (status, report) = flip(&a, r#"{"to": "reads-new"}"#).await?;
    ensure!(status == 200, "{status} {report}");
    let c = connect_proxy(&a).await?;
    ensure!(port_of(&c).await? == pair.new.port(), "reads come from new");
    let cancel = c.cancel_token();
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    wait_active(&pair.new, "SELECT pg_sleep(30)").await?;
    cancel.cancel_query(tokio_postgres::NoTls).await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .context("the read on new was not cancelled")??;
    ensure!(
        ended.as_ref().err().and_then(|e| e.code())
            == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{ended:?}"
    );
    Ok(())
}
