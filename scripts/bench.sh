#!/usr/bin/env bash
# API throughput against a bare axum route in the same process; writes bench-results/api.json.
# Data key rotation of 100,000 secrets (SQLite, and PostgreSQL when reachable) against
# crypto-only and store-only baselines; writes bench-results/rotate.json.
# A staged connection test of the local PostgreSQL against a bare sqlx connect + SELECT 1;
# writes bench-results/probe.json.
# Reveal throughput with and without auditing reveals; writes bench-results/audit.json.
# Resolve throughput (JSON, audited, runner token, 32 clients) on SQLite and PostgreSQL
# against a bare axum route in the same run; writes bench-results/resolve.json.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p patchbay-server --bench api
cargo bench -p patchbay-server --bench rotate
cargo bench -p patchbay-probe --bench probe
cargo bench -p patchbay-server --bench audit
cargo bench -p patchbay-server --bench resolve
