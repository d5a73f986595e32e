//! A new-to-old record (the cutover's `writes-new` phase: new is the primary) read from
//! the topic: replay waits for its origin transaction on new, not old, then re-syncs its
//! rows from new into old. New's transaction ids are pushed thousands past old's first, so
//! a lookup on old (the wrong database) would find the id "in the future" there and apply
//! the record at once, while its rows are still invisible.

use super::origin::{broker_pair_and_topics, publish, row_record_dir, same_rows, spawn_follow};
use super::T;
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_core::direction::Direction;
use switchyard_tests::mirror::{assert_verified, on, open_transaction};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_to_old_record_waits_for_new_and_resyncs_into_old() -> Result<()> {
    let (_serial, broker, pair) = broker_pair_and_topics(T).await?;
    on(
        &pair.new,
        "CREATE TABLE burn (i int); \
         DO $$ BEGIN FOR i IN 1..5000 LOOP BEGIN INSERT INTO burn VALUES (i); \
         EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$; DROP TABLE burn",
    )?;
    let seed = "INSERT INTO t VALUES (1, 'before the cutover')";
    on(&pair.old, seed)?;
    on(&pair.new, seed)?;
    // The origin: open on new, its changes invisible to any other session until it commits.
    let (origin, xid) = open_transaction(
        &pair.new,
        "UPDATE t SET v = 'written on new' WHERE id = 1; \
             INSERT INTO t VALUES (2, 'inserted on new')",
    )
    .await?;
    for (id, partition) in [(1, 0), (2, 1)] {
        let r = row_record_dir(Direction::NewToOld, "t", id, Some(&xid));
        publish(&broker, &r, partition).await?;
    }

    let dir = tempfile::tempdir()?;
    let metrics = dir.path().join("replay.prom").display().to_string();
    let mut replay = spawn_follow(&pair, &broker, &metrics, &[])?;
    let before = on(&pair.old, "SELECT string_agg(v, ',' ORDER BY id) FROM t")?;
    let rechecks = |log: &str| log.matches("Origin transaction still in progress").count();
    replay.poll_while_running(
        "replay to hold both records for the open transaction on new",
        Duration::from_secs(120),
        |replay| {
            let now = on(&pair.old, "SELECT string_agg(v, ',' ORDER BY id) FROM t")?;
            ensure!(
                now == before,
                "old changed while the origin transaction is open on new: {now}\n{}",
                replay.log_text()
            );
            let waiting = std::fs::read_to_string(&metrics)
                .is_ok_and(|m| m.contains("switchyard_replay_waiting_for_origin 2\n"));
            Ok((waiting && rechecks(&replay.log_text()) >= 3).then_some(()))
        },
    )?;
    origin.batch_execute("COMMIT").await?;
    replay.poll_while_running("new's rows on old, counted as new-to-old", Duration::from_secs(60), |_| {
                let arrived = on(&pair.old, "SELECT string_agg(v, ',' ORDER BY id) FROM t")?
                    == "written on new,inserted on new";
                let counted = std::fs::read_to_string(&metrics).is_ok_and(|m| {
                    m.contains(
                        "switchyard_replay_applied_total{direction=\"new-to-old\",source=\"retry_log\"} 2\n",
                    )
                });
                Ok((arrived && counted).then_some(()))
    })
    .with_context(|| replay.log_text())?;
    ensure!(
        on(&pair.new, "SELECT string_agg(v, ',' ORDER BY id) FROM t")?
            == "written on new,inserted on new",
        "new, the source of truth, kept its rows"
    );
    same_rows(&pair, "t")?;
    assert_verified(&pair, "t").await?;
    Ok(())
}
