#!/usr/bin/env bash
# Forwarding benchmarks, end to end, against private PostgreSQL and nats-server instances on
# loopback ports of their own (crates/moat-forward/examples/bench_servers.rs). Three modes:
#
# throughput (default): `moat bench` QoS 1 publishers through a rule into PostgreSQL and into
#   NATS JetStream (the spool on, as always), beside the naive baseline from the same run
#   (`[limits] forward_batch = 1`: one INSERT, one publish per message). For each: the
#   publishers' rate (PUBACKs), the rate until the sink has confirmed every message, and the
#   broker's CPU per message (from /proc).
# latency: QoS 1 publishers paced at RATE msg/s for SECS s (crates/moat-forward/examples/
#   forward_probe.rs, each payload carrying its send time) while a reader follows the sink
#   (PostgreSQL polled every 2 ms; JetStream through an ordered consumer): p50/p90/p99/max from
#   PUBLISH to the message visible in the sink, for forward_batch 500 and 1, into each sink.
# outage: RATE msg/s QoS 1 for OUT_SECS s through two rules (PostgreSQL and JetStream); WARM s
#   in, both backends are SIGKILLed for OUTAGE s; BROKER_KILL_AT s into the outage the broker is
#   SIGKILLed and started again on the same data directory and ports (the publishers
#   reconnect). Then, bounded, until the spools are empty; then every acknowledged message
#   (publisher id and sequence in its payload) is looked up in the table and the stream.
#
#   scripts/bench-forward.sh                      # COUNT=50000 PUBS=10 by default
#   COUNT=20000 PUBS=4 scripts/bench-forward.sh
#   scripts/bench-forward.sh latency              # RATE=5000 SECS=20 CONNS=10 DRAIN=20
#   CASES="jetstream:500" scripts/bench-forward.sh latency   # sink:forward_batch, one or more
#   scripts/bench-forward.sh outage               # RATE=5000 OUT_SECS=120 WARM=15 OUTAGE=60
#   scripts/bench-forward.sh all
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-throughput}
case $MODE in throughput | latency | outage | all) ;; *)
  echo "usage: $0 [throughput|latency|outage|all]" >&2
  exit 2
  ;;
