#!/usr/bin/env bash
# Moat against mosquitto, same run, same machine, same load generator (`moat bench`), same
# certificates. Each broker is pinned to core 0 and the load to core 1 (when the machine has two
# cores); loopback only; every scenario is bounded in time. Medians of RUNS runs, next to the
# targets of the performance issue, go into docs/BENCHMARKS.md between the bench-vs-mosquitto
# markers.
#
#   scripts/bench-vs-mosquitto.sh                     # RUNS=3 DURATION=10
#   RUNS=1 DURATION=3 scripts/bench-vs-mosquitto.sh   # a quick look
#   MOAT_BIN=target/release/moat scripts/...          # use this binary, do not build
#   ONLY="storm storm_rsa storm_mtls storm_resume" scripts/...   # these scenarios only; the
#                                                     # table goes to stdout, OUT is left alone
#
# Both brokers have four listeners: plain TCP, TLS with a P-256 certificate, TLS with an
# RSA-2048 certificate, and mutual TLS (P-256, client certificate required). One bench run can
# give several figures (fan-out: deliveries/s, p99 latency and losses of the same run). The
# memory per idle connection is measured on a freshly started broker process each time (freed
# memory is reused, so an RSS delta on a broker that has already served load means little).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
OUT=${OUT:-docs/BENCHMARKS.md}
ONLY=${ONLY:-}     # scenario keys (space-separated); empty: all, and the table goes to OUT
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
IDLE_N=10000       # idle connections per memory measurement (the fd hard limit caps it)
FLEET_N=${FLEET_N:-10000} # devices of the fleet scenario, 1 msg/s each
STORM_N=2000       # connections per handshake storm
started=$(date +%s)

sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq mosquitto >/dev/null
fi
export PATH="$PATH:/usr/sbin"
if [ -n "${MOAT_BIN:-}" ]; then
  moat_src=$MOAT_BIN
else
  cargo build --release -q -p moat-cli
  moat_src=target/release/moat
fi
# Every descriptor the hard limit allows: IDLE_N connections need IDLE_N descriptors in the
# broker and in the load generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pin_broker=(); pin_load=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  pin_broker=(taskset -c 0); pin_load=(taskset -c 1)
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# A copy, so that a rebuild during the run does not change the binary halfway.
cp "$moat_src" "$work/moat"
MOAT="$work/moat"
mkdir -p "$work/res"

# Certificates: a P-256 CA, server and client certificate, and an RSA-2048 CA and server.
"$MOAT" cert ca --out "$work/pki" --cn "Bench CA" >/dev/null
"$MOAT" cert server --ca "$work/pki" --host localhost --host 127.0.0.1 --out "$work/pki" >/dev/null
"$MOAT" cert client --ca "$work/pki" --cn bench-client --out "$work/pki" >/dev/null
"$MOAT" cert ca --out "$work/pki-rsa" --cn "Bench RSA CA" --key-type rsa2048 >/dev/null
"$MOAT" cert server --ca "$work/pki-rsa" --host localhost --host 127.0.0.1 --key-type rsa2048 \
  --out "$work/pki-rsa" >/dev/null

