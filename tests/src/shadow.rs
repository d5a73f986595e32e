//! Helpers for shadow-read tests: the proxy config with shadow reads on, and reading the
//! `shadow` section of `/api/status` and `/api/mismatches`.

use crate::http::{admin_json, get};
use crate::proxy::Pair;
use crate::wait::poll_until_async;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::time::Duration;
use switchyard_proxy::config::MirrorMode;
use switchyard_proxy::{ProxyConfig, RunningProxy};

/// How long a test waits for the shadow workers to reach a state.
pub const SHADOW_WAIT: Duration = Duration::from_secs(30);

/// Every read sampled, a short re-check delay; dual writes off unless a test needs them, so
/// nothing but the shadow executor could touch the new database.
pub fn shadow_config(pair: &Pair) -> ProxyConfig {
    let mut c = pair.config();
    c.mirror.mode = MirrorMode::Off;
    c.shadow.sample_rate = 1.0;
    c.shadow.recheck_delay_ms = 200;
    c.shadow.statement_timeout_ms = 5000;
    c
}

/// The `shadow` section of `/api/status`.
pub async fn shadow_status(proxy: &RunningProxy) -> Result<Value> {
    let s = admin_json(proxy, "/api/status").await?;
    match s.get("shadow") {
        Some(v) if !v.is_null() => Ok(v.clone()),
        _ => bail!("/api/status has no shadow section: {s}"),
    }
}

/// `/api/mismatches` as (parsed, raw body).
pub async fn mismatches(proxy: &RunningProxy) -> Result<(Value, String)> {
    let addr = proxy
        .admin_addr()
        .context("the proxy has no admin server")?;
    let (code, body) = get(addr, "/api/mismatches").await?;
    if code != 200 {
        bail!("GET /api/mismatches: HTTP {code}: {body}");
    }
    Ok((serde_json::from_str(&body)?, body))
}

/// The per-fingerprint entry whose normalized query contains `needle`.
pub fn entry<'a>(shadow: &'a Value, needle: &str) -> Option<&'a Value> {
    shadow
        .get("fingerprints")?
        .as_object()?
        .values()
        .find(|e| e["query"].as_str().is_some_and(|q| q.contains(needle)))
}

/// The fingerprint (16 hex digits) of the entry whose normalized query contains `needle`.
pub fn fingerprint_of(shadow: &Value, needle: &str) -> Option<String> {
    shadow
        .get("fingerprints")?
        .as_object()?
        .iter()
        .find(|(_, e)| e["query"].as_str().is_some_and(|q| q.contains(needle)))
        .map(|(fp, _)| fp.clone())
}

/// A counter of an entry (0 when absent).
pub fn count(entry: Option<&Value>, key: &str) -> u64 {
    entry.and_then(|e| e[key].as_u64()).unwrap_or(0)
}

/// Every queued comparison has been taken and every re-check finished.
pub fn settled(shadow: &Value) -> bool {
    let q = &shadow["queue"];
    q["pushed"] == q["popped"] && q["rechecks_pending"].as_u64() == Some(0) && {
        // Each sampled comparison has an outcome.
        let t = &shadow["totals"];
        let done = [
            "matched",
            "confirmed",
            "accepted",
            "transient",
            "errors",
            "skipped",
        ]
        .iter()
        .map(|k| t[*k].as_u64().unwrap_or(0))
        .sum::<u64>();
        done == t["sampled"].as_u64().unwrap_or(0)
    }
}

/// Polls the shadow status until `pred` holds; returns that status.
pub async fn wait_shadow(
    proxy: &RunningProxy,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let (last_ref, pred) = (&last, &pred);
    let r = poll_until_async(what, SHADOW_WAIT, || async move {
        let s = shadow_status(proxy).await?;
        if pred(&s) {
            return Ok(Some(s));
        }
        if let Ok(mut l) = last_ref.lock() {
            *l = s;
        }
        Ok(None)
    })
    .await;
    let last = last.lock().map(|l| l.clone()).unwrap_or_default();
    r.with_context(|| format!("last shadow status: {last:#}"))
}
