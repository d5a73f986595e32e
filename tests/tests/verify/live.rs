//! Verify under live dual writes (no false alarm), and the re-sync API retry-log replay calls.

use super::*;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_tests::mirror::pair_with;
use switchyard_tests::mirror::reconciler_json;
use switchyard_tests::proxy::{connect_proxy, start_proxy, DB};

/// Verify while the proxy dual-writes must not report the rows in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_writes_raise_no_false_alarm() -> Result<()> {
    let pair = pair_with(
        "CREATE TABLE live (id int PRIMARY KEY, v int, note text);
         INSERT INTO live SELECT g, 0, 'n' || g FROM generate_series(1, 30000) g;
         ANALYZE live;",
    )
    .await?;
    let proxy = start_proxy(pair.config()).await?;
    let via_proxy = connect_proxy(&proxy).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        tokio::spawn(async move {
            let update = "UPDATE live SET v = v + 1, note = $2 WHERE id = $1";
            let mut n: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = rand::random_range(1..=30000i32);
                let note = format!("w{n}");
                via_proxy.execute(update, &[&id, &note]).await?;
                // Inserts and deletes too, at the top of the key space.
                let extra = 100_000 + (n % 50) as i32;
                let (sql, args): (&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]) =
                    if n % 100 < 50 {
                        (
                            "INSERT INTO live VALUES ($1, 0, 'ins') ON CONFLICT (id) DO NOTHING",
                            &[&extra],
                        )
                    } else {
                        ("DELETE FROM live WHERE id = $1", &[&extra])
                    };
                via_proxy.execute(sql, args).await?;
                writes.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };

    // Rounds until enough writes overlapped the verify runs (at least three rounds).
    let (mut transient, mut overlapped) = (0, 0);
    for round in 0..30 {
        let before = writes.load(Ordering::Relaxed);
        let (code, json) = reconciler_json(
            &pair,
            "verify",
            &["--tables", "live", "--chunk-rows", "2000"],
        )
        .await?;
        overlapped += writes.load(Ordering::Relaxed) - before;
        assert_eq!(
            code, 0,
            "round {round}: false alarm under live writes:\n{json:#}"
        );
        assert!(found(&json)?.is_empty());
        transient += table(&json, "public.live")?["transient"]
            .as_u64()
            .unwrap_or(0);
        if round >= 2 && overlapped >= 200 {
            break;
        }
    }
    assert!(
        overlapped >= 200,
        "only {overlapped} writes overlapped the verify runs"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.context("writer task")??;
    eprintln!("rows seen in flight and cleared by the re-check: {transient}");
    let (code, json) = reconciler_json(&pair, "verify", &["--tables", "live"]).await?;
    assert_eq!(code, 0, "{json:#}");
    Ok(())
}

/// The re-sync API as retry-log replay will call it: keys as text (any text form the key
/// type accepts), duplicates harmless, idempotent, counts of what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_takes_text_keys_from_any_source() -> Result<()> {
    use switchyard_core::catalog::load_table;
    use switchyard_core::connect::{Db, WriteMode, Writer};
    use switchyard_core::ident::QualifiedName;
    use switchyard_core::resync::{resync_keys, ResyncCounts};

    let pair = pair_with(
        "CREATE TABLE rs (id uuid PRIMARY KEY, v numeric, t timestamptz, n text);
         INSERT INTO rs SELECT md5('r' || g)::uuid, g / 3.0, timestamptz '2024-06-01 12:00+02' + g * interval '1 s', NULL
           FROM generate_series(1, 10) g;",
    )
    .await?;
    pair.new.psql(
        DB,
        "UPDATE rs SET v = 0 WHERE id = md5('r1')::uuid;
         DELETE FROM rs WHERE id = md5('r2')::uuid;
         INSERT INTO rs VALUES (md5('ghost')::uuid, 1, now(), 'x');",
    )?;
    let upper = |s: &str| -> Result<String> {
        pair.old
            .psql(DB, &format!("SELECT upper(md5('{s}')::uuid::text)"))
    };
    let keys: Vec<Vec<Option<String>>> = vec![
        vec![Some(upper("r1")?)],
        vec![Some(upper("r1")?)], // duplicate
        vec![Some(upper("r2")?)],
        vec![Some(upper("ghost")?)],
        vec![Some(upper("r3")?)],      // already equal
        vec![Some(upper("nowhere")?)], // on neither side
    ];
    let mut source = pair.old.connect(DB).await?;
    let mut target =
        Writer::set_up(pair.new.connect(DB).await?, Db::New, WriteMode::Replica).await?;
    let meta = load_table(&target, &QualifiedName::parse("rs")?).await?;
    let counts = resync_keys(&mut source, &mut target, &meta, &keys).await?;
    assert_eq!(
        counts,
        ResyncCounts {
            upserted: 2,
            deleted: 1,
            unchanged: 2
        }
    );
    let all = "SELECT id, v, t, n FROM rs ORDER BY id";
    assert_eq!(pair.new.psql(DB, all)?, pair.old.psql(DB, all)?);
    // Idempotent.
    let again = resync_keys(&mut source, &mut target, &meta, &keys).await?;
    assert_eq!(again.upserted + again.deleted, 0, "{again:?}");
    // A key with the wrong number of values is refused before anything runs.
    let err = resync_keys(&mut source, &mut target, &meta, &[vec![None, None]])
        .await
        .expect_err("arity");
    assert!(err.to_string().contains("has 2 values"), "{err}");
    Ok(())
}
