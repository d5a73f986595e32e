//! Sequences across the write flip. While old takes the writes, rows reach new with the ids
//! old's sequences handed out, so new's own sequences (serial and identity columns' too)
//! never move. Before new takes writes its sequences must be set past old's, and before
//! old takes them back, old's past new's: otherwise the first insert on the other side
//! collides with (or, without a unique key, duplicates) an id already used.
//!
//! Positions are read from the sequences themselves (`last_value`, `is_called`), never
//! from `MAX(id)`: a sequence may have handed out values whose rows were rolled back or
//! deleted, and reusing them breaks whoever kept them.

use super::pg_error;
use crate::ident::quote_ident;
use serde::Serialize;
use std::collections::HashMap;
use tokio_postgres::Client;

/// Sequences per statement when reading positions (one `SELECT` per sequence, joined by
/// `UNION ALL`): a database may have thousands, one round trip each would be slow.
const READ_BATCH: usize = 500;

/// Attempts at setting the target when one of its sequences moved between the read and
/// the set (something hands out values there).
const SET_ROUNDS: usize = 3;

/// Schemas whose sequences are not the application's.
const SKIPPED_SCHEMAS: &str = "('pg_catalog', 'information_schema', '_switchyard')";

#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    #[error("{what}: {}", pg_error(.source))]
    Db {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "sequence {name}: the target would have to hand out {needed} next, beyond its \
         {bound} {limit} (widen it with ALTER SEQUENCE ... {bound} on the target, or use a \
         smaller margin)"
    )]
    Exhausted {
        name: String,
        needed: i128,
        bound: &'static str,
        limit: i64,
    },
    #[error(
        "sequence {name} counts {source_direction} on the source and {target_direction} on \
         the target: make the target's INCREMENT match"
    )]
    Direction {
        name: String,
        source_direction: &'static str,
        target_direction: &'static str,
    },
    #[error(
        "sequences kept moving on the target while being set (something hands out values \
         there): {}",
        .0.join(", ")
    )]
    Moving(Vec<String>),
    /// A sequence relation holds exactly one row; reading none means the relation is not
    /// what the catalog says.
    #[error("sequence {0} returned no row")]
    NoRow(String),
}

fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SequenceError {
    let what = what.into();
    move |source| SequenceError::Db { what, source }
}

/// One source sequence and what [`advance`] did with its counterpart on the target.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SequenceMove {
    /// `schema.name` on the source.
    pub name: String,
    /// Its counterpart on the target: the sequence of the same name, else the one owned by
    /// the same column (a serial or identity column's sequence named differently). None
    /// when the target has neither.
    pub target_name: Option<String>,
    /// The last value the source handed out; None when it has not handed out any since it
    /// was created or restarted.
    pub source_value: Option<i64>,
    /// The same on the target, before this call.
    pub target_before: Option<i64>,
    /// What `nextval` on the target returns now; None when the sequence is missing there
    /// (or used up).
    pub target_next: Option<i64>,
    /// Whether this call set the target's sequence.
    pub moved: bool,
    /// Nothing to set: the target has no such sequence (its schema differs from the
    /// source's, which the schema check reports).
    pub missing_on_target: bool,
}

/// Where a sequence stands: the contents of its relation and its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    last_value: i64,
    is_called: bool,
    increment: i64,
    min: i64,
    max: i64,
}

impl Position {
    /// The value `nextval` returns next; one step beyond a bound when the sequence is used
    /// up (hence i128).
    fn next(&self) -> i128 {
        if self.is_called {
            self.last_value as i128 + self.increment as i128
        } else {
            self.last_value as i128
        }
    }

    fn handed_out(&self) -> Option<i64> {
        self.is_called.then_some(self.last_value)
    }

    fn direction(&self) -> &'static str {
        if self.increment > 0 {
            "up"
        } else {
            "down"
        }
    }
}

