#!/usr/bin/env bash
# The test command (README): starts the peers the tests need, then runs every test of the
# workspace, then the browser tests of the web UI against the built binary. Under CI=true a
# test whose peer (or browser) is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/peers.sh
if ! command -v cargo-nextest >/dev/null; then
  cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --locked --no-fail-fast "$@"
# The web UI in a real browser (tests/ui): needs the built binary.
cargo build --locked -p patchbay
node tests/ui/ui.test.mjs
