#!/usr/bin/env bash
# Real-browser tests of the web console against a real `moat serve`.
#
#   scripts/browser-tests.sh                 # MOAT_BIN defaults to target/debug/moat
#   SCREENSHOTS=1 scripts/browser-tests.sh   # also writes docs/console/*.png (1280x800, 375x812)
#
# Installs what is missing (Debian's chromium, mosquitto-clients, openssl; playwright-core from
# tests/browser/package-lock.json, which downloads no browser), makes a PKI with `moat cert`,
# starts the broker in a temporary directory with every listener on a free 127.0.0.1 port,
# waits for its admin port (bounded polling), runs the mocked-API console test and then
# tests/browser/console.test.mjs against the broker, and stops the broker on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MOAT_BIN=${MOAT_BIN:-$ROOT/target/debug/moat}
case "$MOAT_BIN" in /*) ;; *) MOAT_BIN=$ROOT/$MOAT_BIN ;; esac
if [ ! -x "$MOAT_BIN" ]; then
  echo "browser-tests: $MOAT_BIN is missing: build it with 'cargo build -p moat-cli' or set MOAT_BIN" >&2
  exit 2
fi

sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
missing=()
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] || { missing+=(chromium); CHROMIUM=/usr/bin/chromium; }
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "browser-tests: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export CHROMIUM

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "browser-tests: installing playwright-core (no browser download)"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >/dev/null 2>&1 \
    || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund >/dev/null)
fi

# 1. The console alone, against a mocked API (no broker needed). SKIP_MOCK=1 skips it while
#    working on the real-broker tests.
[ -n "${SKIP_MOCK:-}" ] || node --test tests/browser/console-mock.test.mjs

# 2. The console against the real broker.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moat-browser.XXXXXX")
SERVE_PID=
cleanup() {
  local rc=$?
  if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
    kill "$SERVE_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVE_PID" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ]; then
    echo "browser-tests: failed (exit $rc); the broker's directory is kept: $WORK (log: $WORK/serve.log)" >&2
    tail -n 40 "$WORK/serve.log" >&2 2>/dev/null || true
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Five free ports, held open together so that they differ. NATS_PORT stays closed: the
# forwarding rule's JetStream sink points at it, so the sink is down and the spool grows
# (no NATS server or PostgreSQL is needed).
read -r TCP_PORT MQTTS_PORT WSS_PORT ADMIN_PORT NATS_PORT < <(node -e '
  const net = require("net");
  (async () => {
    const s = [];
    for (let i = 0; i < 5; i++) {
      const v = net.createServer();
      await new Promise((r) => v.listen(0, "127.0.0.1", r));
      s.push(v);
    }
    console.log(s.map((v) => v.address().port).join(" "));
    s.forEach((v) => v.close());
  })();')

PKI=$WORK/pki
"$MOAT_BIN" cert ca --out "$PKI" --cn "Browser Test CA" >/dev/null
"$MOAT_BIN" cert server --ca "$PKI" --host localhost --host 127.0.0.1 --out "$PKI" >/dev/null
"$MOAT_BIN" cert client --ca "$PKI" --cn device-1 --out "$PKI" >/dev/null
"$MOAT_BIN" cert client --ca "$PKI" --cn device-2 --out "$PKI" >/dev/null

mkdir -p "$WORK/data"
# A first user, so the password file exists; the ACL starts open.
printf 'seed-password\n' | "$MOAT_BIN" user add seed --stdin --file "$WORK/data/passwd" >/dev/null
printf 'default = "allow"\n' > "$WORK/data/acl.toml"

cat > "$WORK/moat.toml" <<EOF
data_dir = "data"

[auth]
password_file = "passwd"
acl_file = "acl.toml"

[[listeners]]
name = "tcp"
kind = "tcp"
bind = "127.0.0.1:$TCP_PORT"
allow_anonymous = true

[[listeners]]
name = "mqtts"
kind = "tls"
bind = "127.0.0.1:$MQTTS_PORT"
allow_anonymous = true
tls = { cert = "pki/server.pem", key = "pki/server.key", client_auth = "optional", client_ca = "pki/ca.pem" }

[[listeners]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:$WSS_PORT"
allow_anonymous = true
tls = { cert = "pki/server.pem", key = "pki/server.key", client_auth = "optional", client_ca = "pki/ca.pem" }

[admin]
bind = "127.0.0.1:$ADMIN_PORT"

# A sink nobody listens on: down from the first write, which is not fatal.
[[forward.sinks]]
name = "queue"
kind = "jetstream"
url = "nats://127.0.0.1:$NATS_PORT"

[[forward.rules]]
name = "browser-events"
filters = ["fwd/#"]
sink = "queue"
stream = "MOAT_BROWSER"
EOF

(cd "$WORK" && exec "$MOAT_BIN" serve --config moat.toml) >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!

# Wait for the admin port and the token file: at most 300 tries of 0.2 s (60 s).
ready=
for _ in $(seq 1 300); do
  if ! kill -0 "$SERVE_PID" 2>/dev/null; then
    echo "browser-tests: moat serve exited before its admin port opened" >&2
    exit 1
  fi
  if [ -s "$WORK/data/admin.token" ] && (exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT") 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "browser-tests: the admin port 127.0.0.1:$ADMIN_PORT did not open within 60 s" >&2
  exit 1
fi

ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" \
TOKEN="$(head -n 1 "$WORK/data/admin.token")" \
VIEWER_TOKEN="$(head -n 1 "$WORK/data/viewer.token" 2>/dev/null || true)" \
MOAT_BIN="$MOAT_BIN" \
WORK_DIR="$WORK" PKI_DIR="$PKI" \
TCP_PORT="$TCP_PORT" MQTTS_PORT="$MQTTS_PORT" WSS_PORT="$WSS_PORT" ADMIN_PORT="$ADMIN_PORT" NATS_PORT="$NATS_PORT" \
SCREENSHOTS="${SCREENSHOTS:-}" SCREENSHOT_DIR="$ROOT/docs/console" CONSOLE_DIR="${CONSOLE_DIR:-}" \
  node tests/browser/console.test.mjs