# Fresh ports for both brokers (M_* Moat, Q_* mosquitto) and their configuration files.
new_ports() {
  local ports
  # shellcheck disable=SC2207
  # Below the ephemeral range (net.ipv4.ip_local_port_range), so that no client connection takes
  # one as its source port between this check and the broker's bind.
  ports=($(python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
picked = []
while len(picked) < 8:
    p = random.randrange(10000, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        if p not in picked:
            picked.append(p)
    except OSError:
        pass
    s.close()
print(" ".join(map(str, picked)))'))
  M_TCP=${ports[0]}; M_TLS=${ports[1]}; M_RSA=${ports[2]}; M_MTLS=${ports[3]}
  Q_TCP=${ports[4]}; Q_TLS=${ports[5]}; Q_RSA=${ports[6]}; Q_MTLS=${ports[7]}
  cat >"$work/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous true
max_queued_messages 10000
max_inflight_messages 256
listener $Q_TCP 127.0.0.1
listener $Q_TLS 127.0.0.1
certfile $work/pki/server.pem
keyfile $work/pki/server.key
listener $Q_RSA 127.0.0.1
certfile $work/pki-rsa/server.pem
keyfile $work/pki-rsa/server.key
listener $Q_MTLS 127.0.0.1
certfile $work/pki/server.pem
keyfile $work/pki/server.key
cafile $work/pki/ca.pem
require_certificate true
EOF
  if [ "$(id -u)" -eq 0 ]; then echo "user root" >>"$work/mosquitto.conf"; fi
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
[[listeners]]
name = "tls-rsa"
kind = "tls"
bind = "127.0.0.1:$M_RSA"
allow_anonymous = true
tls = { cert = "pki-rsa/server.pem", key = "pki-rsa/server.key" }
[[listeners]]
name = "mtls"
kind = "tls"
bind = "127.0.0.1:$M_MTLS"
allow_anonymous = true
tls = { cert = "pki/server.pem", key = "pki/server.key", client_auth = "required", client_ca = "pki/ca.pem" }
[store]
enabled = false
[limits]
max_connections = 50000
EOF
}

wait_ports() {
  local port ok
  for port in "$@"; do
    ok=
    for _ in $(seq 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then ok=1; break; fi
      sleep 0.1
    done
    [ -n "$ok" ] || echo "warning: nothing listens on 127.0.0.1:$port" >&2
  done
}
start_moat() { # -> MPID
  (cd "$work" && exec "${pin_broker[@]}" "$MOAT" serve --config moat.toml >>"$work/moat.log" 2>&1) &
  MPID=$!; pids+=("$MPID")
  wait_ports "$M_TCP" "$M_TLS" "$M_RSA" "$M_MTLS"
  settle "$MPID"
}
start_mosquitto() { # -> QPID
  "${pin_broker[@]}" mosquitto -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
  QPID=$!; pids+=("$QPID")
  wait_ports "$Q_TCP" "$Q_TLS" "$Q_RSA" "$Q_MTLS"
  settle "$QPID"
}
stop() { # pid: SIGTERM, at most 10 s, then SIGKILL
  local pid=$1 p keep=()
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  pids=(${keep[@]+"${keep[@]}"})
}

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo nan; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat" 2>/dev/null || echo nan; }
# Waits (at most 120 s) until the broker is idle: at most 2 ticks of CPU in half a second. A
# broker may still be working through what a run's clients left in its socket buffers; the next
# run must not pay for it.
settle() { # pid
  local a b t0=$SECONDS
  while [ $((SECONDS - t0)) -lt 120 ]; do
    a=$(cpu_ticks "$1"); sleep 0.5; b=$(cpu_ticks "$1")
    [[ $a == nan || $b == nan ]] && return 0
    [ $((b - a)) -le 2 ] && break
  done
  if [ $((SECONDS - t0)) -ge 2 ]; then echo "  (broker $1 busy for $((SECONDS - t0)) s after the run)" >&2; fi
}
run_no=0
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo nan; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo nan; }

# One bench run against one broker (M or Q) on one listener (TCP, TLS, RSA, MTLS); writes the
# bench's JSON, the broker CPU it cost and the first error to a file that the figures are read
# from later.
run_one() { # broker listener args outfile
  local b=$1 kind=$2 args=$3 out=$4 pid port url extra=() limit
  pid=$([ "$b" = M ] && echo "$MPID" || echo "$QPID")
  port=${b}_$kind; port=${!port}
  case $kind in
    TCP) url="mqtt://127.0.0.1:$port" ;;
    TLS) url="mqtts://localhost:$port"; extra=(--cafile "$work/pki/ca.pem") ;;
    RSA) url="mqtts://localhost:$port"; extra=(--cafile "$work/pki-rsa/ca.pem") ;;
    MTLS) url="mqtts://localhost:$port"
      extra=(--cafile "$work/pki/ca.pem" --cert "$work/pki/bench-client.pem" --key "$work/pki/bench-client.key") ;;
  esac
  # shellcheck disable=SC2206
  local a=($args)
  if [[ $args == *--storm* || $args == *--idle* ]]; then
    limit=300
  else
    # A topic of its own per run, so that nothing a previous run left behind is counted.
    run_no=$((run_no + 1))
    a+=(--duration "$DURATION" --drain 3 -t "b$run_no/%i"); limit=$((DURATION + 120))
  fi
  # --idle: memory per connection; publish/subscribe: the broker's CPU per message while
  # publishing (connecting not counted), read by the load generator from /proc.
  if [[ $args != *--storm* ]]; then a+=(--broker-pid "$pid"); fi
  local before after json
  before=$(cpu_ticks "$pid"); sys_before=$(sys_ticks "$pid")
  json=$(timeout -k 5 "$limit" "${pin_load[@]}" "$MOAT" bench -L "$url" "${extra[@]}" "${a[@]}" \
    --json --quiet 2>"$work/bench.err" || true)
  after=$(cpu_ticks "$pid"); sys_after=$(sys_ticks "$pid")
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "  the broker ($([ "$b" = M ] && echo moat || echo mosquitto), pid $pid) is gone; its log ends:" >&2
    tail -n 5 "$work/$([ "$b" = M ] && echo moat || echo mosquitto).log" | sed 's/^/    /' >&2
  fi
  settle "$pid"
  python3 - "$before" "$after" "$(getconf CLK_TCK)" "$json" "$work/bench.err" \
    "$sys_before" "$sys_after" >"$out" <<'PY'