esac
COUNT=${COUNT:-50000}
PUBS=${PUBS:-10}
BASELINE_COUNT=${BASELINE_COUNT:-$((COUNT / 10))}
RATE=${RATE:-5000}
SECS=${SECS:-20}
CONNS=${CONNS:-10}
DRAIN=${DRAIN:-20}
OUT_SECS=${OUT_SECS:-120}
WARM=${WARM:-15}
OUTAGE=${OUTAGE:-60}
BROKER_KILL_AT=${BROKER_KILL_AT:-20}
cargo build --release -q -p moat-cli --bin moat -p moat-forward --features moat-forward/testing \
  --example bench_servers --example forward_probe
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d)
pids=()
servers=
cleanup() {
  # Brokers and pollers first; then the backends, which stop (by pid, through Drop) when
  # their stdin closes: a signal would end bench_servers without stopping them.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  exec 3>&- 2>/dev/null || true
  if [ -n "$servers" ]; then
    for _ in $(seq 300); do kill -0 "$servers" 2>/dev/null || break; sleep 0.1; done
    kill "$servers" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# The backends: they stop when their stdin (fd 3 here) closes.
mkfifo "$work/servers.in"
"$bin/examples/bench_servers" <"$work/servers.in" >"$work/servers.out" 2>"$work/servers.err" &
servers=$!
exec 3>"$work/servers.in"
for _ in $(seq 600); do grep -q READY "$work/servers.out" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$work/servers.out" || { cat "$work/servers.err"; exit 1; }
pg_url=$(sed -n 's/^PG_URL=//p' "$work/servers.out")
pg_password=$(sed -n 's/^PG_PASSWORD=//p' "$work/servers.out")
nats_url=$(sed -n 's/^NATS_URL=//p' "$work/servers.out")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# write_config DIR BATCH LISTEN ADMIN RULES: a broker configuration with both sinks.
write_config() {
  local dir=$1 batch=$2 listen=$3 admin=$4 rules=$5
  mkdir -p "$dir"
  printf '%s\n' "$pg_password" >"$dir/pg.pass"
  cat >"$dir/moat.toml" <<TOML
[[listeners]]
name = "tcp"
bind = "$listen"
allow_anonymous = true

[admin]
bind = "$admin"

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

$rules
TOML
}

# start_broker DIR: starts `moat serve` in DIR (its log in DIR/out.N); sets moat (the pid),
# addr (host:port of the MQTT listener), admin (http://host:port) and token.
start_broker() {
  local dir=$1 n=0
  while [ -e "$dir/out.$n" ]; do n=$((n + 1)); done
  (cd "$dir" && exec "$bin/moat" serve --config moat.toml >"$dir/out.$n" 2>"$dir/err.$n") &
  moat=$!
  pids+=($moat)
  for _ in $(seq 600); do
    grep -q "admin API and console on" "$dir/out.$n" 2>/dev/null && break
    kill -0 "$moat" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "admin API and console on" "$dir/out.$n" || { cat "$dir/err.$n" >&2; return 1; }
  addr=$(sed -n 's#^moat: listener tcp on mqtt://##p' "$dir/out.$n")
  admin=$(sed -n 's#^moat: admin API and console on \(http://[^/]*\)/.*#\1#p' "$dir/out.$n")
  token=$dir/moat-data/admin.token
}

stop_broker() {
  kill "$moat" 2>/dev/null || true
  wait "$moat" 2>/dev/null || true
}

# A rule RULE for messages under FILTER into SINK (postgres, jetstream) at table or stream NAME.
rule() {
  local rule=$1 filter=$2 sink=$3 name=$4
  if [ "$sink" = postgres ]; then
    printf '[[forward.rules]]\nname = "%s"\nfilters = ["%s"]\nsink = "db"\ntable = "%s"\n\n' \
      "$rule" "$filter" "$name"
  else
    printf '[[forward.rules]]\nname = "%s"\nfilters = ["%s"]\nsink = "queue"\nstream = "%s"\nsubject = "%s.{topic}"\n\n' \
      "$rule" "$filter" "$name" "$(echo "$name" | tr 'A-Z' 'a-z')"
  fi
}

# servers_do COMMAND: a command to bench_servers ("kill pg", "start nats", ...), waits for its
# answer (bounded: 90 s).
servers_do() {
  local before
  before=$(grep -c "^OK \|^ERR " "$work/servers.out" || true)
  echo "$1" >&3
  for _ in $(seq 900); do
    [ "$(grep -c "^OK \|^ERR " "$work/servers.out" || true)" -gt "$before" ] && break
    sleep 0.1
  done
  tail -n 1 "$work/servers.out" | grep -q "^OK $1" || { echo "bench_servers: $1 failed" >&2; tail -n 3 "$work/servers.out" >&2; return 1; }
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# throughput_run SINK BATCH COUNT: prints one result line.
throughput_run() {
  local sink=$1 batch=$2 count=$3
  local dir=$work/$sink-$batch
  local name=bench_b$batch
  [ "$sink" = postgres ] || name=BENCH_B$batch
  write_config "$dir" "$batch" 127.0.0.1:0 127.0.0.1:0 "$(rule bench 'bench/#' "$sink" "$name")"
  start_broker "$dir"
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
  stop_broker
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

throughput() {
  echo "| sink | forward_batch | messages | PUBACKed msg/s | confirmed by the sink msg/s | broker CPU µs/msg | forwarded | retries |"
  echo "|---|---|---|---|---|---|---|---|"
  throughput_run postgres 500 "$COUNT"
  throughput_run postgres 1 "$BASELINE_COUNT"
  throughput_run jetstream 500 "$COUNT"
  throughput_run jetstream 1 "$BASELINE_COUNT"
}

# latency_run SINK BATCH: prints one result line.
# Each run its own table or stream: a new broker's keys start again at 0, so rows of an
# earlier run under the same name would be taken for this run's (and its own rows dropped as
# duplicates of them).
lat_runs=0
latency_run() {
  local sink=$1 batch=$2
  lat_runs=$((lat_runs + 1))
  local dir=$work/lat-$lat_runs-$sink-$batch name reader
  if [ "$sink" = postgres ]; then
    name=lat_${lat_runs}_b$batch
    reader=(--pg-url "$pg_url" --pg-password "$pg_password" --table "$name")
  else
    name=LAT_${lat_runs}_B$batch
    reader=(--nats-url "$nats_url" --stream "$name" --subjects "lat_${lat_runs}_b$batch.>")
  fi
  write_config "$dir" "$batch" 127.0.0.1:0 127.0.0.1:0 "$(rule lat 'lat/#' "$sink" "$name")"
  start_broker "$dir"
  "$bin/examples/forward_probe" latency --mqtt "$addr" --topic lat --rate "$RATE" \
    --secs "$SECS" --conns "$CONNS" --drain "$DRAIN" "${reader[@]}" >"$dir/probe.json"
  "$bin/moat" forward status --admin "$admin" --token-file "$token" --json >"$dir/status.json" || true
  # The broker's own view: moat_forward_sink_write_seconds (one sample per batch written).
  curl -sf -H "Authorization: Bearer $(cat "$token")" "$admin/metrics" >"$dir/metrics.txt" || true
  stop_broker
  python3 - "$sink" "$batch" "$dir/probe.json" "$dir/status.json" "$dir/metrics.txt" <<'PY'
import json, re, sys
sink, batch, probe, status, metrics = sys.argv[1:]
p = json.load(open(probe))
r = json.load(open(status))[0]
ms = lambda v: f"{v:,.1f}" if isinstance(v, (int, float)) else str(v)
h = {}
for line in open(metrics):
    m = re.match(r'moat_forward_sink_write_seconds_(count|sum|bucket)\{(.*)\} (\S+)', line)
    if m:
        le = re.search(r'(?<![a-z_])le="([^"]+)"', m.group(2))
        key = (round(float(le.group(1)), 6) if le.group(1) != "+Inf" else None) if le else None
        h[(m.group(1), key)] = float(m.group(3))
writes = h.get(("count", None), 0)
mean = h.get(("sum", None), 0) / writes * 1e3 if writes else 0
slow = writes - h.get(("bucket", "0.128"), writes)
print(f"| {sink} | {batch} | {p['target_rate']:,.0f} | {p['publish_rate']:,.0f} | "
      f"{p['sink_rate']:,.0f} | {ms(p['p50_ms'])} | {ms(p['p90_ms'])} | {ms(p['p99_ms'])} | "
      f"{ms(p['p999_ms'])} | {ms(p['max_ms'])} | {p['acked']:,} | {p['not_seen']:,} | "
      f"{r['retries']} | {writes:,.0f} | {mean:.1f} | {slow:,.0f} |")
PY
}

latency() {
  echo "| sink | forward_batch | target msg/s | PUBACKed msg/s | visible in the sink msg/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | acknowledged | not visible after ${DRAIN} s | retries | sink writes | mean write ms | writes > 128 ms |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  local c
  for c in ${CASES:-postgres:500 postgres:1 jetstream:500 jetstream:1}; do
    latency_run "${c%:*}" "${c#*:}"
  done
}

# at T: sleeps until T seconds after the outage run's start (t0).
at() {
  local left
  left=$(awk -v t0="$t0" -v t="$1" -v now="$(date +%s.%N)" 'BEGIN { d = t0 + t - now; print (d > 0 ? d : 0) }')
  sleep "$left"
}

outage() {
  local dir=$work/outage
  local ports
  ports=$(python3 -c "import socket
ss=[socket.socket() for _ in range(2)]
[s.bind(('127.0.0.1',0)) for s in ss]
print(' '.join(str(s.getsockname()[1]) for s in ss))")
  local mqtt_port=${ports% *} admin_port=${ports#* }
  write_config "$dir" 500 "127.0.0.1:$mqtt_port" "127.0.0.1:$admin_port" \
    "$(rule out_pg 'out/#' postgres out_pg)
$(rule out_js 'out/#' jetstream OUT_JS)"
  start_broker "$dir"
  # The spools, every 0.5 s (bounded: 1,800 samples), each line "unix-time JSON".
  (
    for _ in $(seq 1800); do
      s=$("$bin/moat" forward status --admin "http://127.0.0.1:$admin_port" --token-file "$token" --json 2>/dev/null | tr -d '\n') || true
      [ -n "$s" ] && echo "$(date +%s.%N) $s"
      sleep 0.5
    done
  ) >"$dir/status.log" &
  local poller=$!
  pids+=($poller)
  t0=$(date +%s.%N)
  "$bin/examples/forward_probe" load --mqtt "127.0.0.1:$mqtt_port" --topic out --rate "$RATE" \
    --secs "$OUT_SECS" --conns "$CONNS" --acked "$dir/acked.txt" >"$dir/load.json" &
  local load=$!
  pids+=($load)
  local ev=$dir/events
  at "$WARM"
  servers_do "kill pg"
  servers_do "kill nats"
  echo "sinks_killed $(date +%s.%N)" >>"$ev"
  at $((WARM + BROKER_KILL_AT))
  kill -9 "$moat"
  wait "$moat" 2>/dev/null || true
  echo "broker_killed $(date +%s.%N)" >>"$ev"
  start_broker "$dir"
  echo "broker_up $(date +%s.%N)" >>"$ev"
  at $((WARM + OUTAGE))
  servers_do "start pg"
  echo "pg_up $(date +%s.%N)" >>"$ev"
  servers_do "start nats"
  echo "nats_up $(date +%s.%N)" >>"$ev"
  wait "$load"
  echo "load_end $(date +%s.%N)" >>"$ev"
  # Until both spools are empty (bounded: 300 s).
  for _ in $(seq 3000); do
    "$bin/moat" forward status --admin "$admin" --token-file "$token" --json >"$dir/status.json" 2>/dev/null || true
    python3 -c "import json,sys; sys.exit(0 if all(r['spooled']==0 for r in json.load(open('$dir/status.json'))) else 1)" 2>/dev/null && break
    sleep 0.1
  done
  echo "drained $(date +%s.%N)" >>"$ev"
  kill "$poller" 2>/dev/null || true
  "$bin/examples/forward_probe" check --acked "$dir/acked.txt" --pg-url "$pg_url" \
    --pg-password "$pg_password" --table out_pg >"$dir/check_pg.json"
  "$bin/examples/forward_probe" check --acked "$dir/acked.txt" --nats-url "$nats_url" \
    --stream OUT_JS >"$dir/check_js.json"
  stop_broker
  python3 - "$dir" "$t0" <<'PY'
import json, sys
d, t0 = sys.argv[1], float(sys.argv[2])
ev = {}
for line in open(f"{d}/events"):
    k, v = line.split()
    ev[k] = float(v) - t0
load = json.load(open(f"{d}/load.json"))
status = json.load(open(f"{d}/status.json"))
samples = []
for line in open(f"{d}/status.log"):
    ts, js = line.split(" ", 1)
    try:
        samples.append((float(ts) - t0, {r["rule"]: r for r in json.loads(js)}))
    except ValueError:
        pass
print(f"events (s after the load started): " + ", ".join(f"{k} {v:.1f}" for k, v in ev.items()))
print(f"load: {json.dumps(load)}")
print()
print("| sink | acknowledged (PUBACK received) | not acknowledged | rows / stream messages | distinct payloads | acknowledged lost | stored, never acknowledged | duplicate payloads | duplicate msg_key / Nats-Msg-Id | spool peak (records) | spool peak (MB) | oldest record peak (s) | caught up after the sink's restart (s) | drain after the load ended (s) | retries |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for rule, sink, up in (("out_pg", "postgres", "pg_up"), ("out_js", "jetstream", "nats_up")):
    c = json.load(open(f"{d}/check_{'pg' if sink == 'postgres' else 'js'}.json"))
    mine = [(t, s[rule]) for t, s in samples if rule in s]
    peak = max((r["spooled"] for _, r in mine), default=0)
    peak_mb = max((r["spooled_bytes"] for _, r in mine), default=0) / 1e6
    age = max((r["oldest_age_seconds"] for _, r in mine), default=0)
    # Caught up: the first sample after the sink's restart whose spool holds under 1,000
    # records (a fifth of a second of the load).
    caught = next((t - ev[up] for t, r in mine if t > ev[up] and r["spooled"] < 1000), None)
    drain = ev["drained"] - ev["load_end"]
    r = next(x for x in status if x["rule"] == rule)
    rows = c["stream_messages"] if c["stream_messages"] is not None else c["rows"]
    print(f"| {sink} | {c['acked']:,} | {load['not_acked']:,} | {rows:,} | {c['distinct_payloads']:,} | "
          f"{c['lost']:,} | {c['stored_not_acked']:,} | {c['duplicate_payload_rows']:,} | "
          f"{c['duplicate_keys']:,} | {peak:,} | {peak_mb:,.1f} | {age} | "
          f"{'n/a' if caught is None else f'{caught:.1f}'} | {drain:.1f} | {r['retries']} |")
    if c["lost"]:
        print(f"  lost sample: {c['lost_sample']}")
PY
}

case $MODE in
throughput) throughput ;;
latency) latency ;;
outage) outage ;;
all)
  throughput
  echo
  latency
  echo
  outage
  ;;
esac