/// The value the target must hand out next so that it is `margin` of its increments past
/// the source's next value; None when it already is at least that far.
fn target_next(
    name: &str,
    source: &Position,
    target: &Position,
    margin: i64,
) -> Result<Option<i64>, SequenceError> {
    if (source.increment > 0) != (target.increment > 0) {
        return Err(SequenceError::Direction {
            name: name.to_string(),
            source_direction: source.direction(),
            target_direction: target.direction(),
        });
    }
    let step = (target.increment as i128).abs() * margin.max(0) as i128;
    let (needed, past, bound, limit) = if target.increment > 0 {
        let needed = source.next() + step;
        (needed, target.next() >= needed, "MAXVALUE", target.max)
    } else {
        let needed = source.next() - step;
        (needed, target.next() <= needed, "MINVALUE", target.min)
    };
    if past {
        return Ok(None);
    }
    let beyond = if target.increment > 0 {
        needed > limit as i128
    } else {
        needed < limit as i128
    };
    if beyond {
        return Err(SequenceError::Exhausted {
            name: name.to_string(),
            needed,
            bound,
            limit,
        });
    }
    // Within [min, max] by the checks above, which are within i64.
    Ok(Some(needed as i64))
}

/// A sequence as the catalog describes it.
#[derive(Debug, Clone)]
struct Seq {
    oid: u32,
    /// Schema and name, for matching.
    key: (String, String),
    /// `schema.name`, for people.
    name: String,
    /// `"schema"."name"`, for SQL.
    quoted: String,
    /// `schema.table.column` of the serial or identity column owning it.
    owner: Option<String>,
    /// Schema and name of that column's table.
    owner_table: Option<(String, String)>,
    increment: i64,
    min: i64,
    max: i64,
}

async fn catalog(client: &Client, side: &str) -> Result<Vec<Seq>, SequenceError> {
    // Temporary sequences belong to other sessions, which alone can read them.
    let sql = format!(
        "SELECT c.oid, n.nspname, c.relname, s.seqincrement, s.seqmin, s.seqmax, o.owner,
                o.owner_schema, o.owner_table
         FROM pg_sequence s
         JOIN pg_class c ON c.oid = s.seqrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN LATERAL (
             SELECT format('%I.%I.%I', tn.nspname, t.relname, a.attname) AS owner,
                    tn.nspname AS owner_schema, t.relname AS owner_table
             FROM pg_depend d
             JOIN pg_class t ON t.oid = d.refobjid
             JOIN pg_namespace tn ON tn.oid = t.relnamespace
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             LIMIT 1
         ) o ON true
         WHERE n.nspname NOT IN {SKIPPED_SCHEMAS} AND c.relpersistence <> 't'
         ORDER BY n.nspname, c.relname"
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(db(format!("listing the sequences of the {side}")))?;
    Ok(rows
        .iter()
        .map(|r| {
            let schema: String = r.get(1);
            let name: String = r.get(2);
            Seq {
                oid: r.get(0),
                quoted: format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
                name: format!("{schema}.{name}"),
                key: (schema, name),
                owner: r.get(6),
                owner_table: r
                    .get::<_, Option<String>>(7)
                    .zip(r.get::<_, Option<String>>(8)),
                increment: r.get(3),
                min: r.get(4),
                max: r.get(5),
            }
        })
        .collect())
}

/// Reads each sequence's relation (`pg_sequence_last_value` alone cannot tell a sequence
/// never called from one restarted or set with `is_called = false`), in batches.
async fn positions(
    client: &Client,
    seqs: &[&Seq],
    side: &str,
) -> Result<Vec<Position>, SequenceError> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(READ_BATCH) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| format!("SELECT {i}, last_value, is_called FROM {}", s.quoted))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(db(format!("reading the sequences of the {side}")))?;
        let mut read: Vec<Option<(i64, bool)>> = vec![None; chunk.len()];
        for r in &rows {
            let i: i32 = r.get(0);
            if let Some(slot) = read.get_mut(i as usize) {
                *slot = Some((r.get(1), r.get(2)));
            }
        }
        for (s, r) in chunk.iter().zip(read) {
            let (last_value, is_called) = r.ok_or_else(|| SequenceError::NoRow(s.name.clone()))?;
            out.push(Position {
                last_value,
                is_called,
                increment: s.increment,
                min: s.min,
                max: s.max,
            });
        }
    }
    Ok(out)
}

