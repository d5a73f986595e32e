#!/usr/bin/env bash
# Fails if a binary in DIR (default target/release) has the test failpoints compiled in:
# they are for scripts/test.sh's builds only, never for what users run.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${CARGO_TARGET_DIR:-target}/release}"
status=0
for name in switchyard-proxy switchyard-backfill switchyard-reconciler; do
  bin="$DIR/$name"
  if [ ! -x "$bin" ]; then
    echo "$bin: not built" >&2
    status=1
    continue
  fi
  version=$("$bin" --version)
  # The version mark is what the tests check. Any "failpoint" text (the variables' names,
  # a failpoint's log line) means some failpoint code was compiled in outside the feature.
  if [[ "$version" == *"(failpoints)"* ]] || grep -qaiF failpoint "$bin"; then
    echo "$bin: failpoints compiled in ($version)" >&2
    status=1
  else
    echo "$bin: no failpoints ($version)"
  fi
done
exit "$status"
