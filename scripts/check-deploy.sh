#!/usr/bin/env bash
# Validates the deployment kit without a Docker engine:
#   1. docker-compose.yml against the Compose Specification's JSON schema (vendored by
#      check-jsonschema as vendor.compose-spec);
#   2. the Prometheus config and alert rules with promtool, and every Grafana dashboard query
#      as PromQL (each written as a recording rule that promtool parses);
#   3. cross-checks (scripts/check_deploy.py): every metric the dashboard and the alerts use is
#      defined in the Rust sources, Prometheus scrapes the proxy's admin port as the compose
#      file sets it, Grafana's provisioning finds the datasource and the dashboard, start-order
#      conditions have healthchecks, the Dockerfile builds the three binaries.
# Usage: scripts/check-deploy.sh [KIT_DIR]   (KIT_DIR defaults to the repository; the tests
# point it at a copy with a planted mistake to see the check fail).
# Needs what .ci/setup installs: the venv with check-jsonschema and PyYAML, and promtool.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
KIT="$(cd "${1:-$REPO}" && pwd)"
CACHE="${SWITCHYARD_CACHE:-/root/.cache/switchyard}"
VENV="${SWITCHYARD_VENV:-$CACHE/venv}"
PROMTOOL="${SWITCHYARD_PROMTOOL:-$CACHE/promtool/promtool}"
[ -x "$PROMTOOL" ] || PROMTOOL="$(command -v promtool || true)"

fail=0
step() { echo "== $*"; }

if [ ! -x "$VENV/bin/check-jsonschema" ] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    echo "check-deploy: $VENV lacks check-jsonschema or PyYAML; run .ci/setup" >&2
    exit 2
fi
if [ -z "$PROMTOOL" ]; then
    echo "check-deploy: promtool not found ($CACHE/promtool/promtool or PATH); run .ci/setup" >&2
    exit 2
fi

step "docker-compose.yml against the compose-spec schema"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$KIT/docker-compose.yml" || fail=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step "cross-checks: metric names, scrape target, provisioning, start order, Dockerfile"
"$VENV/bin/python" "$REPO/scripts/check_deploy.py" "$KIT" "$REPO" "$work/dashboard-queries.yml" || fail=1

step "promtool: prometheus.yml (with alerts.yml), dashboard queries"
# check config also checks the rule files it names (alerts.yml).
"$PROMTOOL" check config "$KIT/docs/prometheus/prometheus.yml" || fail=1
if [ -s "$work/dashboard-queries.yml" ]; then
    "$PROMTOOL" check rules "$work/dashboard-queries.yml" || fail=1
fi

if [ "$fail" -ne 0 ]; then
    echo "check-deploy: FAILED"
    exit 1
fi
echo "check-deploy: ok"
