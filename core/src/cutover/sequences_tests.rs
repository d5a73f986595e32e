//! The arithmetic of moving a sequence past another, and matching them across databases.

use super::*;

fn up(last_value: i64, is_called: bool) -> Position {
    Position {
        last_value,
        is_called,
        increment: 1,
        min: 1,
        max: i64::MAX,
    }
}

fn down(last_value: i64, is_called: bool) -> Position {
    Position {
        last_value,
        is_called,
        increment: -1,
        min: i64::MIN,
        max: -1,
    }
}

/// Where the target must move to pass `source` by `margin` steps (the arithmetic must not
/// refuse).
fn next(source: &Position, target: &Position, margin: i64) -> Option<i64> {
    target_next("s", source, target, margin).unwrap()
}

#[test]
fn ascending_target_moves_past_the_source_by_the_margin() {
    // Source handed out 100, hands out 101 next; 10 more steps of margin.
    assert_eq!(next(&up(100, true), &up(5, true), 10), Some(111));
    assert_eq!(next(&up(100, true), &up(5, true), 0), Some(101));
    // Steps are the target's increment.
    let by5 = Position {
        increment: 5,
        ..up(1, false)
    };
    let src = Position {
        increment: 5,
        ..up(96, true)
    };
    assert_eq!(next(&src, &by5, 2), Some(111));
    // A negative margin is no margin.
    assert_eq!(next(&up(100, true), &up(5, true), -7), Some(101));
}

#[test]
fn descending_target_moves_below_the_source() {
    assert_eq!(next(&down(-100, true), &down(-5, true), 10), Some(-111));
    assert_eq!(next(&down(-100, true), &down(-101, false), 0), None);
    assert_eq!(
        next(&down(-100, true), &down(-101, true), 0),
        None,
        "hands out -102 next, below -101"
    );
}

#[test]
fn never_called_sequences_count_from_their_next_value() {
    // Neither handed out anything: both hand out 1 next.
    assert_eq!(next(&up(1, false), &up(1, false), 0), None);
    assert_eq!(next(&up(1, false), &up(1, false), 5), Some(6));
    // Restarted at 1000 on the source (is_called false): the target must not hand
    // out anything below 1000.
    assert_eq!(next(&up(1000, false), &up(40, true), 0), Some(1000));
    // A never-called target holding a next value past the source's stays.
    assert_eq!(next(&up(7, true), &up(8, false), 0), None);
}

#[test]
fn a_target_already_ahead_stays() {
    assert_eq!(next(&up(100, true), &up(500, true), 10), None);
    assert_eq!(next(&up(100, true), &up(110, true), 10), None);
    assert_eq!(next(&up(100, true), &up(109, true), 10), Some(111));
}

#[test]
fn passing_a_bound_names_the_sequence() {
    let small = Position {
        max: 105,
        ..up(5, true)
    };
    let e = target_next("app.t_id_seq", &up(100, true), &small, 10).unwrap_err();
    assert!(
        matches!(&e, SequenceError::Exhausted { name, needed: 111, bound: "MAXVALUE", limit: 105 } if name == "app.t_id_seq"),
        "{e:?}"
    );
    assert!(e.to_string().contains("app.t_id_seq"), "{e}");
    // A used-up source (its last value is i64::MAX): nothing on the target is past it.
    let e = target_next("s", &up(i64::MAX, true), &up(1, true), 0).unwrap_err();
    assert!(matches!(e, SequenceError::Exhausted { .. }), "{e:?}");
    let floor = Position {
        min: -50,
        ..down(-5, true)
    };
    let e = target_next("d", &down(-100, true), &floor, 0).unwrap_err();
    assert!(matches!(
        e,
        SequenceError::Exhausted {
            bound: "MINVALUE",
            limit: -50,
            ..
        }
    ));
}

#[test]
fn opposite_directions_are_refused() {
    let e = target_next("s", &up(1, true), &down(-1, true), 0).unwrap_err();
    assert!(matches!(e, SequenceError::Direction { .. }), "{e:?}");
}

fn seq(name: &str, owner: Option<&str>) -> Seq {
    let (schema, rel) = name.split_once('.').unwrap_or(("public", name));
    Seq {
        oid: 0,
        key: (schema.into(), rel.into()),
        name: name.into(),
        quoted: String::new(),
        owner: owner.map(str::to_string),
        owner_table: None,
        increment: 1,
        min: 1,
        max: i64::MAX,
    }
}

#[test]
fn counterparts_match_by_name_then_by_owning_column() {
    let source = [
        seq("public.a", None),
        seq("public.t_id_seq", Some("public.t.id")),
        seq("public.gone", None),
    ];
    let target = [
        seq("public.t_id_seq1", Some("public.t.id")),
        seq("public.a", None),
    ];
    assert_eq!(counterparts(&source, &target), vec![Some(1), Some(0), None]);
}

#[test]
fn names_with_dots_match_only_their_own_schema() {
    let mut dotted_schema = seq("x", None);
    dotted_schema.key = ("a.b".into(), "c".into());
    let mut dotted_name = seq("x", None);
    dotted_name.key = ("a".into(), "b.c".into());
    assert_eq!(counterparts(&[dotted_schema], &[dotted_name]), vec![None]);
}
