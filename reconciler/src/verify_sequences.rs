//! Sequences in verify and repair. Rows reach the secondary with the ids the primary's
//! sequences handed out, so the secondary's own sequences (serial and identity columns'
//! too) never move: the first insert there after writes move would collide with an id in
//! use. Verify lists every sequence on the side that takes writes next that is behind the
//! other side; repair sets it past, by the margin the cutover's write flip uses.

use crate::connect::{connect, Db};
use crate::report::{SequenceReport, Status};
use anyhow::{Context, Result};
use switchyard_core::cutover::sequences::{advance, lagging, Lagging};
use switchyard_core::cutover::SEQUENCE_MARGIN;
use switchyard_core::ident::QualifiedName;
use tokio_postgres::Client;

/// Which side takes writes next, from the cutover's phase: new until `writes-new` (when
/// the flip would move them there), old during `writes-new` (a rollback moves them back);
/// None once the cutover is `done` (old takes none again).
async fn writes_next(old: &Client, new: &Client) -> Result<Option<Db>> {
    let phase = match read_phase(old).await? {
        Some(p) => Some(p),
        None => read_phase(new).await?,
    };
    Ok(match phase.as_deref() {
        Some("done") => None,
        Some("writes-new") => Some(Db::Old),
        _ => Some(Db::New),
    })
}

async fn read_phase(client: &Client) -> Result<Option<String>> {
    let row = client
        .query_one("SELECT to_regclass('_switchyard.cutover') IS NOT NULL", &[])
        .await
        .context("looking for the cutover's state")?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT phase FROM _switchyard.cutover", &[])
        .await
        .context("reading the cutover's phase")?;
    Ok(row.map(|r| r.get(0)))
}

/// Whether a lagging sequence concerns the verified tables (all of them when none were
/// named): sequences owned by no column count only when every table is verified.
fn selected(l: &Lagging, tables: &[QualifiedName]) -> bool {
    if tables.is_empty() {
        return true;
    }
    l.owner_table.as_ref().is_some_and(|(schema, name)| {
        tables
            .iter()
            .any(|t| &t.schema == schema && &t.name == name)
    })
}

/// What the sequence check found (and repair did).
pub struct Outcome {
    pub sequences: Vec<SequenceReport>,
    /// Why no sequence was compared.
    pub skipped: Option<String>,
}

/// Compares the sequences (those owned by `tables`' columns when tables were named); with
/// `repair` (URLs of old and new) sets every sequence behind on that side past the other
/// side's (sequences never move back, so one not listed is at most moved forward).
pub async fn check(
    old: &Client,
    new: &Client,
    tables: &[QualifiedName],
    repair: Option<(&str, &str)>,
) -> Result<Outcome> {
    let Some(behind_side) = writes_next(old, new).await? else {
        return Ok(Outcome {
            sequences: Vec::new(),
            skipped: Some("the cutover is done: old takes no writes again".into()),
        });
    };
    let (ahead, behind) = match behind_side {
        Db::New => (old, new),
        Db::Old => (new, old),
    };
    let side = match behind_side {
        Db::New => "new",
        Db::Old => "old",
    };
    let found: Vec<Lagging> = lagging(ahead, behind)
        .await
        .with_context(|| format!("comparing the sequences of {side} with the other side's"))?
        .into_iter()
        .filter(|l| selected(l, tables))
        .collect();
    let mut reports: Vec<SequenceReport> = found
        .iter()
        .map(|l| {
            let (next_old, next_new) = match behind_side {
                Db::New => (l.source_next, l.target_next),
                Db::Old => (l.target_next, l.source_next),
            };
            SequenceReport {
                name: l.name.clone(),
                behind: side,
                next_old,
                next_new,
                opposite_direction: l.opposite_direction,
                status: Status::Different,
                repaired_next: None,
            }
        })
        .collect();
    if let (Some((old_url, new_url)), false) = (repair, reports.is_empty()) {
        let (ahead_url, behind_url) = match behind_side {
            Db::New => (old_url, new_url),
            Db::Old => (new_url, old_url),
        };
        let writer = connect(behind_side, behind_url).await?;
        let ahead_side = match behind_side {
            Db::New => Db::Old,
            Db::Old => Db::New,
        };
        let reader = connect(ahead_side, ahead_url).await?;
        let moved = advance(&reader, &writer, SEQUENCE_MARGIN)
            .await
            .with_context(|| format!("advancing the sequences of {side}"))?;
        for r in &mut reports {
            if let Some(m) = moved.iter().find(|m| m.name == r.name) {
                r.repaired_next = m.target_next;
                if m.target_next.is_some() {
                    r.status = Status::Repaired;
                }
            }
        }
    }
    Ok(Outcome {
        sequences: reports,
        skipped: None,
    })
}
