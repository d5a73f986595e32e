#!/usr/bin/env bash
# The test command: builds the binaries the black-box tests run, then every test in the
# workspace (unit, property and end-to-end against real PostgreSQL clusters and broker).
# Needs what .ci/setup installs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
