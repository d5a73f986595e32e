//! The deployment kit (docker-compose.yml, Dockerfile, Prometheus and Grafana files) checked
//! without a Docker engine by `scripts/check-deploy.sh`: the compose-spec schema, promtool,
//! and cross-checks against the Rust sources. A second test plants mistakes in a copy of the
//! kit and expects the check to name each one, so a check that passes everything fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs the check on `kit` (the repository when None): (success, stdout + stderr).
fn check(kit: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/check-deploy.sh"));
    if let Some(kit) = kit {
        cmd.arg(kit);
    }
    let out = cmd.output().expect("run scripts/check-deploy.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(2),
        "check-deploy.sh could not run (tools missing? run .ci/setup):\n{text}"
    );
    (out.status.success(), text)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Replaces `from` by `to` in `path`, insisting that `from` is there (so the planted mistake
/// does not silently miss when the kit changes).
fn plant(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(
        text.contains(from),
        "{} no longer contains {from:?}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
}

#[test]
fn deploy_kit_is_valid() {
    let (ok, text) = check(None);
    println!("{text}");
    assert!(ok, "scripts/check-deploy.sh failed:\n{text}");
    assert!(text.contains("ok -- validation done"), "{text}");
}

#[test]
fn planted_mistakes_are_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kit = dir.path();
    let root = repo();
    for file in ["docker-compose.yml", "Dockerfile", "docs/operations.md"] {
        let target = kit.join(file);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(root.join(file), &target).expect("copy");
    }
    for folder in ["docs/compose", "docs/prometheus", "docs/grafana"] {
        copy_tree(&root.join(folder), &kit.join(folder));
    }
    for (file, from, to) in [
        // A metric nobody exports, in the dashboard and in an alert.
        (
            "docs/grafana/switchyard.json",
            "switchyard_mirror_rows_total",
            "switchyard_mirror_rowz_total",
        ),
        (
            "docs/prometheus/alerts.yml",
            "switchyard_mirror_in_doubt_total",
            "switchyard_mirror_indoubt_total",
        ),
        // Prometheus scraping a port the proxy does not listen on.
        (
            "docs/prometheus/prometheus.yml",
            "\"proxy:9187\"",
            "\"proxy:9188\"",
        ),
        // A start-order condition the compose spec does not know.
        (
            "docker-compose.yml",
            "condition: service_healthy",
            "condition: service_ready",
        ),
        // PromQL that does not parse, in an alert and in a dashboard query.
        (
            "docs/prometheus/alerts.yml",
            "[5m])) > 0.1",
            "[5m])) >> 0.1",
        ),
        (
            "docs/grafana/switchyard.json",
            "histogram_quantile(0.5, ",
            "histogram_quantile(0.5 ",
        ),
        // Two-phase commit impossible on new.
        (
            "docker-compose.yml",
            "max_prepared_transactions=200",
            "max_prepared_transactions=0",
        ),
    ] {
        plant(&kit.join(file), from, to);
    }

    let (ok, text) = check(Some(kit));
    println!("{text}");
    assert!(!ok, "the check passed a kit with planted mistakes:\n{text}");
    for expected in [
        "switchyard_mirror_rowz_total is not defined",
        "switchyard_mirror_indoubt_total is not defined",
        "no scrape target proxy:9187",
        "Schema validation errors",
        "max_prepared_transactions > 0",
        "\"SwitchyardSecondaryErrors\": could not parse expression",
        "group \"dashboard-queries\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
