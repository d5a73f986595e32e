#!/usr/bin/env bash
# The test command: builds the binaries the black-box tests run, then every test in the
# workspace (unit, property and end-to-end against real PostgreSQL clusters and broker).
# Needs what .ci/setup installs.
#
# The binaries are built with their test failpoints compiled in (the `failpoints` feature,
# off in every other build); `cargo test` gets the same features so it reuses those builds
# of the crates instead of compiling them a second time without.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES="switchyard-proxy/failpoints,switchyard-backfill/failpoints,switchyard-reconciler/failpoints"
cargo build --workspace --bins --locked --features "$FEATURES"
cargo test --workspace --locked --features "$FEATURES" "$@"
