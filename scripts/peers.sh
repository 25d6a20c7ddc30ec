#!/usr/bin/env bash
# Makes sure the real servers the tests talk to are running on 127.0.0.1. Idempotent:
# starts only what is not answering. Today: PostgreSQL (pre-started on our machines; this
# restarts it if it stopped) and the client tools the end-to-end tests call.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Servers started from here inherit the working directory. Start them from a directory that
# outlives this checkout (a deleted cwd breaks e.g. pyftpdlib's CWD command).
cd /

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v psql >/dev/null || need_apt+=(postgresql-client)
if ((${#need_apt[@]})); then
  echo "peers: installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    echo "peers: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  fi
fi
if pg_up; then
  echo "peers: PostgreSQL ready on 127.0.0.1:5432"
  # Tests that need a fresh database create one each (pb_<tag>_<id>) and drop it when they
  # end; a run that was killed leaves its own behind: drop those nobody is connected to.
  stale=$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT datname FROM pg_database d \
    WHERE datname LIKE 'pb\_%' AND NOT EXISTS \
    (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)" 2>/dev/null || true)
  for db in $stale; do
    psql -h 127.0.0.1 -U postgres -d postgres -qAtc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
  done
  if [ -n "$stale" ]; then
    echo "peers: dropped $(wc -w <<<"$stale") test database(s) left by earlier runs"
  fi
else
  echo "peers: PostgreSQL is NOT available; its tests will SKIP (or fail under CI=true)"
fi

# AWS APIs (KMS, Secrets Manager) for the key-management and external-manager tests.
bash "$here/peers-aws.sh"

# Test-connection peers: a scram + TLS PostgreSQL on 5433 and a password Redis on 6380.
bash "$here/peers-probe.sh"

# Database and broker probe peers: MariaDB users (+ TLS on 3307), RabbitMQ, NATS, MQTT, SMTP.
bash "$here/peers-brokers.sh"

# Infrastructure probe peers: Kafka protocol (tansu) on 19092, slapd on 3389, FTP on 2121.
bash "$here/peers-infra.sh"

# More probe peers (helper A): snmpd on udp 1161.
bash "$here/peers-more-a.sh"
# More probe peers: Snowflake's HTTP protocol (fakesnow) on 18900.
bash "$here/peers-more-c.sh"

# Browser tests of the web UI: Debian's chromium and tests/ui's npm packages.
bash "$here/peers-browser.sh"
