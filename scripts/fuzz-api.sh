#!/usr/bin/env bash
# Fuzzes the REST API from its own OpenAPI document with schemathesis: random and
# schema-shaped requests to every operation, as the initial administrator, asserting that
# none is answered with a 5xx and that every answer is one the document describes (status,
# content type, body schema); then reads the server's log for 5xx answers and panics.
#
#   bash scripts/fuzz-api.sh [SECONDS]      default 300; needs root and `ip` (iproute2)
#
# The server and the fuzzer run in a network namespace of their own that has only a
# loopback interface: connection tests, webhook deliveries and external credential
# managers that the fuzzer points at random hosts cannot send a packet off the machine.
# Not part of the test command (it takes minutes and its inputs are random); the seed of
# each run is printed, and SCHEMATHESIS_SEED=N replays one.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
ns=pb-fuzz
work=$(mktemp -d /tmp/pb-fuzz.XXXXXX)
venv=${PATCHBAY_FUZZ_VENV:-$HOME/.cache/patchbay-fuzz-venv}
port=18080
# What each answer is checked for: not a 5xx, a status the operation documents, the
# documented content type, and a body matching the documented schema.
checks=${PATCHBAY_FUZZ_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance}

if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis==4.32.5'
fi
cargo build --locked -q -p patchbay
bin="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/patchbay"

if ! ip netns list | awk '{print $1}' | grep -qx "$ns"; then
  ip netns add "$ns"
fi
ip netns exec "$ns" ip link set lo up

mkdir -p "$work/data"
ip netns exec "$ns" env PATCHBAY_DATA_DIR="$work/data" PATCHBAY_LISTEN="127.0.0.1:$port" \
  PATCHBAY_AUTH_FAILURE_LIMIT=100000000 NO_COLOR=1 "$bin" serve >"$work/server.log" 2>&1 &
server=$!
status=1
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  ip netns delete "$ns" 2>/dev/null || true
  # A clean run leaves nothing; a failed one keeps its logs.
  if [ "$status" -eq 0 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  [ -s "$work/data/initial-admin-token" ] && break
  sleep 0.1
done
token=$(cat "$work/data/initial-admin-token")

# Something to find: a connection, a shared credential, a webhook (to a name that cannot
# resolve in the namespace) and a zone, whose ids the fuzzer is given for the operations
# that take them, so that it reaches past the 404 of a random id.
ip netns exec "$ns" python3 - "$port" "$token" >"$work/schemathesis.toml" <<'PY'
import json, sys, urllib.request

port, token = sys.argv[1], sys.argv[2]
def call(method, path, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)

ws = call("GET", "/workspaces")["items"][0]["id"]
project = call("GET", f"/workspaces/{ws}/projects")["items"][0]["id"]
user = call("GET", "/users")["items"][0]["id"]
cred = call("POST", f"/workspaces/{ws}/credentials", {"name": "fuzz-cred",
            "kind": "username_password", "secrets": {"username": "u", "password": "p"}})["id"]
conn = call("POST", f"/projects/{project}/connections", {"name": "fuzz-pg", "type": "postgresql",
            "settings": {"host": "db.internal", "database": "d"}, "credential": {"id": cred}})["id"]
hook = call("POST", f"/workspaces/{ws}/webhooks", {"url": "https://hooks.invalid/patchbay"})["id"]
zone = call("POST", f"/workspaces/{ws}/zones", {"name": "fuzz-zone"})["id"]
ops = [
    ("^/api/v1/connections/", {"id": conn}),
    ("^/api/v1/credentials/", {"id": cred, "version": "1"}),
    ("^/api/v1/webhooks/", {"id": hook}),
    ("^/api/v1/zones/", {"id": zone}),
    ("^/api/v1/workspaces/", {"ws": ws, "zone": zone, "user": user}),
    ("^/api/v1/projects/", {"project": project, "name": "fuzz-pg"}),
]
for regex, params in ops:
    print("[[operations]]")
    print(f"include-path-regex = {json.dumps(regex)}")
    print("parameters = {" + ", ".join(f'"path.{k}" = {json.dumps(v)}' for k, v in params.items()) + "}")
    print()
PY

seed_args=()
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then
  seed_args=(--seed "$SCHEMATHESIS_SEED")
fi
# Signing out (DELETE /sessions/current) or deleting tokens would revoke the fuzzer's own
# token and leave the rest of the run at 401; the throttle is lifted for the same reason.
status=0
cd "$work" # schemathesis keeps a cache (.schemathesis/) in its working directory
ip netns exec "$ns" "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "http://127.0.0.1:$port/api/openapi.json" \
  -H "Authorization: Bearer $token" --checks "$checks" --max-time "$secs" -w 2 \
  --phases fuzzing,stateful --exclude-path /api/v1/sessions/current \
  --exclude-path '/api/v1/tokens/{id}' "${seed_args[@]}" | tee "$work/schemathesis.log" ||
  status=$?

log=$(sed 's/\x1b\[[0-9;]*m//g' "$work/server.log")
echo
echo "answers by status:"
grep -o 'status=[0-9]*' <<<"$log" | sort | uniq -c || true
if grep -qE 'status=5[0-9][0-9]|panicked' <<<"$log"; then
  echo "fuzz-api: the server answered 5xx or panicked (log: $work/server.log)" >&2
  status=1
fi
if [ "$status" -eq 0 ]; then
  echo "fuzz-api: no 5xx, no panic"
else
  echo "fuzz-api: FAILED (files in $work)" >&2
fi
exit "$status"
