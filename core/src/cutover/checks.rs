//! Pre-flight checks: what must hold before anything waits, shown as a checklist.

use super::request::{FlipError, FlipRequest};
use super::status::{Instance, State};
use super::verdict::Checks;
use crate::catalog::count_if_exist;
use std::time::Duration;
use tokio_postgres::Client;

/// Instances not seen for this long are gone (crashed or stopped without deregistering):
/// they read the state when they start again. Between the lease and this, an instance may
/// only be stalled, and a flip waits for nobody it cannot hear from.
const GONE_AFTER: Duration = Duration::from_secs(60);

/// The checklist of the next phase forward (shadow and canary: reads-new; reads-new:
/// writes-new; writes-new: done), as a dry run would show it, for the status and the
/// dashboard. None once done. Reads only: nothing is proposed or withdrawn.
pub async fn next_checklist(
    old: &Client,
    new: Option<&Client>,
    lease: std::time::Duration,
    mismatch_window: std::time::Duration,
    lockstep: bool,
    kafka: Option<crate::retry_kafka::KafkaSettings>,
) -> Result<Option<(super::Phase, Checks)>, FlipError> {
    use super::Phase;
    let from = super::status::state(old).await?;
    let to = match from.phase {
        Phase::Shadow | Phase::Canary => Phase::ReadsNew,
        Phase::ReadsNew => Phase::WritesNew,
        Phase::WritesNew => Phase::Done,
        Phase::Done => return Ok(None),
    };
    let req = FlipRequest {
        to,
        percent: 0,
        by: String::new(),
        dry_run: true,
        timeout: lease,
        lease,
        mismatch_window,
        require_warm: false,
        lockstep,
        kafka,
    };
    let instances = super::status::instances(old, lease).await?;
    Ok(Some((
        to,
        preflight(old, new, &req, &from, &instances).await?,
    )))
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
    let after_writes_new = req.to != super::Phase::Done || from.phase == super::Phase::WritesNew;
    checks.push(
        "phase available",
        req.to.available() && after_writes_new,
        if after_writes_new {
            format!("{} → {}", from.phase, req.to)
        } else {
            format!(
                "done follows writes-new (new the primary, old still equal); the flag is at {}",
                from.phase
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
    }
    let moves_writes = from.phase.direction() != req.to.direction();
    if req.to.any_reads_new(req.percent) || moves_writes {
        backlog_and_in_doubt(old, new, req.kafka.as_ref(), &mut checks).await?;
        if let Some(new) = new {
            warm(old, new, req, &mut checks).await;
        }
    }
    if moves_writes {
        write_flip(old, new, req, &mut checks).await?;
    }
    Ok(checks)
}

/// Rows of `table` on `c`, 0 where it does not exist (yet).
async fn count_if_exists(c: &Client, table: &str, filter: &str) -> Result<i64, FlipError> {
    let sql = format!("SELECT count(*) FROM {table} {filter}");
    Ok(count_if_exist(c, &[table], &sql, &[]).await?)
}

/// Every change the secondary missed must be applied before reads move to it or the
/// primary changes: retry logs (old's while old is the primary, new's while new is) and
/// prepared transactions left in doubt on either side.
async fn backlog_and_in_doubt(
    old: &Client,
    new: Option<&Client>,
    kafka: Option<&crate::retry_kafka::KafkaSettings>,
    checks: &mut Checks,
) -> Result<(), FlipError> {
    // Counted here rather than taken from the instances' heartbeats, which count it only
    // every few seconds.
    let mut backlog = count_if_exists(old, "_switchyard.retry_log", "").await?;
    if let Some(new) = new {
        backlog += count_if_exists(new, "_switchyard.retry_log", "").await?;
    }
    let in_kafka = match kafka {
        Some(k) => Some(
            super::kafka_backlog::kafka_backlog(k)
                .await
                .map(|n| (n, &k.topic)),
        ),
        None => None,
    };
    let (ok, detail) = match in_kafka {
        Some(Err(e)) => (
            false,
            format!("{backlog} records in the tables; Kafka: {e}"),
        ),
        Some(Ok((n, topic))) => (
            backlog + n == 0,
            format!("{backlog} records in the tables, {n} in Kafka topic {topic} not replayed"),
        ),
        None => (backlog == 0, format!("{backlog} records")),
    };
    checks.push(
        "retry backlog empty",
        ok,
        if ok {
            detail
        } else {
            format!("{detail}: not applied on the secondary yet (run switchyard-reconciler replay)")
        },
    );
    let Some(new) = new else {
        checks.push("no in-doubt commits", false, "new database not reachable");
        return Ok(());
    };
    let older = "WHERE gid LIKE 'switchyard:%' AND prepared < now() - interval '10 seconds'";
    let on_new = count_if_exists(new, "pg_prepared_xacts", older).await?;
    let on_old = count_if_exists(old, "pg_prepared_xacts", older).await?;
    checks.push(
        "no in-doubt commits",
        on_new + on_old == 0,
        if on_new + on_old == 0 {
            "no prepared transaction older than 10 s".to_string()
        } else {
            format!(
                "prepared transactions older than 10 s: {on_new} on new, {on_old} on old (run \
                 switchyard-reconciler recover)"
            )
        },
    );
    Ok(())
}

/// What must hold before writes move from one database to the other: the side that becomes
/// the secondary can take two-phase commits and applies without firing triggers of its own,
/// and no write made outside the proxy waits in the current primary's change log.
async fn write_flip(
    old: &Client,
    new: Option<&Client>,
    req: &FlipRequest,
    checks: &mut Checks,
) -> Result<(), FlipError> {
    let Some(new) = new else {
        checks.push(
            "new reachable",
            false,
            "moving writes needs the new database",
        );
        return Ok(());
    };
    let to_new = req.to.direction() == crate::direction::Direction::NewToOld;
    let (primary, secondary, secondary_name) = if to_new {
        (new, old, "old")
    } else {
        (old, new, "new")
    };
    let prepared: i32 = secondary
        .query_one(
            "SELECT current_setting('max_prepared_transactions')::int",
            &[],
        )
        .await?
        .get(0);
    checks.push(
        "secondary two-phase",
        prepared > 0 || req.lockstep,
        if prepared > 0 {
            format!("{secondary_name} has max_prepared_transactions = {prepared}")
        } else if req.lockstep {
            format!("{secondary_name} has max_prepared_transactions = 0; lockstep mode needs none")
        } else {
            format!(
                "{secondary_name} has max_prepared_transactions = 0 and cannot follow in \
                 lockstep; set it (e.g. to max_connections) and restart it"
            )
        },
    );
    let always: Vec<String> = secondary
        .query(
            "SELECT format('%s on %s', quote_ident(t.tgname), t.tgrelid::regclass) FROM pg_trigger t
             WHERE t.tgenabled = 'A' AND NOT t.tgisinternal
               AND t.tgname NOT LIKE 'switchyard\\_capture\\_%' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    checks.push(
        "secondary triggers",
        always.is_empty(),
        if always.is_empty() {
            format!("no user trigger on {secondary_name} fires for applied changes")
        } else {
            format!(
                "triggers enabled ALWAYS on {secondary_name} would fire for the changes applied \
                 there (their effects arrive captured): {}; ALTER TABLE ... ENABLE TRIGGER ... \
                 for the migration",
                always.join(", ")
            )
        },
    );
    // Writes that bypassed the proxy, captured on either side, still to be applied.
    let mut waiting = 0;
    for c in [primary, secondary] {
        waiting += crate::capture::log::pending(c).await?;
    }
    checks.push(
        "change log drained",
        waiting == 0,
        if waiting == 0 {
            "no write made outside the proxy waits to be applied".to_string()
        } else {
            format!(
                "{waiting} captured writes made outside the proxy are not applied yet (the \
                 proxy drains them within seconds; switchyard-reconciler replay does too)"
            )
        },
    );
    Ok(())
}

/// New's cache hit ratio this far under old's counts as cold.
const COLD_BY: f64 = 0.05;

/// Reads moved to a cold new go to disk: the ratios are shown, and with `require_warm`
/// a cold new refuses the flip (`switchyard-proxy cutover warm-up` loads it).
async fn warm(old: &Client, new: &Client, req: &FlipRequest, checks: &mut Checks) {
    use super::warmup::hit_ratio;
    let pct = |r: Option<f64>| {
        r.map_or("no reads yet".to_string(), |r| {
            format!("{:.1} %", r * 100.0)
        })
    };
    match (hit_ratio(old).await, hit_ratio(new).await) {
        (Ok(o), Ok(n)) => {
            let cold = matches!((o, n), (Some(o), Some(n)) if n < o - COLD_BY);
            checks.push(
                "new cache warm",
                !(cold && req.require_warm),
                format!(
                    "cache hit ratio: new {}, old {}{}",
                    pct(n),
                    pct(o),
                    if cold {
                        " (new is colder: switchyard-proxy cutover warm-up)"
                    } else {
                        ""
                    }
                ),
            );
        }
        (Err(e), _) | (_, Err(e)) => checks.push(
            "new cache warm",
            !req.require_warm,
            format!("cache hit ratios not readable: {e}"),
        ),
    }
}
