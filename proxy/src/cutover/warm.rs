//! New's buffer cache in the proxy: old's and new's hit ratios for the cutover status, and
//! `switchyard-proxy cutover warm-up`, which loads old's hot relations into new's cache
//! before reads move there (see `switchyard_core::cutover::warmup`).

use crate::mirror::control::Control;
use serde::Serialize;
use std::process::ExitCode;
use switchyard_core::cutover::warmup::{self, WarmError, WarmPlan, WarmReport};
use tokio_postgres::Client;

/// Both databases' buffer cache hit ratios (0 to 1, since their statistics were last
/// reset); None where it could not be read, or before any block was asked for.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WarmStatus {
    pub old: Option<f64>,
    pub new: Option<f64>,
    /// Why a ratio is missing, when reading it failed.
    pub error: Option<String>,
}

async fn ratio_of(control: &Control, side: &str) -> Result<Option<f64>, String> {
    let c = control.client().await.map_err(|e| format!("{side}: {e}"))?;
    warmup::hit_ratio(&c)
        .await
        .map_err(|e| format!("{side}: {e}"))
}

/// Reads both hit ratios over the proxy's own connections to old and new.
pub async fn hit_ratios(old: &Control, new: &Control) -> WarmStatus {
    let (old, new) = tokio::join!(ratio_of(old, "old"), ratio_of(new, "new"));
    let errors: Vec<String> = [&old, &new]
        .into_iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    WarmStatus {
        old: old.ok().flatten(),
        new: new.ok().flatten(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

#[derive(Serialize)]
struct Ratios {
    old: Option<f64>,
    new: Option<f64>,
}

#[derive(Serialize)]
struct CliReport<'a> {
    dry_run: bool,
    plan: &'a WarmPlan,
    /// None on a dry run.
    loaded: Option<&'a WarmReport>,
    hit_ratio_before: Ratios,
    hit_ratio_after: Ratios,
}

fn percent(r: Option<f64>) -> String {
    r.map(|r| format!("{:.1} %", r * 100.0))
        .unwrap_or_else(|| "–".into())
}

async fn ratios(old: &Client, new: &Client) -> Result<Ratios, WarmError> {
    Ok(Ratios {
        old: warmup::hit_ratio(old).await?,
        new: warmup::hit_ratio(new).await?,
    })
}

/// `cutover warm-up`: plans, loads (unless `dry_run`), prints. Exit status: 0 done, 1 an
/// extension or privilege missing (nothing loaded; the message names the fix), 2 an error.
pub async fn cli(
    old: &Client,
    new: &Client,
    budget_percent: u8,
    dry_run: bool,
    json: bool,
) -> ExitCode {
    let fail = |e: WarmError| {
        if json {
            println!("{}", serde_json::json!({ "error": e.to_string() }));
        }
        eprintln!("switchyard-proxy cutover warm-up: {e}");
        match e {
            WarmError::Extension { .. } | WarmError::Privilege { .. } => ExitCode::from(1),
            _ => ExitCode::from(2),
        }
    };
    let before = match ratios(old, new).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let plan = match warmup::plan(old, new, budget_percent).await {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let loaded = if dry_run {
        None
    } else {
        match warmup::run(new, &plan).await {
            Ok(r) => Some(r),
            Err(e) => return fail(e),
        }
    };
    if loaded.is_some() {
        // This backend's reads reach pg_stat_database when it flushes them, by default
        // not before a second has passed (PostgreSQL 15 and later can be told to; earlier
        // ones lack the function, and the ratio then misses part of the load).
        let _ = new.batch_execute("SELECT pg_stat_force_next_flush()").await;
    }
    let after = match ratios(old, new).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if json {
        let report = CliReport {
            dry_run,
            plan: &plan,
            loaded: loaded.as_ref(),
            hit_ratio_before: before,
            hit_ratio_after: after,
        };
        return match serde_json::to_string_pretty(&report) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard-proxy cutover warm-up: {e}");
                ExitCode::from(2)
            }
        };
    }
    print_table(&plan, loaded.as_ref());
    println!(
        "budget {} of new's {} shared buffers ({} %); {}",
        plan.budget_blocks,
        plan.shared_buffers_blocks,
        plan.budget_percent,
        match &loaded {
            None => format!("dry run: would load {} blocks", plan.planned_blocks),
            Some(r) => format!("loaded {} blocks in {} ms", r.blocks, r.elapsed_ms),
        }
    );
    println!(
        "cache hit ratio: old {} → {}, new {} → {}",
        percent(before.old),
        percent(after.old),
        percent(before.new),
        percent(after.new)
    );
    ExitCode::SUCCESS
}

fn print_table(plan: &WarmPlan, loaded: Option<&WarmReport>) {
    let blocks = if loaded.is_some() {
        "loaded on new"
    } else {
        "blocks on new"
    };
    println!(
        "{:<40} {:<17} {:>14} {blocks:>14}  note",
        "relation", "kind", "buffers on old"
    );
    for item in &plan.items {
        let done = loaded.and_then(|r| {
            r.relations
                .iter()
                .find(|l| l.name == item.name && l.kind == item.kind)
        });
        let (blocks, note) = match (done, &item.skipped) {
            (Some(l), _) => (l.blocks.to_string(), l.error.clone().unwrap_or_default()),
            (None, Some(why)) => ("–".to_string(), format!("skipped: {why}")),
            (None, None) => (
                item.new_blocks.map(|n| n.to_string()).unwrap_or_default(),
                String::new(),
            ),
        };
        let line = format!(
            "{:<40} {:<17} {:>14} {:>14}  {}",
            item.name, item.kind, item.old_buffers, blocks, note
        );
        println!("{}", line.trim_end());
    }
    if plan.items.is_empty() {
        println!("(old's cache holds no buffer of this database's relations)");
    }
}