/// For each source sequence, its counterpart's index on the target: same name first, then
/// the sequence owned by the same column.
fn counterparts(source: &[Seq], target: &[Seq]) -> Vec<Option<usize>> {
    let by_name: HashMap<&(String, String), usize> = target
        .iter()
        .enumerate()
        .map(|(i, s)| (&s.key, i))
        .collect();
    let by_owner: HashMap<&str, usize> = target
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.owner.as_deref().map(|o| (o, i)))
        .collect();
    source
        .iter()
        .map(|s| {
            by_name
                .get(&s.key)
                .copied()
                .or_else(|| s.owner.as_deref().and_then(|o| by_owner.get(o).copied()))
        })
        .collect()
}

/// Both sides' sequences, the source's positions, and each one's counterpart.
struct Sides {
    source: Vec<Seq>,
    source_pos: Vec<Position>,
    target: Vec<Seq>,
    matched: Vec<Option<usize>>,
}

async fn read_sides(source: &Client, target: &Client) -> Result<Sides, SequenceError> {
    let src = catalog(source, "source").await?;
    let tgt = catalog(target, "target").await?;
    let source_pos = positions(source, &src.iter().collect::<Vec<_>>(), "source").await?;
    let matched = counterparts(&src, &tgt);
    Ok(Sides {
        source: src,
        source_pos,
        target: tgt,
        matched,
    })
}

/// Sets every sequence of `target` so that its next value is `margin` increments past the
/// next value of the same sequence on `source` (negative margins count as 0), unless it
/// already is at least that far; sequences never move back. Call it with old as the source
/// before new takes writes, and with new as the source before old takes them back.
///
/// Covers every sequence outside `pg_catalog`, `information_schema` and `_switchyard`,
/// matched by schema-qualified name, else by the column owning it. A sequence the target
/// lacks is reported (`missing_on_target`), not an error. Reads each side's positions in a
/// few statements and sets the target's in one; run it while nothing hands out values on
/// the target (a sequence that moves there between the read and the set is read again).
///
/// Needs SELECT on the source's sequences and SELECT and UPDATE on the target's. Errors
/// name the sequence that cannot be set: past its MAXVALUE (MINVALUE counting down), or
/// counting the other way on the target.
pub async fn advance(
    source: &Client,
    target: &Client,
    margin: i64,
) -> Result<Vec<SequenceMove>, SequenceError> {
    let sides = read_sides(source, target).await?;
    let mut moves: Vec<SequenceMove> = sides
        .source
        .iter()
        .zip(&sides.source_pos)
        .zip(&sides.matched)
        .map(|((s, p), m)| SequenceMove {
            name: s.name.clone(),
            target_name: m.map(|t| sides.target[t].name.clone()),
            source_value: p.handed_out(),
            target_before: None,
            target_next: None,
            moved: false,
            missing_on_target: m.is_none(),
        })
        .collect();
    // Source indexes whose target is still to be read (and maybe set).
    let mut pending: Vec<usize> = (0..sides.source.len())
        .filter(|i| sides.matched[*i].is_some())
        .collect();
    for round in 0..SET_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let targets: Vec<&Seq> = pending
            .iter()
            .filter_map(|i| sides.matched[*i].map(|t| &sides.target[t]))
            .collect();
        let target_pos = positions(target, &targets, "target").await?;
        let (mut oids, mut values, mut seen, mut set_for) = (vec![], vec![], vec![], vec![]);
        for ((&i, t), tp) in pending.iter().zip(&targets).zip(&target_pos) {
            let mv = &mut moves[i];
            if round == 0 {
                mv.target_before = tp.handed_out();
            }
            match target_next(&sides.source[i].name, &sides.source_pos[i], tp, margin)? {
                None => mv.target_next = i64::try_from(tp.next()).ok(),
                Some(v) => {
                    oids.push(t.oid);
                    values.push(v);
                    seen.push(tp.handed_out());
                    set_for.push(i);
                }
            }
        }
        if oids.is_empty() {
            pending.clear();
            break;
        }
        // Set only where the sequence still holds what was read: setval is not
        // transactional, and a value handed out meanwhile must not be handed out again.
        let rows = target
            .query(
                "SELECT u.o, setval(u.o::regclass, u.v, false)
                 FROM unnest($1::oid[], $2::int8[], $3::int8[]) AS u(o, v, seen)
                 WHERE pg_sequence_last_value(u.o::regclass) IS NOT DISTINCT FROM u.seen",
                &[&oids, &values, &seen],
            )
            .await
            .map_err(db("setting the sequences of the target"))?;
        let set: HashMap<u32, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        pending.clear();
        for (i, oid) in set_for.into_iter().zip(oids) {
            match set.get(&oid) {
                Some(v) => {
                    moves[i].moved = true;
                    moves[i].target_next = Some(*v);
                }
                None => pending.push(i),
            }
        }
    }
    if !pending.is_empty() {
        return Err(SequenceError::Moving(
            pending
                .iter()
                .map(|i| sides.source[*i].name.clone())
                .collect(),
        ));
    }
    Ok(moves)
}

