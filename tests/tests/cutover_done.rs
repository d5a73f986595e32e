//! The last flip on real clusters: `done` follows `writes-new` only and is refused while a
//! check fails; then old is detached (sessions write to new alone, capture comes off new),
//! the flag lives on new, and with old switched off the instances keep taking writes and a
//! new instance starts on the flag it finds on new.

use anyhow::{ensure, Context, Result};
use switchyard_tests::cutover::{
    config, cutover_cli, failed_checks, flip, one, pair, phase_of, port_of, refused_flip,
};
use switchyard_tests::mirror::on;
use switchyard_tests::proxy::{connect_proxy, start_proxy};
use switchyard_tests::reconciler::ToolRun;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_detaches_old_and_the_flag_lives_on_new() -> Result<()> {
    let pair = pair().await?;
    let a = start_proxy(config(&pair, "a")).await?;
    let b = start_proxy(config(&pair, "b")).await?;
    let ca = connect_proxy(&a).await?;
    let cb = connect_proxy(&b).await?;
    ca.batch_execute("INSERT INTO t VALUES (1, 'shadow')")
        .await?;
    // Done straight from shadow.
    refused_flip(&a, r#"{"to": "done"}"#, 409, "follows writes-new").await?;
    let (status, report) = flip(&a, r#"{"to": "writes-new"}"#).await?;
    ensure!(status == 200, "{status} {report}");
    cb.batch_execute("INSERT INTO t VALUES (2, 'writes-new')")
        .await?;
    // Old must hold every change before it is let go.
    on(
        &pair.new,
        r#"INSERT INTO _switchyard.retry_log (idempotency_key, kind, table_name, key, origin, reason)
           VALUES ('test', 'row', 'public.t', '{"id": 2}', '{"instance": "test", "xid": null, "ordinal": 0}', 'test')"#,
    )?;
    let (status, report) = flip(&a, r#"{"to": "done"}"#).await?;
    ensure!(status == 409, "done with a backlog: {status} {report}");
    ensure!(
        failed_checks(&report)? == ["retry backlog empty"],
        "{report}"
    );
    on(&pair.new, "DELETE FROM _switchyard.retry_log")?;

    let (status, report) = flip(&b, r#"{"to": "done", "by": "test"}"#).await?;
    ensure!(
        status == 200 && report["converged"] == true,
        "{status} {report}"
    );
    ensure!(
        report["capture_removed"]
            .as_str()
            .unwrap_or("")
            .starts_with("removed from"),
        "{report}"
    );
    ensure!(
        on(
            &pair.new,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'switchyard\\_capture\\_%'"
        )? == "0",
        "capture triggers left on new"
    );
    for p in [&a, &b] {
        ensure!(phase_of(p).await?.0 == "done");
    }
    // Sessions write to new alone: old stays as it was.
    let before = on(&pair.old, "SELECT count(*) FROM t")?;
    ca.batch_execute("INSERT INTO t VALUES (3, 'done'); UPDATE t SET v = 'x' WHERE id = 1")
        .await?;
    cb.batch_execute("INSERT INTO t VALUES (4, 'done')").await?;
    ensure!(port_of(&ca).await? == pair.new.port());
    ensure!(
        on(&pair.old, "SELECT count(*) FROM t")? == before,
        "old was written after done"
    );
    ensure!(one(&ca, "SELECT count(*) FROM t").await? == "4");
    ensure!(on(&pair.new, "SELECT count(*) FROM pg_prepared_xacts")? == "0");
    ensure!(
        on(&pair.new, "SELECT count(*) FROM _switchyard.capture_log")? == "0",
        "nothing is captured on new any more"
    );

    // No phase follows done.
    // A flip after done.
    refused_flip(&a, r#"{"to": "shadow"}"#, 400, "the cutover is done").await?;

    // Old switched off: the instances follow the flag on new and keep taking writes, past
    // their lease.
    tokio::task::block_in_place(|| pair.old.stop_fast())?;
    let lease = std::time::Duration::from_secs(6);
    let deadline = std::time::Instant::now() + lease;
    let mut id = 5;
    while std::time::Instant::now() < deadline {
        ca.batch_execute(&format!("INSERT INTO t VALUES ({id}, 'old is off')"))
            .await
            .with_context(|| format!("a write {id} after old was switched off"))?;
        id += 1;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // A new instance starts with old gone: it finds the flag on new.
    let c = start_proxy(config(&pair, "c")).await?;
    ensure!(phase_of(&c).await?.0 == "done");
    let cc = connect_proxy(&c).await?;
    cc.batch_execute(&format!("INSERT INTO t VALUES ({id}, 'new instance')"))
        .await?;
    // So does the CLI's status.
    let status = ToolRun::from(cutover_cli(&pair, &["status"])?).success("cutover status")?;
    ensure!(status.stdout.starts_with("phase done"), "{}", status.text());
    Ok(())
}
