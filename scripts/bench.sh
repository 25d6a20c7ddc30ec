#!/usr/bin/env bash
# API throughput against a bare axum route in the same process; writes bench-results/api.json.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p patchbay-server --bench api
