#!/usr/bin/env bash
# Moat against mosquitto, same run, same machine, same load generator (`moat bench`), same
# certificates. Each broker is pinned to core 0 and the load to core 1 (when the machine has two
# cores); loopback only; every scenario is bounded in time. Medians of RUNS runs go into
# docs/BENCHMARKS.md between the bench-vs-mosquitto markers.
#
#   scripts/bench-vs-mosquitto.sh            # RUNS=3 DURATION=10
#   RUNS=1 DURATION=3 scripts/bench-vs-mosquitto.sh   # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
OUT=${OUT:-docs/BENCHMARKS.md}

sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq mosquitto >/dev/null
fi
export PATH="$PATH:/usr/sbin"
cargo build --release -q -p moat-cli
MOAT="$PWD/target/release/moat"

pin_broker=(); pin_load=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  pin_broker=(taskset -c 0); pin_load=(taskset -c 1)
fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$MOAT" cert ca --out "$work/pki" --cn "Bench CA" >/dev/null
"$MOAT" cert server --ca "$work/pki" --host localhost --host 127.0.0.1 --out "$work/pki" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
M_TCP=$(free_port); M_TLS=$(free_port); Q_TCP=$(free_port); Q_TLS=$(free_port)

cat >"$work/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous true
max_queued_messages 10000
max_inflight_messages 256
listener $Q_TCP 127.0.0.1
listener $Q_TLS 127.0.0.1
certfile $work/pki/server.pem
keyfile $work/pki/server.key
EOF
[ "$(id -u)" -eq 0 ] && echo "user root" >>"$work/mosquitto.conf"

cat >"$work/moat.toml" <<EOF
[[listeners]]
name = "tcp"
bind = "127.0.0.1:$M_TCP"
allow_anonymous = true
[[listeners]]
name = "tls"
kind = "tls"
bind = "127.0.0.1:$M_TLS"
allow_anonymous = true
tls = { cert = "pki/server.pem", key = "pki/server.key" }
[store]
enabled = false
EOF

"${pin_broker[@]}" mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!); QPID=$!
(cd "$work" && exec "${pin_broker[@]}" "$MOAT" serve --config moat.toml >"$work/moat.log" 2>&1) &
pids+=($!); MPID=$!
for port in $M_TCP $M_TLS $Q_TCP $Q_TLS; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# scenario name | bench arguments (URL scheme and port are filled in) | figure to report
scenarios=(
  "QoS 0, 1 -> 1|--pub 1 --sub 1 -q 0|received_per_sec"
  "QoS 1, 1 -> 1|--pub 1 --sub 1 -q 1|received_per_sec"
  "QoS 0, fan-in 100 -> 1|--pub 100 --sub 1 -q 0|received_per_sec"
  "QoS 1, fan-in 100 -> 1|--pub 100 --sub 1 -q 1|received_per_sec"
  "QoS 0, fan-out 1 -> 100 (deliveries/s)|--pub 1 --sub 100 -q 0|received_per_sec"
  "QoS 0, 1 -> 1 at 10k msg/s: p99 latency (us)|--pub 1 --sub 1 -q 0 --rate 10000|p99"
  "QoS 0, 1 -> 1 over TLS|TLS --pub 1 --sub 1 -q 0|received_per_sec"
  "TLS full handshakes/s (P-256, 16 at a time)|TLS --storm --connections 2000 --concurrency 16|connections_per_sec"
  "broker CPU per TLS handshake (us)|TLS --storm --connections 2000 --concurrency 16|cpu_per_conn_us"
)

run_one() { # broker-pid tcp-port tls-port args -> one figure
  local pid=$1 tcp=$2 tls=$3 args=$4 figure=$5 url extra=()
  if [[ $args == TLS* ]]; then
    url="mqtts://localhost:$tls"; args=${args#TLS }; extra=(--cafile "$work/pki/ca.pem")
  else
    url="mqtt://127.0.0.1:$tcp"
  fi
  # shellcheck disable=SC2206
  local a=($args)
  [[ $args == *--storm* ]] || a+=(--duration "$DURATION" --drain 3)
  local before after hz json
  hz=$(getconf CLK_TCK)
  before=$(cpu_ticks "$pid")
  json=$("${pin_load[@]}" "$MOAT" bench -L "$url" "${extra[@]}" "${a[@]}" --json --quiet 2>/dev/null || true)
  after=$(cpu_ticks "$pid")
  python3 - "$figure" "$before" "$after" "$hz" "$json" <<'PY'
import json, sys
figure, before, after, hz, text = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    r = json.loads(text)
except ValueError:
    print("nan"); sys.exit()
if figure == "p99":
    print(r["latency_us"]["p99"])
elif figure == "cpu_per_conn_us":
    n = max(r.get("succeeded", 0), 1)
    print(round((after - before) / hz * 1e6 / n, 1))
else:
    print(round(r.get(figure, float("nan"))))
PY
}

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x!="nan"]; print(round(statistics.median(v)) if v else "n/a")' "$@"; }

rows=()
for sc in "${scenarios[@]}"; do
  IFS='|' read -r name args figure <<<"$sc"
  m=(); q=()
  for _ in $(seq "$RUNS"); do
    m+=("$(run_one "$MPID" "$M_TCP" "$M_TLS" "$args" "$figure")")
    q+=("$(run_one "$QPID" "$Q_TCP" "$Q_TLS" "$args" "$figure")")
  done
  mm=$(median "${m[@]}"); qm=$(median "${q[@]}")
  ratio=$(python3 -c "import sys; a,b=sys.argv[1],sys.argv[2]; print('n/a' if 'n/a' in (a,b) or float(b)==0 else f'{float(a)/float(b):.2f}')" "$mm" "$qm")
  rows+=("| $name | $mm | $qm | $ratio |")
  echo "$name: moat $mm, mosquitto $qm (runs: moat ${m[*]}; mosquitto ${q[*]})" >&2
done

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
table=$(cat <<EOF
<!-- bench-vs-mosquitto:start -->
Generated by \`scripts/bench-vs-mosquitto.sh\` (RUNS=$RUNS, DURATION=${DURATION}s) on $(date -u +%Y-%m-%d),
$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(mosquitto -h 2>/dev/null | head -1 | xargs).
Brokers pinned to core 0, \`moat bench\` to core 1, loopback, 64-byte payloads, medians of $RUNS runs.
Ratios are Moat / mosquitto (higher is better, except latency and CPU).

| scenario | Moat | mosquitto | ratio |
|---|---|---|---|
$(printf '%s\n' "${rows[@]}")

RSS after the runs: Moat $(rss_kib "$MPID") KiB, mosquitto $(rss_kib "$QPID") KiB.
<!-- bench-vs-mosquitto:end -->
EOF
)
python3 - "$OUT" "$table" <<'PY'
import sys, re
path, table = sys.argv[1], sys.argv[2]
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"

pat = re.compile(r"<!-- bench-vs-mosquitto:start -->.*?<!-- bench-vs-mosquitto:end -->", re.S)
if pat.search(text):
    text = pat.sub(lambda _: table, text)
else:
    text += "\n## Moat vs mosquitto (`scripts/bench-vs-mosquitto.sh`)\n\n" + table + "\n"
open(path, "w").write(text)
PY
echo "wrote $OUT" >&2
