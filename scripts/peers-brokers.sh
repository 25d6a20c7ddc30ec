#!/usr/bin/env bash
# Test-connection peers for the database and broker probes (issue 6), idempotent, bound to
# 127.0.0.1. Runs after peers-probe.sh (it reuses that script's test CA in $PEERS_DIR).
#  - MariaDB (pre-started, 3306): users pb_ro (SELECT only) and pb_rw (can write), db pbtest.
#  - MariaDB with TLS on 3307: a second server in $PEERS_DIR/mariadb3307, the test CA's cert.
#  - RabbitMQ (pre-started, 5672): user pb with vhost pb-vhost, user pb_noperm without rights.
#  - NATS with user pb on 4223, and with TLS as well on 4224.
#  - Mosquitto with a password file (user pb, no anonymous) on 1884 and TLS on 8884.
#  - SMTP (aiosmtpd 1.4.6 in a venv, user pb): STARTTLS + AUTH on 8025, implicit TLS on 8465.
# Passwords are test-only constants the probe tests use.
set -euo pipefail

PEERS_DIR=${PATCHBAY_PROBE_PEERS_DIR:-/tmp/patchbay-peers/probe}
mkdir -p "$PEERS_DIR"

# --- MariaDB users on the pre-started server (3306) --------------------------------------
mysql_users() {
  mariadb -uroot -h127.0.0.1 -P"$1" "${@:2}" <<'SQL'
CREATE DATABASE IF NOT EXISTS pbtest;
CREATE TABLE IF NOT EXISTS pbtest.readings (id int PRIMARY KEY, value text);
CREATE USER IF NOT EXISTS 'pb_ro'@'%' IDENTIFIED BY 'pb-ro-pass';
CREATE USER IF NOT EXISTS 'pb_rw'@'%' IDENTIFIED BY 'pb-rw-pass';
GRANT SELECT ON pbtest.* TO 'pb_ro'@'%';
GRANT SELECT, INSERT, UPDATE, CREATE ON pbtest.* TO 'pb_rw'@'%';
FLUSH PRIVILEGES;
SQL
}
if mariadb -uroot -h127.0.0.1 -P3306 -e 'SELECT 1' >/dev/null 2>&1; then
  mysql_users 3306
  echo "peers-brokers: MariaDB users pb_ro, pb_rw ready on 127.0.0.1:3306"
else
  echo "peers-brokers: MariaDB on 3306 is NOT available"
fi

# --- MariaDB with TLS on 3307 --------------------------------------------------------------
MY_DIR=$PEERS_DIR/mariadb3307
my_tls_up() { mariadb -uroot -h127.0.0.1 -P3307 -e 'SELECT 1' >/dev/null 2>&1; }
if ! my_tls_up && command -v mariadbd >/dev/null && [[ -s $PEERS_DIR/server.pem ]]; then
  if [[ ! -d $MY_DIR/data/mysql ]]; then
    echo "peers-brokers: initialising MariaDB (TLS) on 3307"
    rm -rf "$MY_DIR"; mkdir -p "$MY_DIR/data"
    cp "$PEERS_DIR/server.pem" "$PEERS_DIR/server.key" "$PEERS_DIR/ca.pem" "$MY_DIR/"
    chown -R mysql:mysql "$MY_DIR"; chmod 600 "$MY_DIR/server.key"
    mariadb-install-db --user=mysql --datadir="$MY_DIR/data" --auth-root-authentication-method=normal \
      --skip-test-db >/dev/null 2>&1
  fi
  echo "peers-brokers: starting MariaDB (TLS) on 3307"
  (setsid mariadbd --no-defaults --user=mysql --datadir="$MY_DIR/data" --bind-address=127.0.0.1 --port=3307 \
    --socket="$MY_DIR/mysqld.sock" --pid-file="$MY_DIR/mysqld.pid" --log-error="$MY_DIR/error.log" \
    --ssl-cert="$MY_DIR/server.pem" --ssl-key="$MY_DIR/server.key" --ssl-ca="$MY_DIR/ca.pem" \
    --skip-name-resolve </dev/null >/dev/null 2>&1 &)
  for _ in $(seq 1 100); do my_tls_up && break; sleep 0.2; done
fi
if my_tls_up; then
  mysql_users 3307
  echo "peers-brokers: MariaDB (TLS) ready on 127.0.0.1:3307"
else
  echo "peers-brokers: MariaDB (TLS) on 3307 is NOT available"
fi

# --- RabbitMQ (pre-started, 5672): user pb on vhost pb-vhost, pb_noperm without rights ---
if command -v rabbitmqctl >/dev/null && rabbitmqctl -q status >/dev/null 2>&1; then
  users=$(rabbitmqctl -q list_users 2>/dev/null || true)
  grep -q '^pb\b' <<<"$users" || rabbitmqctl -q add_user pb pb-amqp-pass >/dev/null
  grep -q '^pb_noperm\b' <<<"$users" || rabbitmqctl -q add_user pb_noperm pb-noperm-pass >/dev/null
  rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx pb-vhost || rabbitmqctl -q add_vhost pb-vhost >/dev/null
  rabbitmqctl -q set_permissions -p pb-vhost pb '.*' '.*' '.*' >/dev/null
  echo "peers-brokers: RabbitMQ users pb, pb_noperm and vhost pb-vhost ready on 127.0.0.1:5672"
else
  echo "peers-brokers: RabbitMQ is NOT available"
fi

