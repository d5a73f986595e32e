//! Pre-flight checks: what must hold before anything waits, shown as a checklist.

use super::flip::{FlipError, FlipRequest};
use super::status::{Instance, State};
use serde::Serialize;
use std::time::Duration;
use tokio_postgres::Client;

/// Instances not seen for this long are gone (crashed or stopped without deregistering):
/// they read the state when they start again. Between the lease and this, an instance may
/// only be stalled, and a flip waits for nobody it cannot hear from.
const GONE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    pub fn push(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.0.push(Check {
            name,
            ok,
            detail: detail.into(),
        });
    }

    pub fn passed(&self) -> bool {
        self.0.iter().all(|c| c.ok)
    }

    /// The failed checks, one per line.
    pub fn failures(&self) -> String {
        self.0
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::fmt::Display for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.0 {
            writeln!(
                f,
                "  [{}] {:<22} {}",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        Ok(())
    }
}

/// Runs the pre-flight checks for `req` against the current state.
pub(super) async fn preflight(
    old: &Client,
    new: Option<&Client>,
    req: &FlipRequest,
    from: &State,
    instances: &[Instance],
) -> Result<Checks, FlipError> {
    let mut checks = Checks::default();
    checks.push(
        "phase available",
        req.to.available(),
        if req.to.available() {
            format!("{} → {}", from.phase, req.to)
        } else {
            format!(
                "{} needs new to be the captured side (writes moved to new), which this \
                 version does not have yet",
                req.to
            )
        },
    );
    let live: Vec<&str> = instances
        .iter()
        .filter(|i| i.live)
        .map(|i| i.id.as_str())
        .collect();
    let stalled: Vec<String> = instances
        .iter()
        .filter(|i| !i.live && i.last_seen_secs < GONE_AFTER.as_secs_f64())
        .map(|i| format!("{} (not heard from for {:.0} s)", i.id, i.last_seen_secs))
        .collect();
    checks.push(
        "instances alive",
        stalled.is_empty(),
        if stalled.is_empty() {
            format!("{} live: {}", live.len(), live.join(", "))
        } else {
            format!("stalled: {}", stalled.join(", "))
        },
    );
    if req.to.any_reads_new(req.percent) {
        // A shape old and new answer differently, confirmed lately by any instance's
        // shadow reads: reads should not move until it is understood (and repaired).
        let recent: Vec<String> = instances
            .iter()
            .filter(|i| i.live)
            .filter_map(|i| {
                i.last_mismatch_secs
                    .filter(|s| *s <= req.mismatch_window.as_secs_f64())
                    .map(|s| format!("{} ({:.0} s ago)", i.id, s))
            })
            .collect();
        checks.push(
            "no recent mismatch",
            recent.is_empty(),
            if recent.is_empty() {
                format!(
                    "no confirmed shadow mismatch in the last {} s",
                    req.mismatch_window.as_secs()
                )
            } else {
                format!(
                    "shadow reads confirmed old and new differ: {} (see /api/mismatches; \
                     switchyard-reconciler verify / repair)",
                    recent.join(", ")
                )
            },
        );
        // New must hold every change before it serves a read.
        let embedded: i64 = old
            .query_one(
                "SELECT CASE WHEN to_regclass('_switchyard.retry_log') IS NULL THEN 0
                 ELSE (SELECT count(*) FROM _switchyard.retry_log) END",
                &[],
            )
            .await?
            .get(0);
        // The table is counted here rather than taken from the instances' heartbeats,
        // which count it only every few seconds.
        let backlog = embedded;
        checks.push(
            "retry backlog empty",
            backlog == 0,
            if backlog == 0 {
                "0 records".to_string()
            } else {
                format!(
                    "{backlog} records not applied on new yet (run switchyard-reconciler replay)"
                )
            },
        );
        match new {
            Some(new) => {
                let n: i64 = new
                    .query_one(
                        "SELECT count(*) FROM pg_prepared_xacts
                         WHERE gid LIKE 'switchyard:%' AND prepared < now() - interval '10 seconds'",
                        &[],
                    )
                    .await?
                    .get(0);
                checks.push(
                    "no in-doubt commits",
                    n == 0,
                    if n == 0 {
                        "no prepared transaction older than 10 s on new".to_string()
                    } else {
                        format!(
                            "{n} prepared transactions on new older than 10 s (run \
                             switchyard-reconciler recover)"
                        )
                    },
                );
            }
            None => checks.push("no in-doubt commits", false, "new database not reachable"),
        }
    }
    Ok(checks)
}
