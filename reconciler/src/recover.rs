//! `recover`: finishes prepared transactions a proxy left behind, in both directions:
//! forward ones (`switchyard:<old xid>`) prepared on new, as old's commit status of each
//! says, and reverse ones (`switchyard:n:<new xid>`, the cutover's `writes-new` phase)
//! prepared on old, as new's says.

use crate::config::ReconcilerConfig;
use crate::connect::{connect, Db};
use anyhow::{Context, Result};
use std::time::Duration;
use switchyard_core::direction::Direction;
use switchyard_core::recover::{resolve_in_doubt_dir, BothDirections};

pub async fn run(cfg: &ReconcilerConfig, min_age: Duration) -> Result<BothDirections> {
    let old = connect(Db::Old, &cfg.old).await?;
    let new = connect(Db::New, &cfg.new).await?;
    let mut out = BothDirections::default();
    for d in Direction::BOTH {
        let (primary, secondary) = match d {
            Direction::OldToNew => (&old, &new),
            Direction::NewToOld => (&new, &old),
        };
        let r = resolve_in_doubt_dir(d, primary, secondary, min_age)
            .await
            .with_context(|| format!("resolving in-doubt transactions {d}"))?;
        match d {
            Direction::OldToNew => out.old_to_new = r,
            Direction::NewToOld => out.new_to_old = r,
        }
    }
    Ok(out)
}

/// The run for people: the totals, then one line per transaction with its direction.
pub fn human(r: &BothDirections) -> String {
    let t = r.total();
    let mut out = format!(
        "committed {}, rolled back {}, still pending {}, unknown {}",
        t.committed.len(),
        t.rolled_back.len(),
        t.pending.len(),
        t.unknown.len()
    );
    for d in Direction::BOTH {
        let one = r.get(d);
        let lists = [
            ("committed", &one.committed),
            ("rolled back", &one.rolled_back),
            ("still pending", &one.pending),
            ("unknown", &one.unknown),
        ];
        for (what, gids) in lists {
            for gid in gids {
                out.push_str(&format!(
                    "\n  {gid}: {what} ({d}: prepared on {}, decided by {})",
                    d.secondary(),
                    d.primary()
                ));
            }
        }
    }
    out
}

/// The run as JSON: the totals as before directions existed (every gid), and each
/// direction's own lists.
pub fn json(r: &BothDirections) -> serde_json::Value {
    let mut v = serde_json::to_value(r.total()).unwrap_or_default();
    let directions: serde_json::Map<String, serde_json::Value> = Direction::BOTH
        .iter()
        .map(|d| {
            (
                d.as_str().to_string(),
                serde_json::to_value(r.get(*d)).unwrap_or_default(),
            )
        })
        .collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("directions".into(), directions.into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::recover::RecoverReport;

    #[test]
    fn each_gid_is_reported_with_its_direction() {
        let r = BothDirections {
            old_to_new: RecoverReport {
                rolled_back: vec!["switchyard:9".into()],
                ..Default::default()
            },
            new_to_old: RecoverReport {
                committed: vec!["switchyard:n:7".into()],
                ..Default::default()
            },
        };
        let text = human(&r);
        assert!(
            text.starts_with("committed 1, rolled back 1, still pending 0, unknown 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "switchyard:n:7: committed (new-to-old: prepared on old, decided by new)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "switchyard:9: rolled back (old-to-new: prepared on new, decided by old)"
            ),
            "{text}"
        );
        let j = json(&r);
        assert_eq!(j["committed"], serde_json::json!(["switchyard:n:7"]));
        assert_eq!(
            j["directions"]["new-to-old"]["committed"],
            serde_json::json!(["switchyard:n:7"])
        );
        assert_eq!(
            j["directions"]["old-to-new"]["rolled_back"],
            serde_json::json!(["switchyard:9"])
        );
    }
}
