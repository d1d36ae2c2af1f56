#!/usr/bin/env bash
# Fuzzes the admin API of a live `moat serve` with schemathesis, against the OpenAPI document
# the server itself serves (GET /api/v1/openapi.json): every answer must be no server error, a
# documented status, a documented content type, and match its documented schema.
#
# The broker runs in a temp dir with tcp, tls and wss listeners on free loopback ports
# (certificates made with `moat cert ca` / `moat cert server`) and the admin API on a free
# port; a subscriber and a few retained messages give the list endpoints something to show.
# It is stopped by pid on exit. Exits non-zero on any failure.
#
#   scripts/schemathesis.sh            # target/debug/moat (cargo build -p moat-cli first)
#   MOAT_BIN=path/to/moat scripts/schemathesis.sh
#   SCHEMATHESIS_EXAMPLES=50 scripts/schemathesis.sh   # more examples per operation
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
moat_bin="${MOAT_BIN:-$root/target/debug/moat}"
examples="${SCHEMATHESIS_EXAMPLES:-50}"
schemathesis_version=4.32.5

if [ ! -x "$moat_bin" ]; then
  echo "schemathesis.sh: $moat_bin is not there: run cargo build -p moat-cli (or set MOAT_BIN)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
if [ "$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" != "$schemathesis_version" ]; then
  echo "schemathesis.sh: installing schemathesis $schemathesis_version into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
st="$root/.venv/bin/schemathesis"

tmp=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Free loopback ports, all taken at once so that they differ.
read -r tcp_port tls_port wss_port admin_port < <(.venv/bin/python - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
EOF
)

cd "$tmp"
"$moat_bin" cert ca --out pki --cn "schemathesis CA" >/dev/null
"$moat_bin" cert server --ca pki --host 127.0.0.1 --host localhost --out pki >/dev/null
mkdir -p data
printf 'default = "allow"\n' >data/acl.toml
cat >moat.toml <<EOF
data_dir = "data"

[[listeners]]
name = "tcp"
bind = "127.0.0.1:$tcp_port"
allow_anonymous = true

[[listeners]]
name = "mqtts"
kind = "tls"
bind = "127.0.0.1:$tls_port"
[listeners.tls]
cert = "pki/server.pem"
key = "pki/server.key"

[[listeners]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:$wss_port"
[listeners.tls]
cert = "pki/server.pem"
key = "pki/server.key"

[auth]
acl_file = "acl.toml"

[admin]
bind = "127.0.0.1:$admin_port"
EOF

"$moat_bin" serve --config moat.toml >serve.out 2>serve.err &
pids+=($!)
broker_pid=$!
base="http://127.0.0.1:$admin_port"

# Bounded wait for the admin API (and the broker still running).
for _ in $(seq 1 300); do
  if ! kill -0 "$broker_pid" 2>/dev/null; then
    echo "schemathesis.sh: moat serve exited" >&2
    cat serve.out serve.err >&2
    exit 1
  fi
  if curl -fsS -o /dev/null "$base/api/v1/openapi.json" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
curl -fsS -o openapi.json "$base/api/v1/openapi.json"
if grep -q "$(cat data/admin.token)" serve.out serve.err; then
  echo "schemathesis.sh: the admin token was printed" >&2
  exit 1
fi

# Something to list: a connected subscriber with subscriptions, retained messages.
"$moat_bin" sub -h 127.0.0.1 -p "$tcp_port" -V mqttv5 -i fuzz-subscriber -t 'fuzz/#' -t 'other/+' -q 1 \
  >/dev/null 2>&1 &
pids+=($!)
for t in fuzz/a fuzz/b other/c; do
  "$moat_bin" pub -h 127.0.0.1 -p "$tcp_port" -t "$t" -m "retained on $t" -r -q 1
done

token=$(cat data/admin.token)
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
common=(--url "$base" -H "Authorization: Bearer $token" --checks "$checks"
  --max-examples "$examples" --workers 2
  --request-timeout 30 --seed 1 --suppress-health-check too_slow,filter_too_much
  --output-truncate false)

status=0
# Every operation but the login (bad tokens there slow the whole address down).
"$st" run openapi.json "${common[@]}" --exclude-path /api/v1/login \
  --phases examples,coverage,fuzzing,stateful || status=1
# The login last, alone: it may leave the address blocked, which is then what it answers.
"$st" run openapi.json "${common[@]}" --include-path /api/v1/login \
  --phases examples,coverage,fuzzing || status=1

if ! kill -0 "$broker_pid" 2>/dev/null; then
  echo "schemathesis.sh: moat serve died during the run" >&2
  cat serve.err >&2
  status=1
fi
if grep -q "$token" data/audit.log; then
  echo "schemathesis.sh: the admin token is in audit.log" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis.sh: FAILED" >&2
else
  echo "schemathesis.sh: passed"
fi
exit "$status"