import json, sys
before, after, hz, text, err, sys_before, sys_after = sys.argv[1:8]
try:
    bench = json.loads(text)
except ValueError:
    bench = None
try:
    cpu = (float(after) - float(before)) / int(hz)
except ValueError:
    cpu = None
try:
    sys_cpu = (float(sys_after) - float(sys_before)) / int(hz)
except ValueError:
    sys_cpu = None
error = open(err).read().strip().splitlines()
error = error[0] if error else (bench or {}).get("first_error")
print(json.dumps({"bench": bench, "cpu_secs": cpu, "sys_secs": sys_cpu, "error": error}))
PY
}

# Bench runs: key | listener | `moat bench` arguments. Rows below name the key they read.
scenarios=(
  "q0|TCP|--pub 1 --sub 1 -q 0"
  "q0tls|TLS|--pub 1 --sub 1 -q 0"
  "q0rate|TCP|--pub 1 --sub 1 -q 0 --rate 10000"
  "q1|TCP|--pub 1 --sub 1 -q 1"
  "fanin0|TCP|--pub 100 --sub 1 -q 0"
  "fanin1|TCP|--pub 100 --sub 1 -q 1"
  "fanout0|TCP|--pub 1 --sub 100 -q 0 --rate 2500"
  "fanout0max|TCP|--pub 1 --sub 100 -q 0"
  "fleet0|TCP|--pub 1000 --sub 1 -q 0 --rate 10000"
  "fleet1|TCP|--pub 1000 --sub 1 -q 1 --rate 10000"
  "fleet10k|TCP|--pub $FLEET_N --sub 100 --share workers -q 1 --rate $FLEET_N"
  "q1rate|TCP|--pub 1 --sub 1 -q 1 --rate 10000"
  "storm|TLS|--storm --connections $STORM_N --concurrency 16"
  "storm_rsa|RSA|--storm --connections $STORM_N --concurrency 16"
  "storm_mtls|MTLS|--storm --connections $STORM_N --concurrency 16"
  "storm_resume|TLS|--storm --resume --connections $STORM_N --concurrency 16"
)
# Each on a freshly started broker.
idle_scenarios=(
  "idle_tcp|TCP|--idle --connections $IDLE_N --concurrency 32 --hold 2"
  "idle_tls|TLS|--idle --connections $IDLE_N --concurrency 32 --hold 2"
)
# label | key | figure (a JSON path of the bench output, or cpu_per_conn_us) | target
rows=(
  "QoS 0, 1 -> 1 (msgs/s)|q0|received_per_sec|>= 300k"
  "QoS 0, 1 -> 1 over TLS (msgs/s)|q0tls|received_per_sec|>= 240k"
  "QoS 0, 1 -> 1 at 10k msg/s: p99 latency (us)|q0rate|latency_us.p99|<= 1 ms (1000 us)"
  "QoS 1, 1 -> 1 (msgs/s)|q1|received_per_sec|>= 60k"
  "QoS 0, fan-in 100 -> 1 (msgs/s)|fanin0|received_per_sec|>= 150k"
  "QoS 1, fan-in 100 -> 1 (msgs/s)|fanin1|received_per_sec|>= 60k"
  "QoS 1, fan-in 100 -> 1, acknowledged but lost|fanin1|losses|0"
  "QoS 0, fan-out 1 -> 100, 2,500 msg/s in (deliveries/s)|fanout0|received_per_sec|>= 200k"
  "QoS 0, fan-out 1 -> 100, 2,500 msg/s in: p99 latency (us), same run|fanout0|latency_us.p99|<= 10 ms (10000 us)"
  "QoS 0, fan-out 1 -> 100, 2,500 msg/s in: losses, same run|fanout0|losses|0"
  "QoS 0, fan-out 1 -> 100, as fast as possible (deliveries/s)|fanout0max|received_per_sec|—"
  "fleet: 1,000 publishers x 10 msg/s -> 1, QoS 0: broker CPU per message (us)|fleet0|broker_cpu_us_per_message|<= 1/2 of mosquitto"
  "fleet: 1,000 x 10 msg/s -> 1, QoS 0: of which system CPU (us), same run|fleet0|broker_sys_us_per_message|—"
  "fleet: 1,000 x 10 msg/s -> 1, QoS 0: p50 latency (us), same run|fleet0|latency_us.p50|—"
  "fleet: 1,000 x 10 msg/s -> 1, QoS 0: p99 latency (us), same run|fleet0|latency_us.p99|<= mosquitto"
  "fleet: 1,000 x 10 msg/s -> 1, QoS 0: losses, same run|fleet0|losses|0"
  "fleet: 1,000 publishers x 10 msg/s -> 1, QoS 1: broker CPU per message (us)|fleet1|broker_cpu_us_per_message|<= 1/2 of mosquitto"
  "fleet: 1,000 x 10 msg/s -> 1, QoS 1: of which system CPU (us), same run|fleet1|broker_sys_us_per_message|—"
  "fleet: 1,000 x 10 msg/s -> 1, QoS 1: p50 latency (us), same run|fleet1|latency_us.p50|—"
  "fleet: 1,000 x 10 msg/s -> 1, QoS 1: p99 latency (us), same run|fleet1|latency_us.p99|<= mosquitto"
  "fleet: 1,000 x 10 msg/s -> 1, QoS 1: losses, same run|fleet1|losses|0"
  "fleet: $FLEET_N devices x 1 msg/s -> 100 sharing (\$share), QoS 1: broker CPU per message (us)|fleet10k|broker_cpu_us_per_message|<= 1/2 of mosquitto"
  "fleet: $FLEET_N x 1 msg/s -> 100 sharing, QoS 1: of which system CPU (us), same run|fleet10k|broker_sys_us_per_message|—"
  "fleet: $FLEET_N x 1 msg/s -> 100 sharing, QoS 1: p50 latency (us), same run|fleet10k|latency_us.p50|—"
  "fleet: $FLEET_N x 1 msg/s -> 100 sharing, QoS 1: p99 latency (us), same run|fleet10k|latency_us.p99|<= mosquitto"
  "fleet: $FLEET_N x 1 msg/s -> 100 sharing, QoS 1: losses, same run|fleet10k|losses|0"
  "QoS 1, 1 -> 1 at 10k msg/s: broker CPU per message (us)|q1rate|broker_cpu_us_per_message|<= 1/2 of mosquitto"
  "QoS 1, 1 -> 1 at 10k msg/s: p99 latency (us), same run|q1rate|latency_us.p99|<= mosquitto"
  "TLS 1.3 full handshakes/s (P-256, 16 at a time)|storm|connections_per_sec|—"
  "broker CPU per full handshake, P-256 (us)|storm|cpu_per_conn_us|<= 1/3 of mosquitto"
  "  of which system CPU, full handshake, P-256 (us)|storm|sys_per_conn_us|—"
  "TLS 1.3 full handshakes/s (RSA-2048, 16 at a time)|storm_rsa|connections_per_sec|—"
  "broker CPU per full handshake, RSA-2048 (us)|storm_rsa|cpu_per_conn_us|<= 1/3 of mosquitto"
  "  of which system CPU, full handshake, RSA-2048 (us)|storm_rsa|sys_per_conn_us|—"
  "mTLS full handshakes/s (P-256 both sides, 16 at a time)|storm_mtls|connections_per_sec|—"
  "broker CPU per mTLS handshake, P-256 (us)|storm_mtls|cpu_per_conn_us|<= 1/3 of mosquitto"
  "  of which system CPU, mTLS handshake, P-256 (us)|storm_mtls|sys_per_conn_us|—"
  "TLS 1.3 resumed handshakes/s (P-256, tickets, 16 at a time)|storm_resume|connections_per_sec|—"
  "broker CPU per resumed handshake, P-256 (us)|storm_resume|cpu_per_conn_us|<= 1/3 of mosquitto"
  "  of which system CPU, resumed handshake, P-256 (us)|storm_resume|sys_per_conn_us|—"
  "handshakes that resumed a session in the resumed storm (of $STORM_N)|storm_resume|tls_resumed|all but the first"
  "memory per idle connection, TCP (bytes, $IDLE_N connections)|idle_tcp|broker_bytes_per_connection|<= 2 KiB (2048 B)"
  "memory per idle connection, TLS (bytes, $IDLE_N connections)|idle_tls|broker_bytes_per_connection|<= 16 KiB (16384 B)"
  "broker RSS after all runs (KiB)|rss|rss_kib|—"
  "broker peak RSS over all runs, overload included (KiB)|rss|hwm_kib|bounded"
)

