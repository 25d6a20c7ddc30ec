#!/usr/bin/env bash
# Test-connection peers for more probes (issue 6), idempotent, bound to 127.0.0.1:
#  - SNMP: Debian snmpd on udp 127.0.0.1:1161, v2c community pb-snmp-community, v3 users
#    pbuser (SHA / AES, passphrases pb-auth-pass / pb-priv-pass) and pbuser256 (SHA-256 /
#    AES, same passphrases), both rouser authPriv.
set -euo pipefail

PEERS_DIR=${PATCHBAY_PROBE_PEERS_DIR:-/tmp/patchbay-peers/probe}
mkdir -p "$PEERS_DIR"

need_apt=()
command -v snmpd >/dev/null || need_apt+=(snmpd)
command -v snmpget >/dev/null || need_apt+=(snmp)
if ((${#need_apt[@]})); then
  echo "peers-more-a: installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- SNMP (snmpd) -------------------------------------------------------------------------
snmp_up() { snmpget -v2c -c pb-snmp-community -t 1 -r 0 udp:127.0.0.1:1161 1.3.6.1.2.1.1.1.0 >/dev/null 2>&1; }
if ! snmp_up; then
  echo "peers-more-a: starting snmpd on udp 127.0.0.1:1161"
  cat >"$PEERS_DIR/snmpd.conf" <<'CONF'
agentAddress udp:127.0.0.1:1161
rocommunity pb-snmp-community 127.0.0.1
createUser pbuser SHA "pb-auth-pass" AES "pb-priv-pass"
createUser pbuser256 SHA-256 "pb-auth-pass" AES "pb-priv-pass"
rouser pbuser priv
rouser pbuser256 priv
CONF
  nohup snmpd -f -Lo -C -c "$PEERS_DIR/snmpd.conf" -p "$PEERS_DIR/snmpd.pid" \
    >>"$PEERS_DIR/snmpd.log" 2>&1 </dev/null &
  disown || true
  for _ in $(seq 1 50); do snmp_up && break; sleep 0.2; done
fi
if snmp_up; then echo "peers-more-a: snmpd ready on udp 127.0.0.1:1161"; else echo "peers-more-a: snmpd on 1161 is NOT available"; fi
