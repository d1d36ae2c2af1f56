#!/usr/bin/env bash
# QoS 1 to a persistent session: Moat with group commit, Moat with fsync-each, and mosquitto with
# persistence on, in one run (brokers on core 0, `moat bench --persistent` on core 1). Prints a
# Markdown table; medians of RUNS runs.
#
# mosquitto's persistence writes its database every autosave_interval (here 1 s), not before it
# acknowledges: it is not the same durability as Moat's (acknowledged = fsynced).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
export PATH="$PATH:/usr/sbin"
command -v mosquitto >/dev/null || { echo "install mosquitto (scripts/bench-vs-mosquitto.sh does)" >&2; exit 2; }
cargo build --release -q -p moat-cli
MOAT="$PWD/target/release/moat"
pin_broker=(); pin_load=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  pin_broker=(taskset -c 0); pin_load=(taskset -c 1)
fi
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; }

measure() { # port -> msgs/s
  "${pin_load[@]}" "$MOAT" bench -L "mqtt://127.0.0.1:$1" --pub 1 --sub 1 -q 1 --persistent \
    --duration "$DURATION" --drain 3 --json --quiet 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["received_per_sec"]))' || echo nan
}

row() { # name, start command...
  local name=$1; shift
  local vals=()
  for _ in $(seq "$RUNS"); do
    rm -rf "$work/data"; mkdir -p "$work/data"
    local port; port=$(free_port)
    "$@" "$port" &
    pid=$!
    wait_port "$port"
    vals+=("$(measure "$port")")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
  echo "| $name | $(python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x!="nan"]; print(round(statistics.median(v)) if v else "n/a")' "${vals[@]}") | ${vals[*]} |"
}

moat_with() { # durability, port
  cat >"$work/moat.toml" <<EOF
data_dir = "data"
[[listeners]]
name = "local"
bind = "127.0.0.1:$2"
allow_anonymous = true
[store]
durability = "$1"
EOF
  cd "$work" && exec "${pin_broker[@]}" "$MOAT" serve --config moat.toml >/dev/null 2>&1
}
mosquitto_with() { # port
  cat >"$work/mosquitto.conf" <<EOF
listener $1 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/data/
autosave_interval 1
max_queued_messages 100000
EOF
  [ "$(id -u)" -eq 0 ] && echo "user root" >>"$work/mosquitto.conf"
  exec "${pin_broker[@]}" mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1
}

echo "| QoS 1, 1 -> 1 persistent subscriber (msgs/s) | median | runs |"
echo "|---|---|---|"
row "Moat, group commit" moat_with group-commit
row "Moat, fsync-each" moat_with fsync-each
row "mosquitto, persistence true (autosave 1 s)" mosquitto_with
