#!/usr/bin/env bash
# Test-connection peers for more probes (issue 6), idempotent, bound to 127.0.0.1:
#  - SNMP: Debian snmpd on udp 127.0.0.1:1161, v2c community pb-snmp-community, v3 users
#    pbuser (SHA / AES, passphrases pb-auth-pass / pb-priv-pass) and pbuser256 (SHA-256 /
#    AES, same passphrases), both rouser authPriv.
#  - ActiveMQ Classic (Debian activemq): STOMP on 61613 (openwire 61616), user pbamq /
#    pb-amq-pass (simpleAuthenticationPlugin, no anonymous access).
#  - SSH/SFTP: a second sshd on 127.0.0.1:2222, user pbssh (password pb-ssh-pass, key
#    ssh/id_pbssh), host key ssh/host_ed25519.
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

# --- ActiveMQ Classic (Debian activemq): STOMP on 61613, openwire on 61616 -----------------
# A copy of the packaged "main" instance with a STOMP connector and a simple
# authentication plugin: user pbamq / pb-amq-pass, anonymous access refused.
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_up 61613; then
  if [ ! -f /usr/share/activemq/bin/activemq.jar ]; then
    echo "peers-more-a: installing activemq"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq activemq >/dev/null
  fi
  AMQ="$PEERS_DIR/activemq"
  mkdir -p "$AMQ/conf" "$AMQ/data"
  cp /etc/activemq/instances-available/main/* "$AMQ/conf/"
  python3 - "$AMQ/conf/activemq.xml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
plugins = """<plugins>
            <simpleAuthenticationPlugin anonymousAccessAllowed="false">
                <users>
                    <authenticationUser username="pbamq" password="pb-amq-pass" groups="users,admins"/>
                </users>
            </simpleAuthenticationPlugin>
        </plugins>
        <transportConnectors>"""
s = s.replace("<transportConnectors>", plugins, 1)
s = s.replace('<transportConnector name="openwire" uri="tcp://127.0.0.1:61616"/>',
              '<transportConnector name="openwire" uri="tcp://127.0.0.1:61616"/>\n'
              '            <transportConnector name="stomp" uri="stomp://127.0.0.1:61613"/>', 1)
open(p, "w").write(s)
PY
  echo "peers-more-a: starting ActiveMQ (STOMP 61613)"
  nohup java -Xmx256M -Dactivemq.home=/usr/share/activemq -Dactivemq.base="$AMQ" \
    -Dactivemq.conf="$AMQ/conf" -Dactivemq.data="$AMQ/data" \
    -jar /usr/share/activemq/bin/activemq.jar start "xbean:file:$AMQ/conf/activemq.xml" \
    >>"$PEERS_DIR/activemq.log" 2>&1 </dev/null &
  disown || true
  for _ in $(seq 1 150); do port_up 61613 && break; sleep 0.2; done
fi
if port_up 61613; then echo "peers-more-a: ActiveMQ STOMP ready on 127.0.0.1:61613"; else echo "peers-more-a: ActiveMQ STOMP on 61613 is NOT available"; fi

# --- SSH / SFTP: a second sshd on 127.0.0.1:2222 ------------------------------------------
# User pbssh with password pb-ssh-pass and the key $PEERS_DIR/ssh/id_pbssh (ed25519, no
# passphrase) authorized; host key $PEERS_DIR/ssh/host_ed25519 (its .pub is what the tests
# pin as known_host_key); SFTP through internal-sftp.
if ! port_up 2222; then
  if [ ! -x /usr/sbin/sshd ]; then
    echo "peers-more-a: installing openssh-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
  fi
  SSHD_DIR="$PEERS_DIR/ssh"
  mkdir -p "$SSHD_DIR" /run/sshd
  [ -f "$SSHD_DIR/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSHD_DIR/host_ed25519"
  [ -f "$SSHD_DIR/id_pbssh" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSHD_DIR/id_pbssh"
  id pbssh >/dev/null 2>&1 || useradd -m -s /bin/bash pbssh
  echo 'pbssh:pb-ssh-pass' | chpasswd
  install -d -m 700 -o pbssh -g pbssh /home/pbssh/.ssh
  install -m 600 -o pbssh -g pbssh "$SSHD_DIR/id_pbssh.pub" /home/pbssh/.ssh/authorized_keys
  chmod 644 "$SSHD_DIR/id_pbssh" # the tests read it (test-only key)
  echo "peers-more-a: starting sshd on 127.0.0.1:2222"
  /usr/sbin/sshd -f /dev/null -o ListenAddress=127.0.0.1:2222 -o HostKey="$SSHD_DIR/host_ed25519" \
    -o PidFile="$SSHD_DIR/sshd.pid" -o PasswordAuthentication=yes -o KbdInteractiveAuthentication=no \
    -o "Subsystem=sftp internal-sftp" -o UsePAM=no -E "$PEERS_DIR/sshd.log"
  for _ in $(seq 1 50); do port_up 2222 && break; sleep 0.1; done
fi
if port_up 2222; then echo "peers-more-a: sshd ready on 127.0.0.1:2222"; else echo "peers-more-a: sshd on 2222 is NOT available"; fi
