//! The offset rule and the origin lookups of [`super::Backlog`].

use super::*;

const F: Direction = Direction::OldToNew;

fn rec(partition: i32, offset: i64, xid: Option<&str>) -> Taken {
    Taken {
        partition,
        offset,
        created_ms: Some(offset),
        key: None,
        payload: Vec::new(),
        xid: xid.map(str::to_string),
        direction: F,
        record: Ok(Pending {
            kind: "row".into(),
            table: Some("\"public\".\"t\"".into()),
            key: Some(format!("{{\"id\": {offset}}}")),
            statement: None,
            idempotency_key: format!("k{partition}-{offset}"),
        }),
    }
}

fn status(pairs: &[(&str, XactStatus)]) -> HashMap<String, XactStatus> {
    pairs.iter().map(|(x, s)| (x.to_string(), *s)).collect()
}

fn offsets(ready: Vec<&Taken>) -> Vec<(i32, i64)> {
    ready.iter().map(|t| (t.partition, t.offset)).collect()
}

#[test]
fn a_running_origin_holds_its_partitions_offset_and_nothing_else() {
    let mut b = Backlog::default();
    let now = Instant::now();
    let without = b.add(vec![
        rec(0, 10, Some("100")),
        rec(0, 11, Some("101")),
        rec(0, 12, None),
        rec(1, 5, Some("101")),
    ]);
    assert_eq!(without, 1);
    assert_eq!(b.due(now, F), vec!["100".to_string(), "101".to_string()]);
    let dropped = b.resolve(
        F,
        &status(&[
            ("100", XactStatus::InProgress),
            ("101", XactStatus::Committed),
        ]),
        now,
    );
    assert_eq!(dropped, 0);
    // Behind the waiting record, its partition's others are applied all the same.
    assert_eq!(offsets(b.ready()), vec![(0, 11), (0, 12), (1, 5)]);
    b.finish_ready();
    assert_eq!(b.committable(), BTreeMap::from([(1, 6)]));
    assert_eq!(b.waiting(), 1);
    assert!(b.only_waiting());
    // Once the origin commits, the whole partition can be committed.
    let later = now + FIRST_RECHECK;
    assert_eq!(b.due(later, F), vec!["100".to_string()]);
    b.resolve(F, &status(&[("100", XactStatus::Committed)]), later);
    assert_eq!(offsets(b.ready()), vec![(0, 10)]);
    b.finish_ready();
    assert_eq!(b.committable(), BTreeMap::from([(0, 13)]));
    assert!(b.is_empty());
}

#[test]
fn rolled_back_origins_are_dropped_and_their_offsets_committed() {
    let mut b = Backlog::default();
    let now = Instant::now();
    b.add(vec![rec(2, 0, Some("7")), rec(2, 1, Some("8"))]);
    let dropped = b.resolve(
        F,
        &status(&[("7", XactStatus::Aborted), ("8", XactStatus::Forgotten)]),
        now,
    );
    assert_eq!(dropped, 1);
    assert_eq!(offsets(b.ready()), vec![(2, 1)]);
    b.finish_ready();
    assert_eq!(b.committable(), BTreeMap::from([(2, 2)]));
}

#[test]
fn lookups_back_off_from_100_ms_to_1_s() {
    let mut b = Backlog::default();
    let mut now = Instant::now();
    b.add(vec![rec(0, 0, Some("9"))]);
    let running = status(&[("9", XactStatus::InProgress)]);
    let mut pauses = Vec::new();
    for _ in 0..6 {
        assert_eq!(b.due(now, F).len(), 1);
        b.resolve(F, &running, now);
        let next = b.next_due().expect("waiting");
        pauses.push(next - now);
        assert!(b.due(now, F).is_empty(), "not due before its pause is over");
        now = next;
    }
    let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
    let w = b.longest_wait(now).expect("waiting");
    assert_eq!((w.xid.as_str(), w.partition, w.offset), ("9", 0, 0));
    assert_eq!(w.waited.as_millis(), 3500);
}

#[test]
fn a_failed_lookup_postpones_the_next() {
    let mut b = Backlog::default();
    let now = Instant::now();
    b.add(vec![rec(0, 0, Some("9"))]);
    b.postpone(now + LONGEST_RECHECK);
    assert!(b.due(now, F).is_empty());
    assert_eq!(b.next_due(), Some(now + LONGEST_RECHECK));
    assert_eq!(b.due(now + LONGEST_RECHECK, F).len(), 1);
}

#[test]
fn a_partition_read_again_or_moved_away_is_forgotten() {
    let mut b = Backlog::default();
    let now = Instant::now();
    b.add(vec![
        rec(0, 4, Some("1")),
        rec(0, 5, Some("1")),
        rec(1, 0, None),
    ]);
    b.resolve(F, &status(&[("1", XactStatus::InProgress)]), now);
    // Delivered again from the committed offset after a rebalance.
    b.add(vec![rec(0, 4, Some("1"))]);
    assert_eq!(b.waiting(), 0);
    assert_eq!(b.due(now, F), vec!["1".to_string()]);
    b.retain(&BTreeSet::from([0]));
    assert!(b.ready().is_empty(), "partition 1 moved away");
}

#[test]
fn waiting_partitions_pause_once_they_hold_enough() {
    let mut b = Backlog::default();
    let now = Instant::now();
    b.add(vec![rec(0, 0, Some("1")), rec(0, 1, None), rec(1, 0, None)]);
    b.resolve(F, &status(&[("1", XactStatus::InProgress)]), now);
    assert_eq!(b.to_pause(2), BTreeSet::from([0]));
    assert!(b.to_pause(3).is_empty());
    b.finish_ready();
    b.committable();
    assert_eq!(b.to_pause(1), BTreeSet::from([0]));
}

#[test]
fn records_that_are_not_retry_records_go_straight_to_apply() {
    let mut b = Backlog::default();
    let mut bad = rec(0, 0, None);
    bad.record = Err("not a retry record".into());
    assert_eq!(b.add(vec![bad]), 0);
    assert_eq!(b.ready().len(), 1);
}

/// The same transaction id on old and on new is two transactions: each record is resolved
/// by its own direction's primary only.
#[test]
fn origins_are_looked_up_and_resolved_per_direction() {
    let mut b = Backlog::default();
    let now = Instant::now();
    let mut reverse = rec(0, 1, Some("7"));
    reverse.direction = Direction::NewToOld;
    b.add(vec![rec(0, 0, Some("7")), reverse]);
    assert_eq!(b.due(now, F), vec!["7".to_string()]);
    assert_eq!(b.due(now, Direction::NewToOld), vec!["7".to_string()]);
    // Old's transaction 7 rolled back: only the old-to-new record is dropped.
    assert_eq!(b.resolve(F, &status(&[("7", XactStatus::Aborted)]), now), 1);
    assert!(b.ready().is_empty());
    assert_eq!(b.due(now, F), Vec::<String>::new());
    let dropped = b.resolve(
        Direction::NewToOld,
        &status(&[("7", XactStatus::InProgress)]),
        now,
    );
    assert_eq!(dropped, 0);
    let w = b.longest_wait(now).expect("the new-to-old record waits");
    assert_eq!((w.direction, w.offset), (Direction::NewToOld, 1));
    let later = now + FIRST_RECHECK;
    b.resolve(
        Direction::NewToOld,
        &status(&[("7", XactStatus::Committed)]),
        later,
    );
    assert_eq!(offsets(b.ready()), vec![(0, 1)]);
}
