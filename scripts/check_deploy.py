"""Cross-checks of the deployment kit that no schema can make (run by scripts/check-deploy.sh).

Usage: check_deploy.py KIT_DIR SOURCE_DIR [PROMQL_RULES_OUT]

KIT_DIR holds docker-compose.yml, Dockerfile and docs/{compose,prometheus,grafana}; SOURCE_DIR
is the repository whose Rust sources define the metric names. Every problem is printed, then
the exit status is 1 if there was any. When PROMQL_RULES_OUT is given, every dashboard query
is written there as a recording rule (Grafana's variables replaced), so promtool can parse it.
"""

import json
import re
import sys
from pathlib import Path

import yaml

METRIC = re.compile(r"\bswitchyard_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Metrics of work in progress on other branches, named here until those branches merge; the
# check then finds them in the sources like every other name. Keep this list short-lived.
PENDING = {
}

problems = []
notes = set()


def problem(msg):
    problems.append(msg)


def load_yaml(path):
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        problem(f"{path}: cannot read as YAML: {e}")
        return None


def defined_metrics(source_dir):
    """Every switchyard_* name written in the Rust sources of the binaries and the core."""
    names = set()
    for crate in ("core", "proxy", "reconciler", "backfill"):
        for rs in (source_dir / crate).rglob("*.rs"):
            names.update(METRIC.findall(rs.read_text(errors="replace")))
    return names


def check_metric(name, defined, where):
    if name in defined:
        return
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in defined:
            return
    base = name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
    if base in PENDING:
        notes.add(f"{base}: not in these sources yet, taken from branch `{PENDING[base]}`")
        return
    problem(f"{where}: metric {name} is not defined anywhere in the Rust sources")


def command_flag(command, flag):
    """The value after `flag` in a compose command list (or None)."""
    if not isinstance(command, list):
        return None
    for i, item in enumerate(command):
        if item == flag and i + 1 < len(command):
            return str(command[i + 1])
        if isinstance(item, str) and item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


def check_compose(kit, compose):
    services = compose.get("services") or {}
    for name in ("old-db", "new-db", "kafka", "proxy", "reconciler", "prometheus", "grafana"):
        if name not in services:
            problem(f"docker-compose.yml: service {name} is missing")
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problem(f"docker-compose.yml: {name} depends on unknown service {dep}")
                continue
            if isinstance(cond, dict) and cond.get("condition") == "service_healthy":
                if "healthcheck" not in services[dep]:
                    problem(f"docker-compose.yml: {name} waits for {dep} to be healthy, but {dep} has no healthcheck")
        for vol in svc.get("volumes") or []:
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("./") and not (kit / src).exists():
                problem(f"docker-compose.yml: {name} mounts {src}, which does not exist")
        if svc.get("build") and not (kit / svc["build"].get("dockerfile", "Dockerfile")).exists():
            problem(f"docker-compose.yml: {name} builds from a Dockerfile that does not exist")
    for db in ("old-db", "new-db"):
        image = (services.get(db) or {}).get("image", "")
        if not re.match(r"postgres:15(\b|-|$)", image):
            problem(f"docker-compose.yml: {db} should run PostgreSQL 15, image is {image!r}")
    new_cmd = " ".join(map(str, (services.get("new-db") or {}).get("command") or []))
    m = re.search(r"max_prepared_transactions=(\d+)", new_cmd)
    if not m or int(m.group(1)) == 0:
        problem("docker-compose.yml: new-db must run with max_prepared_transactions > 0 (two-phase commit)")
    kafka_env = (services.get("kafka") or {}).get("environment") or {}
    if "controller" not in str(kafka_env.get("KAFKA_PROCESS_ROLES", "")):
        problem("docker-compose.yml: kafka should run in KRaft mode (KAFKA_PROCESS_ROLES with controller)")
    proxy = services.get("proxy") or {}
    cmd = proxy.get("command")
    if command_flag(cmd, "--retry-log") != "kafka":
        problem("docker-compose.yml: the proxy should run with --retry-log kafka")
    brokers = command_flag(cmd, "--kafka-brokers") or ""
    if brokers.split(":")[0] not in services:
        problem(f"docker-compose.yml: --kafka-brokers {brokers!r} does not name a compose service")
    for flag, svc in (("--old", "old-db"), ("--new", "new-db")):
        url = command_flag(cmd, flag) or ""
        if f"@{svc}:" not in url:
            problem(f"docker-compose.yml: the proxy's {flag} should point at the {svc} service")
    rec = " ".join(map(str, (services.get("reconciler") or {}).get("command") or []))
    for word in ("replay", "--follow", "--retry-log kafka", "--metrics-file"):
        if word not in rec:
            problem(f"docker-compose.yml: the reconciler should run `replay` with {word}")
    admin = command_flag(cmd, "--admin-listen")
    if not admin or ":" not in admin:
        problem("docker-compose.yml: the proxy needs --admin-listen HOST:PORT")
        return None
    if admin.startswith("127.") or admin.startswith("localhost"):
        problem(f"docker-compose.yml: --admin-listen {admin} is loopback only; Prometheus could not scrape it")
    return f"proxy:{admin.rsplit(':', 1)[1]}"


def check_prometheus(kit, prom, proxy_target, services):
    if not prom:
        return
    jobs = prom.get("scrape_configs") or []
    targets = {}
    for job in jobs:
        for sc in job.get("static_configs") or []:
            for t in sc.get("targets") or []:
                targets[t] = job
    if proxy_target and proxy_target not in targets:
        problem(f"docs/prometheus/prometheus.yml: no scrape target {proxy_target} (the proxy's admin port in docker-compose.yml); targets: {sorted(targets)}")
    elif proxy_target and targets[proxy_target].get("metrics_path", "/metrics") != "/metrics":
        problem("docs/prometheus/prometheus.yml: the proxy is scraped on a path other than /metrics")
    for t in targets:
        host = t.split(":")[0]
        if host not in services:
            problem(f"docs/prometheus/prometheus.yml: target {t} is not a compose service")
    ne = services.get("node-exporter")
    if ne and not any(t.startswith("node-exporter:") for t in targets):
        problem("docs/prometheus/prometheus.yml: node-exporter (the metric files) is not scraped")
    for rf in prom.get("rule_files") or []:
        if not (kit / "docs/prometheus" / rf).exists():
            problem(f"docs/prometheus/prometheus.yml: rule file {rf} does not exist")


def check_grafana_provisioning(kit, services):
    grafana = services.get("grafana") or {}
    mounts = {}
    for vol in grafana.get("volumes") or []:
        parts = vol.split(":")
        if len(parts) >= 2:
            mounts[parts[1]] = parts[0]
    ds = load_yaml(kit / "docs/grafana/provisioning/datasources/prometheus.yml") or {}
    urls = [d.get("url", "") for d in ds.get("datasources") or []]
    if not any(re.match(r"https?://prometheus:9090/?$", u) for u in urls):
        problem(f"docs/grafana/provisioning/datasources/prometheus.yml: no datasource at http://prometheus:9090 ({urls})")
    dash = load_yaml(kit / "docs/grafana/provisioning/dashboards/switchyard.yml") or {}
    paths = [p.get("options", {}).get("path", "") for p in dash.get("providers") or []]
    mounted_dirs = {str(Path(target).parent) for target, src in mounts.items() if src.endswith("switchyard.json")}
    if not any(p.rstrip("/") in mounted_dirs for p in paths):
        problem(f"docs/grafana/provisioning/dashboards/switchyard.yml: provider path {paths} is not where compose mounts switchyard.json ({sorted(mounted_dirs)})")
    if "/etc/grafana/provisioning" not in mounts:
        problem("docker-compose.yml: grafana does not mount docs/grafana/provisioning at /etc/grafana/provisioning")


GRAFANA_VARS = [
    ("$__rate_interval", "1m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
    ("$instance", ".*"),
]


def check_dashboard(kit, defined, rules_out):
    path = kit / "docs/grafana/switchyard.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problem(f"{path}: not valid JSON: {e}")
        return
    if not dash.get("uid") or not dash.get("title"):
        problem("switchyard.json: uid and title are required")
    var_names = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    if "DS_PROMETHEUS" not in var_names and "DS_PROMETHEUS" not in {i.get("name") for i in dash.get("__inputs", [])}:
        problem("switchyard.json: the datasource must be the DS_PROMETHEUS input or variable")
    rows = [p["title"] for p in dash.get("panels", []) if p.get("type") == "row"]
    for want in ("Overview", "Dual writes", "Shadow reads"):
        if want not in rows:
            problem(f"switchyard.json: row {want!r} is missing (rows: {rows})")
    if not any("backfill" in r.lower() and "verify" in r.lower() for r in rows):
        problem("switchyard.json: a row for replay/backfill/verify progress is missing")
    ids, rects, exprs = set(), [], []
    for p in dash.get("panels", []):
        pid = p.get("id")
        if pid in ids:
            problem(f"switchyard.json: panel id {pid} used twice")
        ids.add(pid)
        g = p.get("gridPos") or {}
        if g.get("x", 0) + g.get("w", 0) > 24:
            problem(f"switchyard.json: panel {p.get('title')!r} is wider than the grid")
        for other_title, o in rects:
            if (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                    and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]):
                problem(f"switchyard.json: panels {other_title!r} and {p.get('title')!r} overlap")
        rects.append((p.get("title"), g))
        if p.get("type") in ("row", "text"):
            continue
        if (p.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
            problem(f"switchyard.json: panel {p.get('title')!r} does not use the DS_PROMETHEUS datasource")
        if not p.get("targets"):
            problem(f"switchyard.json: panel {p.get('title')!r} has no query")
        for t in p.get("targets", []):
            expr = t.get("expr", "").strip()
            if not expr:
                problem(f"switchyard.json: panel {p.get('title')!r} query {t.get('refId')} is empty")
                continue
            exprs.append((p.get("title"), expr))
            for name in METRIC.findall(expr):
                check_metric(name, defined, f"dashboard panel {p.get('title')!r}")
    if rules_out:
        rules = []
        for i, (title, expr) in enumerate(exprs):
            for var, value in GRAFANA_VARS:
                expr = expr.replace(var, value)
            if "$" in expr:
                problem(f"switchyard.json: panel {title!r} uses an unknown variable: {expr}")
            rules.append({"record": f"switchyard_dashboard:query_{i}", "expr": expr})
        with open(rules_out, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)


def check_alerts(kit, defined):
    alerts = load_yaml(kit / "docs/prometheus/alerts.yml")
    if not alerts:
        return
    seen = set()
    for group in alerts.get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert")
            if not name:
                problem(f"alerts.yml: a rule in group {group.get('name')} has no alert name")
                continue
            seen.add(name)
            if not rule.get("expr"):
                problem(f"alerts.yml: {name} has no expr")
            if (rule.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                problem(f"alerts.yml: {name} needs labels.severity critical|warning|info")
            if not (rule.get("annotations") or {}).get("summary"):
                problem(f"alerts.yml: {name} needs annotations.summary")
            for metric in METRIC.findall(str(rule.get("expr", ""))):
                check_metric(metric, defined, f"alert {name}")
    ops = (kit / "docs/operations.md")
    text = ops.read_text() if ops.exists() else ""
    for name in sorted(seen):
        if name not in text:
            problem(f"alerts.yml: {name} is not explained in docs/operations.md")


def check_dockerfile(kit, source_dir):
    path = kit / "Dockerfile"
    if not path.exists():
        problem("Dockerfile is missing")
        return
    text = path.read_text()
    channel = re.search(r'channel\s*=\s*"(\d+\.\d+)', (source_dir / "rust-toolchain.toml").read_text())
    if channel and f"FROM rust:{channel.group(1)}" not in text:
        problem(f"Dockerfile: the builder should be rust:{channel.group(1)} (rust-toolchain.toml)")
    if "libclang-dev" not in text:
        problem("Dockerfile: the builder needs libclang-dev (pg_query's bindgen)")
    if "FROM debian:bookworm-slim" not in text:
        problem("Dockerfile: the runtime stage should be debian:bookworm-slim")
    for crate in ("proxy", "reconciler", "backfill"):
        bin_name = f"switchyard-{crate}"
        if bin_name not in (source_dir / crate / "Cargo.toml").read_text():
            continue
        if f"target/release/{bin_name}" not in text:
            problem(f"Dockerfile: the image does not get {bin_name}")


def main():
    kit = Path(sys.argv[1]).resolve()
    source_dir = Path(sys.argv[2]).resolve()
    rules_out = sys.argv[3] if len(sys.argv) > 3 else None
    defined = defined_metrics(source_dir)
    compose = load_yaml(kit / "docker-compose.yml") or {}
    services = compose.get("services") or {}
    proxy_target = check_compose(kit, compose)
    check_prometheus(kit, load_yaml(kit / "docs/prometheus/prometheus.yml"), proxy_target, services)
    check_grafana_provisioning(kit, services)
    check_dashboard(kit, defined, rules_out)
    check_alerts(kit, defined)
    check_dockerfile(kit, source_dir)
    for n in sorted(notes):
        print(f"note: {n}")
    for p in problems:
        print(f"PROBLEM: {p}")
    if problems:
        print(f"check_deploy: {len(problems)} problem(s)")
        return 1
    print(f"check_deploy: ok ({len(defined)} metric names in the sources)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