log_runs() { # key: one line per scenario on stderr
  python3 - "$work/res" "$1" <<'PY' >&2
import glob, json, os, sys
res, key = sys.argv[1:3]
for b, name in (("M", "moat"), ("Q", "mosquitto")):
    for f in sorted(glob.glob(os.path.join(res, f"{key}.{b}.*.json"))):
        r = json.load(open(f))
        bench = r["bench"] or {}
        keep = {k: bench.get(k) for k in ("received_per_sec", "losses", "connections_per_sec",
                "succeeded", "failed", "opened", "broker_bytes_per_connection", "tls_resumed") if k in bench}
        if "latency_us" in bench:
            keep["p99_us"] = bench["latency_us"]["p99"]
        print(f"  {key} {name}: {keep} cpu {r['cpu_secs']} s" + (f"; error: {r['error']}" if r["error"] else ""))
PY
}

# Throughput, latency and handshakes: both brokers up for the whole phase.
new_ports
start_mosquitto
start_moat
for sc in "${scenarios[@]}"; do
  IFS='|' read -r key kind args <<<"$sc"
  wanted "$key" || continue
  for i in $(seq "$RUNS"); do
    run_one M "$kind" "$args" "$work/res/$key.M.$i.json"
    run_one Q "$kind" "$args" "$work/res/$key.Q.$i.json"
  done
  log_runs "$key"
