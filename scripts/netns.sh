#!/usr/bin/env bash
# Two network namespaces for the agent test (issue 7): the server's (pb-srv) and the
# agent's (pb-agt), joined by a veth pair (10.213.7.1/30 ↔ 10.213.7.2/30), loopback up in
# both, and a throwaway PostgreSQL (trust auth) listening on 127.0.0.1:55432 inside pb-agt
# only: reachable from the agent's namespace, not from the server's.
#
#   scripts/netns.sh up   [SUFFIX]   idempotent; needs root, `ip`, PostgreSQL 15 binaries
#   scripts/netns.sh down [SUFFIX]   stops the database, deletes the namespaces and files
#
# SUFFIX (at most 8 of [a-z0-9]) makes the names unique per run (pb-srv-SUFFIX,
# pb-agt-SUFFIX), so parallel runs do not collide: each pair has its own network stacks,
# so the same addresses are reused. No traffic leaves the two namespaces.
set -euo pipefail
cmd=${1:-}
sfx=${2:-}
if [[ ! "$sfx" =~ ^[a-z0-9]{0,8}$ ]]; then
  echo "netns.sh: SUFFIX is at most 8 of [a-z0-9]" >&2
  exit 2
fi
SRV=pb-srv${sfx:+-$sfx}
AGT=pb-agt${sfx:+-$sfx}
# Interface names are at most 15 bytes.
VS=pbs${sfx:-0}
VA=pba${sfx:-0}
DIR=/tmp/pb-netns${sfx:+-$sfx}
PGPORT=${PB_NETNS_PGPORT:-55432}
PGBIN=${PB_NETNS_PGBIN:-/usr/lib/postgresql/15/bin}

has_ns() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

up() {
  if [ "$(id -u)" != 0 ]; then
    echo "netns.sh: needs root (ip netns)" >&2
    exit 2
  fi
  has_ns "$SRV" || ip netns add "$SRV"
  has_ns "$AGT" || ip netns add "$AGT"
  if ! ip -n "$SRV" link show "$VS" >/dev/null 2>&1; then
    ip -n "$AGT" link del "$VA" >/dev/null 2>&1 || true
    ip link add "$VS" type veth peer name "$VA"
    ip link set "$VS" netns "$SRV"
    ip link set "$VA" netns "$AGT"
  fi
  ip -n "$SRV" addr replace 10.213.7.1/30 dev "$VS"
  ip -n "$AGT" addr replace 10.213.7.2/30 dev "$VA"
  for ns in "$SRV" "$AGT"; do ip -n "$ns" link set lo up; done
  ip -n "$SRV" link set "$VS" up
  ip -n "$AGT" link set "$VA" up

  mkdir -p "$DIR"
  chown postgres "$DIR"
  chmod 700 "$DIR"
  cd /
  if [ ! -f "$DIR/pg/PG_VERSION" ]; then
    runuser -u postgres -- "$PGBIN/initdb" -D "$DIR/pg" -A trust -U postgres >"$DIR/initdb.log" 2>&1
  fi
  if ! ip netns exec "$AGT" "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT"; then
    ip netns exec "$AGT" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" \
      -o "-h 127.0.0.1 -p $PGPORT -k $DIR -c fsync=off" -w -t 30 start >/dev/null
  fi
  echo "netns up: $SRV (10.213.7.1) <-> $AGT (10.213.7.2), postgresql 127.0.0.1:$PGPORT in $AGT"
}

down() {
  cd /
  if [ -f "$DIR/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/pg" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
  fi
  # Deleting a namespace deletes the veth end in it, and with it the peer.
  if has_ns "$SRV"; then ip netns del "$SRV"; fi
  if has_ns "$AGT"; then ip netns del "$AGT"; fi
  rm -rf "$DIR"
  echo "netns down: $SRV, $AGT"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: scripts/netns.sh up|down [SUFFIX]" >&2
    exit 2
    ;;
esac
