#!/usr/bin/env bash
# Test-connection peers for the snowflake probe (issue 6), idempotent, bound to 127.0.0.1:
#  - Snowflake's HTTP protocol: PyPI fakesnow[server]==0.12.1 (with
#    snowflake-connector-python<4, which it imports) in a venv, on 18900. fakesnow accepts
#    any account, user and password.
set -euo pipefail

PEERS_DIR=${PATCHBAY_PROBE_PEERS_DIR:-/tmp/patchbay-peers/probe}
mkdir -p "$PEERS_DIR"
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 150); do port_up "$1" && return 0; sleep 0.1; done; return 1; }

# --- Snowflake (fakesnow) on 18900 ----------------------------------------------------------
venv=$PEERS_DIR/fakesnow-venv
if ! port_up 18900; then
  if [ ! -x "$venv/bin/fakesnow" ]; then
    echo "peers-more-c: installing fakesnow[server]==0.12.1 in $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'fakesnow[server]==0.12.1' 'snowflake-connector-python<4'
  fi
  echo "peers-more-c: starting fakesnow on 18900"
  nohup "$venv/bin/fakesnow" -s -p 18900 --host 127.0.0.1 >>"$PEERS_DIR/fakesnow.log" 2>&1 </dev/null &
  disown || true
  wait_port 18900 || true
fi
if port_up 18900; then echo "peers-more-c: fakesnow (Snowflake) ready on 127.0.0.1:18900"; else echo "peers-more-c: Snowflake (fakesnow) on 18900 is NOT available"; fi