done
for b in M Q; do
  rss=$(rss_kib "$([ "$b" = M ] && echo "$MPID" || echo "$QPID")")
  hwm=$(hwm_kib "$([ "$b" = M ] && echo "$MPID" || echo "$QPID")")
  [[ $rss =~ ^[0-9]+$ ]] || rss=null
  echo "{\"bench\": {\"rss_kib\": $rss, \"hwm_kib\": $hwm}, \"cpu_secs\": null, \"error\": null}" >"$work/res/rss.$b.1.json"
done
stop "$MPID"; stop "$QPID"

# Memory per idle connection: a fresh broker process for every measurement.
for sc in "${idle_scenarios[@]}"; do
  IFS='|' read -r key kind args <<<"$sc"
  wanted "$key" || continue
  for i in $(seq "$RUNS"); do
    new_ports; start_moat
    run_one M "$kind" "$args" "$work/res/$key.M.$i.json"
    stop "$MPID"
    new_ports; start_mosquitto
    run_one Q "$kind" "$args" "$work/res/$key.Q.$i.json"
    stop "$QPID"
  done
  log_runs "$key"
done

# The table, and the 100k idle TLS connections extrapolated from the per-connection figure.
python3 - "$work/res" "$work/rows.md" "$work/idle.txt" "$IDLE_N" "$ONLY" "${rows[@]}" <<'PY'
import glob, json, math, os, statistics, sys
res, rows_out, idle_out, idle_n, only = sys.argv[1:6]
only = only.split()

def figure(r, name):
    bench = r.get("bench")
    if not bench:
        return math.nan
    if name == "cpu_per_conn_us":
        if r.get("cpu_secs") is None or not bench.get("succeeded"):
            return math.nan
        return r["cpu_secs"] * 1e6 / bench["succeeded"]
    if name == "sys_per_conn_us":
        if r.get("sys_secs") is None or not bench.get("succeeded"):
            return math.nan
        return r["sys_secs"] * 1e6 / bench["succeeded"]
    v = bench
    for part in name.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return math.nan if v is None else float(v)

