use super::*;

const START_MS: u64 = 1_700_000_000_000;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn reading(statements: u64) -> Reading {
    Reading {
        statements,
        phase: "shadow",
        ..Reading::default()
    }
}

#[test]
fn the_first_reading_is_only_a_baseline() {
    let mut ring = Ring::new(10, START_MS);
    ring.record(secs(0.0), reading(500));
    assert!(ring.is_empty());
    let v = ring.view();
    assert!(v.t.is_empty());
    assert_eq!(
        v.phases,
        vec![PhaseChange {
            at_unix_ms: START_MS,
            from: None,
            to: "shadow",
            epoch: 0
        }]
    );
}

#[test]
fn rates_are_counter_deltas_over_the_time_between_readings() {
    let mut ring = Ring::new(10, START_MS);
    let mut r = reading(100);
    r.rows_mirrored = 10;
    r.rows_queued = 0;
    r.retry_backlog = 7;
    ring.record(secs(1.0), r.clone());
    r.statements = 400;
    r.rows_mirrored = 60;
    r.rows_queued = 5;
    r.retry_backlog = 3;
    // Two seconds later (a late tick): the rates are per second, not per sample.
    ring.record(secs(3.0), r);
    let v = ring.view();
    assert_eq!(v.t, vec![START_MS + 3000]);
    assert_eq!(v.statements_per_sec, vec![150.0]);
    assert_eq!(v.mirrored_rows_per_sec, vec![25.0]);
    assert_eq!(v.queued_rows_per_sec, vec![2.5]);
    // A gauge is plotted as read.
    assert_eq!(v.retry_backlog, vec![3]);
}

#[test]
fn a_counter_that_went_down_gives_zero_not_a_negative_rate() {
    let mut ring = Ring::new(10, START_MS);
    ring.record(secs(0.0), reading(1000));
    ring.record(secs(1.0), reading(10));
    assert_eq!(ring.view().statements_per_sec, vec![0.0]);
}

#[test]
fn a_reading_at_the_same_instant_is_skipped() {
    let mut ring = Ring::new(10, START_MS);
    ring.record(secs(1.0), reading(0));
    ring.record(secs(1.0), reading(50));
    assert!(ring.is_empty());
    ring.record(secs(2.0), reading(50));
    assert_eq!(ring.view().statements_per_sec, vec![50.0]);
}

#[test]
fn the_ring_keeps_the_newest_samples_only() {
    let mut ring = Ring::new(5, START_MS);
    for i in 0..=20u64 {
        ring.record(secs(i as f64), reading(i * 10));
    }
    assert_eq!(ring.len(), 5);
    let v = ring.view();
    assert_eq!(v.capacity, 5);
    assert_eq!(
        v.t,
        (16..=20).map(|i| START_MS + i * 1000).collect::<Vec<_>>()
    );
    assert!(v.statements_per_sec.iter().all(|r| *r == 10.0));
}

#[test]
fn the_match_rate_is_that_of_the_comparisons_in_the_interval() {
    let mut ring = Ring::new(10, START_MS);
    let with = |agreed, compared| Reading {
        shadow: Some((agreed, compared)),
        ..reading(0)
    };
    ring.record(secs(0.0), with(90, 100));
    // 10 more compared, 8 of them agreed: 80 %, whatever the totals say (98 %).
    ring.record(secs(1.0), with(98, 110));
    // Nothing compared in this interval: no rate rather than a made-up one.
    ring.record(secs(2.0), with(98, 110));
    ring.record(secs(3.0), with(101, 113));
    assert_eq!(ring.view().match_rate, vec![Some(0.8), None, Some(1.0)]);

    // Shadow reads off: no rate at all.
    let mut ring = Ring::new(10, START_MS);
    ring.record(secs(0.0), reading(0));
    ring.record(secs(1.0), reading(0));
    assert_eq!(ring.view().match_rate, vec![None]);
}

#[test]
fn the_backfill_rate_is_taken_between_two_progress_refreshes() {
    let mut ring = Ring::new(10, START_MS);
    let with = |rows, read_at: f64| Reading {
        backfill: Some((rows, secs(read_at))),
        ..reading(0)
    };
    ring.record(secs(0.0), reading(0));
    // The first refresh: nothing to compare with yet.
    ring.record(secs(1.0), with(1000, 0.5));
    // The next refresh five seconds later: 5,000 rows more.
    ring.record(secs(2.0), with(1000, 0.5));
    ring.record(secs(6.0), with(6000, 5.5));
    // Between refreshes the last rate holds (the rows did not stop moving).
    ring.record(secs(7.0), with(6000, 5.5));
    // The backfill finished: the next refresh shows no new rows.
    ring.record(secs(11.0), with(6000, 10.5));
    assert_eq!(
        ring.view().backfill_rows_per_sec,
        vec![None, None, Some(1000.0), Some(1000.0), Some(0.0)]
    );
    // No backfill table (any more): no rate.
    ring.record(secs(12.0), reading(0));
    assert_eq!(ring.view().backfill_rows_per_sec.last(), Some(&None));
}

#[test]
fn phase_changes_are_noted_with_their_time_and_epoch() {
    let mut ring = Ring::new(3, START_MS);
    let at = |phase, epoch| Reading {
        phase,
        epoch,
        ..reading(0)
    };
    ring.record(secs(0.0), at("shadow", 0));
    ring.record(secs(1.0), at("shadow", 0));
    ring.record(secs(2.0), at("reads-new", 1));
    ring.record(secs(3.0), at("writes-new", 2));
    // A rollback to the same phase name is a new epoch: still a change.
    ring.record(secs(4.0), at("reads-new", 3));
    ring.record(secs(5.0), at("reads-new", 3));
    let phases = ring.view().phases;
    let summary: Vec<_> = phases
        .iter()
        .map(|p| (p.at_unix_ms - START_MS, p.from, p.to, p.epoch))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, None, "shadow", 0),
            (2000, Some("shadow"), "reads-new", 1),
            (3000, Some("reads-new"), "writes-new", 2),
            (4000, Some("writes-new"), "reads-new", 3),
        ]
    );
    // The changes outlive the samples' window.
    assert_eq!(ring.len(), 3);
}

#[test]
fn phase_changes_are_bounded_too() {
    let mut ring = Ring::new(3, START_MS);
    for i in 0..(PHASE_CHANGES_MAX as i64 + 50) {
        ring.record(
            secs(i as f64),
            Reading {
                epoch: i,
                ..reading(0)
            },
        );
    }
    let phases = ring.view().phases;
    assert_eq!(phases.len(), PHASE_CHANGES_MAX);
    assert_eq!(
        phases.last().map(|p| p.epoch),
        Some(PHASE_CHANGES_MAX as i64 + 49)
    );
}

#[test]
fn the_view_serialises_as_lined_up_arrays() {
    let mut ring = Ring::new(10, START_MS);
    ring.record(secs(0.0), reading(0));
    ring.record(secs(1.0), reading(3));
    let json = serde_json::to_value(ring.view()).expect("serialises");
    assert_eq!(json["t"], serde_json::json!([START_MS + 1000]));
    assert_eq!(json["statements_per_sec"], serde_json::json!([3.0]));
    assert_eq!(json["match_rate"], serde_json::json!([null]));
    assert_eq!(json["phases"][0]["to"], "shadow");
    assert_eq!(json["phases"][0]["from"], serde_json::Value::Null);
}
