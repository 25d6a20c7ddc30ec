#!/usr/bin/env bash
# Test-connection peers (issue 6), idempotent, bound to 127.0.0.1:
#  - PostgreSQL 15 cluster on 5433: scram-sha-256 (plus one md5 and one cleartext-password
#    role), TLS with a test CA generated here; roles pb_ro (read-only) and pb_rw (can write),
#    database pbtest.
#  - Redis on 6380 with requirepass.
# Files (CA, server cert) live in $PEERS_DIR; the probe tests read ca.pem from there.
set -euo pipefail

PEERS_DIR=${PATCHBAY_PROBE_PEERS_DIR:-/tmp/patchbay-peers/probe}
PG_BIN=/usr/lib/postgresql/15/bin
PG_DATA=$PEERS_DIR/pg5433
mkdir -p "$PEERS_DIR"
chmod 755 "$PEERS_DIR" "$(dirname "$PEERS_DIR")"

# --- test CA and server certificate (localhost / 127.0.0.1) ------------------------------
if [[ ! -s $PEERS_DIR/server.pem ]]; then
  echo "peers-probe: generating the test CA"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=patchbay test CA" \
    -keyout "$PEERS_DIR/ca.key" -out "$PEERS_DIR/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$PEERS_DIR/server.key" -out "$PEERS_DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$PEERS_DIR/server.ext"
  openssl x509 -req -in "$PEERS_DIR/server.csr" -CA "$PEERS_DIR/ca.pem" -CAkey "$PEERS_DIR/ca.key" \
    -CAcreateserial -days 3650 -extfile "$PEERS_DIR/server.ext" -out "$PEERS_DIR/server.pem" 2>/dev/null
  chmod 644 "$PEERS_DIR/ca.pem" "$PEERS_DIR/server.pem"
fi

# --- PostgreSQL on 5433 ------------------------------------------------------------------
as_pg() { runuser -u postgres -- "$@"; }
pg_up() { "$PG_BIN/pg_isready" -h 127.0.0.1 -p 5433 -q 2>/dev/null; }
if ! pg_up; then
  if [[ ! -s $PG_DATA/PG_VERSION ]]; then
    echo "peers-probe: initdb PostgreSQL on 5433"
    rm -rf "$PG_DATA"
    mkdir -p "$PG_DATA"
    chown postgres:postgres "$PG_DATA"
    printf 'pb-postgres-pass\n' >"$PEERS_DIR/pwfile"
    chown postgres "$PEERS_DIR/pwfile"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A scram-sha-256 --pwfile="$PEERS_DIR/pwfile" >/dev/null
    cp "$PEERS_DIR/server.pem" "$PG_DATA/server.crt"
    cp "$PEERS_DIR/server.key" "$PG_DATA/server.key"
    chown postgres:postgres "$PG_DATA/server.crt" "$PG_DATA/server.key"
    chmod 600 "$PG_DATA/server.key"
    cat >>"$PG_DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = 5433
unix_socket_directories = '$PG_DATA'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
password_encryption = 'scram-sha-256'
CONF
    cat >"$PG_DATA/pg_hba.conf" <<HBA
local all postgres scram-sha-256
host all pb_md5 127.0.0.1/32 md5
host all pb_clear 127.0.0.1/32 password
host all all 127.0.0.1/32 scram-sha-256
HBA
  fi
  echo "peers-probe: starting PostgreSQL on 5433"
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w start >/dev/null
fi
psql_su() { PGPASSWORD=pb-postgres-pass "$PG_BIN/psql" -q -h 127.0.0.1 -p 5433 -U postgres "$@"; }
if pg_up && [[ $(psql_su -d postgres -tAc "SELECT count(*) FROM pg_roles WHERE rolname = 'pb_ro'") != 1 ]]; then
    echo "peers-probe: creating roles and database pbtest"
    PGPASSWORD=pb-postgres-pass "$PG_BIN/psql" -q -h 127.0.0.1 -p 5433 -U postgres -d postgres -v ON_ERROR_STOP=1 <<'SQL'
CREATE ROLE pb_ro LOGIN PASSWORD 'pb-ro-pass';
CREATE ROLE pb_rw LOGIN PASSWORD 'pb-rw-pass';
SET password_encryption = 'md5';
CREATE ROLE pb_md5 LOGIN PASSWORD 'pb-md5-pass';
RESET password_encryption;
CREATE ROLE pb_clear LOGIN PASSWORD 'pb-clear-pass';
CREATE DATABASE pbtest;
GRANT CREATE ON DATABASE pbtest TO pb_rw;
\c pbtest
CREATE TABLE readings (id int PRIMARY KEY, value text);
GRANT SELECT ON readings TO pb_ro, pb_md5, pb_clear;
GRANT SELECT, INSERT, UPDATE ON readings TO pb_rw;
SQL
fi
if pg_up; then echo "peers-probe: PostgreSQL (scram, TLS) ready on 127.0.0.1:5433"; else echo "peers-probe: PostgreSQL on 5433 is NOT available"; fi

# --- Redis on 6380 ------------------------------------------------------------------------
redis_up() { redis-cli -h 127.0.0.1 -p 6380 --no-auth-warning -a pb-redis-pass ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  echo "peers-probe: starting Redis on 6380"
  redis-server --bind 127.0.0.1 --port 6380 --requirepass pb-redis-pass --daemonize yes \
    --save "" --appendonly no --dir "$PEERS_DIR" --logfile "$PEERS_DIR/redis6380.log" >/dev/null
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
fi
if redis_up; then echo "peers-probe: Redis (requirepass) ready on 127.0.0.1:6380"; else echo "peers-probe: Redis on 6380 is NOT available"; fi
