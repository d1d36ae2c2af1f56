#!/usr/bin/env bash
# Runs Moat's whole test suite on a fresh machine. Installs what the tests need when it is
# missing (Debian: mosquitto, mosquitto-clients, openssl, postgresql, nats-server, chromium; a
# Python venv in .venv with paho-mqtt, pytest and schemathesis; cargo-nextest; playwright-core
# from npm, which downloads no browser), then runs the Rust tests, schemathesis against the
# admin API (scripts/schemathesis.sh), the Python interop tests and the console's real-browser
# tests.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
missing=()
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# moat-forward's tests start private PostgreSQL and nats-server instances (its testing.rs).
command -v postgres >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null \
  || missing+=(postgresql)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's mosquitto (and postgresql, nats-server) may start system services on their usual
# ports; the tests start their own on ephemeral ports only.
export PATH="$PATH:/usr/sbin"

if ! .venv/bin/python -c 'import paho.mqtt, pytest, schemathesis' >/dev/null 2>&1; then
  echo "test.sh: creating .venv with paho-mqtt, pytest and schemathesis"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check 'paho-mqtt==2.2.0' 'pytest>=8,<9' \
    'schemathesis==4.32.5'
fi

cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest

cargo build -p moat-cli
cargo nextest run --workspace --no-fail-fast
MOAT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/moat" scripts/schemathesis.sh
MOAT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/moat" .venv/bin/python -m pytest -q tests/interop
MOAT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/moat" scripts/browser-tests.sh
