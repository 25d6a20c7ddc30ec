#!/usr/bin/env bash
# Makes sure moto's server (a real implementation of the AWS S3/KMS/Secrets Manager APIs)
# answers on 127.0.0.1:${PATCHBAY_MOTO_PORT:-15000} for crates/external's tests.
# Idempotent: installs moto only when `moto_server` is missing, starts it only when nothing
# answers on the port, and waits until it answers. Safe to run twice.
set -euo pipefail

host=127.0.0.1
port="${PATCHBAY_MOTO_PORT:-15000}"
log=/tmp/patchbay-moto.log
url="http://$host:$port"

moto_up() { curl -s -o /dev/null --max-time 2 "$url/moto-api/" 2>/dev/null; }

if moto_up; then
  echo "peers-aws: moto already answering at $url"
  exit 0
fi

if ! command -v moto_server >/dev/null 2>&1; then
  echo "peers-aws: installing moto[server]==5.2.5"
  python3 -m pip install -q 'moto[server]==5.2.5'
  hash -r
fi
command -v moto_server >/dev/null 2>&1 || { echo "peers-aws: moto_server not on PATH after install" >&2; exit 1; }

echo "peers-aws: starting moto_server on $url (log $log)"
nohup moto_server -H "$host" -p "$port" >>"$log" 2>&1 </dev/null &
disown || true

for _ in $(seq 1 100); do
  if moto_up; then
    echo "peers-aws: moto ready at $url"
    exit 0
  fi
  sleep 0.2
done
echo "peers-aws: moto did not answer at $url within 20 s; see $log" >&2
exit 1