/// A sequence whose next value on the target comes before the source's next value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Lagging {
    /// `schema.name` on the source.
    pub name: String,
    /// Its counterpart on the target.
    pub target_name: String,
    /// Schema and name of the table whose serial or identity column owns it (on the source).
    pub owner_table: Option<(String, String)>,
    /// What `nextval` returns next on each side (None: used up).
    pub source_next: Option<i64>,
    pub target_next: Option<i64>,
    /// The target counts the other way: no value of its can be set to fix it.
    pub opposite_direction: bool,
}

/// The sequences whose next value on the target comes before the source's next value
/// (below it counting up, above it counting down): the target would hand out values the
/// source already did. [`advance`] with any margin leaves none. Sequences counting the
/// other way on the target are listed too; sequences missing on the target are not (see
/// [`advance`]).
pub async fn lagging(source: &Client, target: &Client) -> Result<Vec<Lagging>, SequenceError> {
    let sides = read_sides(source, target).await?;
    let pairs: Vec<(usize, usize)> = sides
        .matched
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.map(|t| (i, t)))
        .collect();
    let targets: Vec<&Seq> = pairs.iter().map(|(_, t)| &sides.target[*t]).collect();
    let target_pos = positions(target, &targets, "target").await?;
    Ok(pairs
        .iter()
        .zip(&target_pos)
        .filter_map(|((i, t), tp)| {
            let name = &sides.source[*i].name;
            let sp = &sides.source_pos[*i];
            let verdict = target_next(name, sp, tp, 0);
            if matches!(verdict, Ok(None)) {
                return None;
            }
            Some(Lagging {
                name: name.clone(),
                target_name: sides.target[*t].name.clone(),
                owner_table: sides.source[*i].owner_table.clone(),
                source_next: i64::try_from(sp.next()).ok(),
                target_next: i64::try_from(tp.next()).ok(),
                opposite_direction: matches!(verdict, Err(SequenceError::Direction { .. })),
            })
        })
        .collect())
}

/// Names of the [`lagging`] sequences: the check to run once writes are paused, right
/// before they move to the target; empty means the target's sequences cannot collide with
/// a value the source used.
pub async fn behind(source: &Client, target: &Client) -> Result<Vec<String>, SequenceError> {
    Ok(lagging(source, target)
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect())
}

#[cfg(test)]
#[path = "sequences_tests.rs"]
mod tests;
