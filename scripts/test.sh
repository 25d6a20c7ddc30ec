#!/usr/bin/env bash
# The test command (README): starts the peers the tests need, then runs every test of the
# workspace. Under CI=true a test whose peer is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/peers.sh
if ! command -v cargo-nextest >/dev/null; then
  cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --locked --no-fail-fast "$@"