# --- NATS with a user and password on 4223, and with TLS as well on 4224 --------------------
nats_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
NATS=$(command -v nats-server || ls /usr/sbin/nats-server /usr/local/bin/nats-server 2>/dev/null | head -n1 || true)
if [[ -n $NATS ]]; then
  if ! nats_up 4223; then
    echo "peers-brokers: starting NATS (user/password) on 4223"
    (setsid "$NATS" -a 127.0.0.1 -p 4223 --user pb --pass pb-nats-pass -l "$PEERS_DIR/nats4223.log" </dev/null >/dev/null 2>&1 &)
  fi
  if ! nats_up 4224 && [[ -s $PEERS_DIR/server.pem ]]; then
    echo "peers-brokers: starting NATS (TLS, user/password) on 4224"
    (setsid "$NATS" -a 127.0.0.1 -p 4224 --user pb --pass pb-nats-pass --tls \
      --tlscert "$PEERS_DIR/server.pem" --tlskey "$PEERS_DIR/server.key" \
      -l "$PEERS_DIR/nats4224.log" </dev/null >/dev/null 2>&1 &)
  fi
  for _ in $(seq 1 50); do nats_up 4223 && nats_up 4224 && break; sleep 0.1; done
  for p in 4223 4224; do
    if nats_up $p; then echo "peers-brokers: NATS ready on 127.0.0.1:$p"; else echo "peers-brokers: NATS on $p is NOT available"; fi
  done
else
  echo "peers-brokers: nats-server is NOT installed"
fi

# --- Mosquitto with a password file: plain on 1884, TLS (test CA) on 8884 -----------------
MQ_DIR=$PEERS_DIR/mosquitto
mqtt_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if command -v mosquitto >/dev/null && [[ -s $PEERS_DIR/server.pem ]] && ! mqtt_up 1884; then
  echo "peers-brokers: starting Mosquitto (password file) on 1884 and TLS on 8884"
  mkdir -p "$MQ_DIR"
  cp "$PEERS_DIR/server.pem" "$PEERS_DIR/server.key" "$MQ_DIR/"
  rm -f "$MQ_DIR/passwd"; touch "$MQ_DIR/passwd"
  mosquitto_passwd -b "$MQ_DIR/passwd" pb pb-mqtt-pass
  cat >"$MQ_DIR/mosquitto.conf" <<CONF
per_listener_settings false
allow_anonymous false
password_file $MQ_DIR/passwd
persistence false
log_dest file $MQ_DIR/mosquitto.log
listener 1884 127.0.0.1
listener 8884 127.0.0.1
certfile $MQ_DIR/server.pem
keyfile $MQ_DIR/server.key
CONF
  if id mosquitto >/dev/null 2>&1; then chown -R mosquitto "$MQ_DIR"; fi
  chmod 600 "$MQ_DIR/server.key" "$MQ_DIR/passwd"
  (setsid mosquitto -c "$MQ_DIR/mosquitto.conf" </dev/null >/dev/null 2>&1 &)
  for _ in $(seq 1 50); do mqtt_up 1884 && mqtt_up 8884 && break; sleep 0.1; done
fi
for p in 1884 8884; do
  if mqtt_up $p; then echo "peers-brokers: Mosquitto ready on 127.0.0.1:$p"; else echo "peers-brokers: Mosquitto on $p is NOT available"; fi
done

# --- SMTP (aiosmtpd 1.4.6 in a venv): STARTTLS + AUTH on 8025, implicit TLS on 8465 ---------
SMTP_DIR=$PEERS_DIR/smtp
smtp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ -s $PEERS_DIR/server.pem ]] && { ! smtp_up 8025 || ! smtp_up 8465; }; then
  mkdir -p "$SMTP_DIR"
  if [[ ! -x $SMTP_DIR/venv/bin/python ]] || ! "$SMTP_DIR/venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    echo "peers-brokers: installing aiosmtpd 1.4.6 into $SMTP_DIR/venv"
    python3 -m venv "$SMTP_DIR/venv"
    "$SMTP_DIR/venv/bin/pip" install -q 'aiosmtpd==1.4.6'
  fi
  cat >"$SMTP_DIR/server.py" <<'PY'
"""SMTP peer for the probe tests: user pb / pb-smtp-pass, AUTH only after TLS."""
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

cert, key = sys.argv[1], sys.argv[2]


class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"pb"
        and auth_data.password == b"pb-smtp-pass"
    )
    return AuthResult(success=ok, handled=False)


def context():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


starttls = Controller(Sink(), hostname="127.0.0.1", port=8025, tls_context=context(),
                      authenticator=authenticator, auth_require_tls=True)
implicit = Controller(Sink(), hostname="127.0.0.1", port=8465, ssl_context=context(),
                      authenticator=authenticator, auth_require_tls=False)
starttls.start()
implicit.start()
while True:
    time.sleep(3600)
PY
  echo "peers-brokers: starting the SMTP peer on 8025 (STARTTLS) and 8465 (TLS)"
  (setsid "$SMTP_DIR/venv/bin/python" "$SMTP_DIR/server.py" "$PEERS_DIR/server.pem" "$PEERS_DIR/server.key" \
    </dev/null >"$SMTP_DIR/server.log" 2>&1 &)
  for _ in $(seq 1 100); do smtp_up 8025 && smtp_up 8465 && break; sleep 0.1; done
fi
for p in 8025 8465; do
  if smtp_up $p; then echo "peers-brokers: SMTP ready on 127.0.0.1:$p"; else echo "peers-brokers: SMTP on $p is NOT available"; fi
done
