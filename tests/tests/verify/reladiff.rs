//! Scenario 29's independent check: reladiff finds the same keys on the same data.

use super::*;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use switchyard_tests::clients::{python_bin, run_client_ok};
use switchyard_tests::mirror::pair_with;
use switchyard_tests::mirror::reconciler_json;
use switchyard_tests::proxy::DB;

/// Keys reladiff reports, as (table, kind, key): `-` lines are rows of old that new lacks
/// or has differently, `+` lines rows of new.
fn parse_reladiff(table: &str, key_cols: usize, out: &str) -> Result<Found> {
    let mut minus = BTreeSet::new();
    let mut plus = BTreeSet::new();
    for line in out.lines().filter(|l| l.starts_with('[')) {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("reladiff line {line}"))?;
        let row = v[1].as_array().context("reladiff row")?;
        let k: Vec<String> = row[..key_cols]
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect();
        match v[0].as_str() {
            Some("-") => minus.insert(k),
            Some("+") => plus.insert(k),
            other => bail!("unexpected reladiff sign {other:?}"),
        };
    }
    let mut out = Found::new();
    for k in minus.union(&plus) {
        let kind = match (minus.contains(k), plus.contains(k)) {
            (true, true) => "different",
            (true, false) => "missing_in_new",
            _ => "extra_in_new",
        };
        out.insert((format!("public.{table}"), kind.to_string(), k.clone()));
    }
    Ok(out)
}

/// Scenario 29's independent check: reladiff finds the same keys on the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agrees_with_reladiff() -> Result<()> {
    let pair = pair_with(
        "CREATE TABLE r_int (id int PRIMARY KEY, v text, n int);
         INSERT INTO r_int SELECT g, 'v' || g, g % 97 FROM generate_series(1, 20000) g;
         CREATE TABLE r_comp (region text, id int, v text, PRIMARY KEY (region, id));
         INSERT INTO r_comp SELECT r, g, r || g FROM unnest(ARRAY['eu', 'us', 'ap']) r,
                generate_series(1, 3000) g;
         ANALYZE;",
    )
    .await?;
    pair.new.psql(
        DB,
        "DELETE FROM r_int WHERE id IN (1, 777, 15000, 20000);
         INSERT INTO r_int VALUES (20001, 'x', 1), (50000, 'y', 2);
         UPDATE r_int SET v = 'changed' WHERE id IN (2, 9999, 12345);
         UPDATE r_int SET n = -1 WHERE id = 19999;
         DELETE FROM r_comp WHERE region = 'us' AND id IN (1, 2999);
         INSERT INTO r_comp VALUES ('eu', 3001, 'x');
         UPDATE r_comp SET v = 'changed' WHERE region = 'ap' AND id = 100;",
    )?;
    let (code, json) = reconciler_json(&pair, "verify", &[]).await?;
    assert_eq!(code, 1, "{json:#}");
    let ours = found(&json)?;
    assert_eq!(ours.len(), 10 + 4, "{json:#}");

    let reladiff = python_bin()?.with_file_name("reladiff");
    let mut theirs = Found::new();
    for (name, keys, cols) in [
        ("r_int", &["id"][..], &["v", "n"][..]),
        ("r_comp", &["region", "id"][..], &["v"][..]),
    ] {
        let mut cmd = tokio::process::Command::new(&reladiff);
        cmd.arg(pair.old.url(DB).replace("postgres://", "postgresql://"))
            .arg(name)
            .arg(pair.new.url(DB).replace("postgres://", "postgresql://"))
            .arg(name)
            .arg("--json");
        for k in keys {
            cmd.args(["-k", k]);
        }
        for c in cols {
            cmd.args(["-c", c]);
        }
        let out = run_client_ok(&mut cmd, "reladiff", Duration::from_secs(120)).await?;
        theirs.extend(parse_reladiff(name, keys.len(), &out.stdout)?);
    }
    assert_eq!(ours, theirs, "switchyard and reladiff disagree");
    Ok(())
}