def median(key, b, name):
    vals = [figure(json.load(open(f)), name)
            for f in sorted(glob.glob(os.path.join(res, f"{key}.{b}.*.json")))]
    vals = [v for v in vals if not math.isnan(v)]
    return statistics.median(vals) if vals else None

def fmt(v):
    if v is None:
        return "n/a"
    return f"{v:.1f}" if abs(v) < 100 and v != round(v) else str(round(v))

lines, medians = [], {}
for spec in sys.argv[6:]:
    label, key, name, target = spec.split("|")
    if only and key not in only:
        continue
    m, q = median(key, "M", name), median(key, "Q", name)
    medians[key] = (m, q)
    ratio = "n/a" if m is None or q is None or q == 0 else f"{m / q:.2f}"
    if target == "<= 1/3 of mosquitto" and m is not None and q is not None:
        target += f" ({fmt(q / 3)}): " + ("met" if m <= q / 3 else "not met")
    lines.append(f"| {label} | {fmt(m)} | {fmt(q)} | {ratio} | {target} |")
    print(f"{label}: moat {fmt(m)}, mosquitto {fmt(q)}, ratio {ratio} (target {target})", file=sys.stderr)
open(rows_out, "w").write("\n".join(lines) + "\n")

m, q = medians.get("idle_tls", (None, None))
mib = lambda v: "n/a" if v is None else f"{v * 100_000 / 1048576:.0f} MiB"
open(idle_out, "w").write(
    f"100,000 x the TLS figure is about {mib(m)} for Moat and {mib(q)} for mosquitto")
PY

table=$(cat <<EOF
<!-- bench-vs-mosquitto:start -->
Generated by \`scripts/bench-vs-mosquitto.sh\` (RUNS=$RUNS, DURATION=${DURATION}s) on $(date -u +%Y-%m-%d),
$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(mosquitto -h 2>/dev/null | head -1 | xargs).
Brokers pinned to core 0, \`moat bench\` to core 1, loopback, 64-byte payloads, medians of $RUNS runs.
Ratios are Moat / mosquitto (higher is better, except latency, losses, CPU and memory).
Every publish/subscribe run has a topic of its own, and the next run starts once the broker is
idle. The fan-out target rows come from one run (the publisher offers 2,500 msg/s, i.e. 250k
deliveries/s to 100 subscribers: a sustained rate, where losses and p99 mean something); the
"as fast as possible" fan-out row is the saturation throughput (QoS 0 beyond it is dropped for
slow subscribers by design). The two QoS 1 fan-in rows come from one run.
Fleet rows (many devices at modest rates, where nothing batches per connection): paced
publishers, each spread evenly over its period; the broker's CPU per message is read by the
load generator from \`/proc\` between the first publish and the last delivery (connecting is not
counted). In the $FLEET_N-device row, 100 subscribers share one subscription
(\`\$share/workers/...\`): each message goes to one of them, as to a pool of backend workers.
Handshake storms: $STORM_N connect / CONNACK / disconnect cycles; broker CPU (user + system, from
\`/proc\`) divided by the connections made. mTLS: the listener requires a client certificate
(P-256, same CA). Resumed: TLS 1.3 session tickets; every connection after the first 16 (one per
concurrent slot) resumes, and a row counts the handshakes that did (for both brokers).
Memory per idle connection: a freshly started broker, \`moat bench --idle\` opens $IDLE_N
connections (CONNECT / CONNACK, then nothing) and reports the broker's RSS growth / $IDLE_N.
100,000 idle TLS connections cannot be opened on this machine: the file-descriptor hard limit
(RLIMIT_NOFILE, \`ulimit -Hn\`) is $(ulimit -Hn) per process, for the broker and the load generator
alike. Extrapolated instead: $(cat "$work/idle.txt").
The RSS row is read after the throughput and handshake runs, before the idle-memory runs (which
use fresh processes).

| scenario | Moat | mosquitto | ratio | target |
|---|---|---|---|---|
$(cat "$work/rows.md")
<!-- bench-vs-mosquitto:end -->
EOF
)
if [ -n "$ONLY" ]; then
  # A partial run does not replace the whole table.
  printf '%s\n' "$table"
  echo "ONLY=$ONLY: $OUT left alone ($(( $(date +%s) - started )) s)" >&2
  exit 0
fi
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
echo "wrote $OUT in $(( $(date +%s) - started )) s" >&2
