#!/usr/bin/env bash
# Forwarding throughput, end to end: `moat bench` QoS 1 publishers through a rule into
# PostgreSQL and into NATS JetStream (the spool on, as always), beside the naive baseline from
# the same run (`[limits] forward_batch = 1`: one INSERT, one publish per message). For each:
# the publishers' rate (PUBACKs), the rate until the sink has confirmed every message, and the
# broker's CPU per message (from /proc). Private PostgreSQL and nats-server instances on
# loopback ports of their own (crates/moat-forward/examples/bench_servers.rs).
#
#   scripts/bench-forward.sh            # COUNT=50000 PUBS=10 by default
#   COUNT=20000 PUBS=4 scripts/bench-forward.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-50000}
PUBS=${PUBS:-10}
BASELINE_COUNT=${BASELINE_COUNT:-$((COUNT / 10))}
cargo build --release -q -p moat-cli --bin moat -p moat-forward --features moat-forward/testing \
  --example bench_servers
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  exec 3>&- 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# The backends: they stop when their stdin (fd 3 here) closes.
mkfifo "$work/servers.in"
"$bin/examples/bench_servers" <"$work/servers.in" >"$work/servers.out" 2>"$work/servers.err" &
pids+=($!)
exec 3>"$work/servers.in"
for _ in $(seq 600); do grep -q READY "$work/servers.out" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$work/servers.out" || { cat "$work/servers.err"; exit 1; }
pg_url=$(sed -n 's/^PG_URL=//p' "$work/servers.out")
pg_password=$(sed -n 's/^PG_PASSWORD=//p' "$work/servers.out")
nats_url=$(sed -n 's/^NATS_URL=//p' "$work/servers.out")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run SINK BATCH COUNT: prints one result line.
run() {
  local sink=$1 batch=$2 count=$3
  local dir=$work/$sink-$batch
  mkdir -p "$dir"
  printf '%s\n' "$pg_password" >"$dir/pg.pass"
  local target
  if [ "$sink" = postgres ]; then
    target="sink = \"db\"
table = \"bench_b$batch\""
  else
    target="sink = \"queue\"
stream = \"BENCH_B$batch\"
subject = \"b$batch.{topic}\""
  fi
  cat >"$dir/moat.toml" <<TOML
[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
allow_anonymous = true

[admin]
bind = "127.0.0.1:0"

[limits]
forward_batch = $batch

[[forward.sinks]]
name = "db"
kind = "postgres"
url = "$pg_url"
password_file = "pg.pass"

[[forward.sinks]]
name = "queue"
kind = "jetstream"
url = "$nats_url"

[[forward.rules]]
name = "bench"
filters = ["bench/#"]
$target
TOML
  (cd "$dir" && exec "$bin/moat" serve --config moat.toml >"$dir/out" 2>"$dir/err") &
  local moat=$!
  pids+=($moat)
  for _ in $(seq 300); do grep -q "admin API and console on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  local addr admin token
  addr=$(sed -n 's#^moat: listener tcp on mqtt://##p' "$dir/out")
  admin=$(sed -n 's#^moat: admin API and console on \(http://[^/]*\)/.*#\1#p' "$dir/out")
  token=$dir/moat-data/admin.token
  local cpu0 t0 t1 t2 cpu1
  cpu0=$(cpu_ticks "$moat")
  t0=$(date +%s.%N)
  "$bin/moat" bench -L "mqtt://$addr" --pub "$PUBS" --sub 0 -q 1 --count "$count" \
    --topic 'bench/%i' --quiet --json >"$dir/bench.json"
  t1=$(date +%s.%N)
  # Until the sink has confirmed every message (bounded: 10 minutes).
  for _ in $(seq 6000); do
    "$bin/moat" forward status --admin "$admin" --token-file "$token" --json >"$dir/status.json" || true
    if python3 -c "import json,sys; r=json.load(open('$dir/status.json'))[0]; sys.exit(0 if r['forwarded']>=$count and r['spooled']==0 else 1)" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  t2=$(date +%s.%N)
  cpu1=$(cpu_ticks "$moat")
  kill "$moat"; wait "$moat" 2>/dev/null || true
  python3 - "$sink" "$batch" "$count" "$t0" "$t1" "$t2" "$cpu0" "$cpu1" "$dir/status.json" <<'PY'
import json, os, sys
sink, batch, count, t0, t1, t2, c0, c1, status = sys.argv[1:]
count, t0, t1, t2 = int(count), float(t0), float(t1), float(t2)
hz = os.sysconf("SC_CLK_TCK")
cpu_us = (int(c1) - int(c0)) / hz * 1e6 / count
r = json.load(open(status))[0]
print(f"| {sink} | {batch} | {count} | {count / (t1 - t0):,.0f} | {count / (t2 - t0):,.0f} | "
      f"{cpu_us:.1f} | {r['forwarded']} | {r['retries']} |")
PY
}

echo "| sink | forward_batch | messages | PUBACKed msg/s | confirmed by the sink msg/s | broker CPU µs/msg | forwarded | retries |"
echo "|---|---|---|---|---|---|---|---|"
run postgres 500 "$COUNT"
run postgres 1 "$BASELINE_COUNT"
run jetstream 500 "$COUNT"
run jetstream 1 "$BASELINE_COUNT"
