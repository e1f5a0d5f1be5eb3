#!/usr/bin/env bash
# Loopback load bench: direct vs queue-proxy vs activator+queue-proxy vs nginx vs haproxy, as
# ratios from one run. Installs wrk, nginx and haproxy from Debian if missing.
#
#   benches/load/run.sh [DURATION_S=5] [ROUNDS=3] [CONNS="1 10 50"]
#
# Layout (benchmarking.md): wrk pinned to CPU 0, proxy + backend pinned to CPU 1. Each round runs
# every variant once, in a rotated order; the table reports medians over rounds. CPU µs per
# request is the proxy process's utime+stime delta (from /proc) divided by requests served. PSS is
# read from /proc/<pid>/smaps_rollup while idle, before the first round.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-5}; ROUNDS=${2:-3}; CONNS=${3:-"1 10 50"}
OUT=benches/load/out; mkdir -p "$OUT"

need=()
for b in wrk nginx haproxy taskset; do command -v "$b" >/dev/null || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  pk=(); for b in "${need[@]}"; do case $b in taskset) pk+=(util-linux);; *) pk+=("$b");; esac; done
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pk[@]}" >/dev/null
fi
# BIN overrides where the release binaries are (default: build them here).
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p queue-proxy -p activator -p examples
  BIN=target/release
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

APP=$(free_port); QP=$(free_port); QPA=$(free_port); QPM=$(free_port); NG=$(free_port); HA=$(free_port); ACT=$(free_port)
PORT=$APP taskset -c 1 "$BIN"/helloworld >/dev/null 2>&1 & PIDS+=($!); APP_PID=$!
wait_port "$APP"

env -i PATH="$PATH" SERVING_NAMESPACE=default SERVING_CONFIGURATION=hello SERVING_REVISION=hello-00001 \
  SERVING_POD=hello-pod SERVING_POD_IP=127.0.0.1 SERVING_SERVICE=hello QUEUE_SERVING_PORT=$QP \
  QUEUE_SERVING_TLS_PORT=8112 USER_PORT=$APP CONTAINER_CONCURRENCY=0 REVISION_TIMEOUT_SECONDS=300 \
  REVISION_RESPONSE_START_TIMEOUT_SECONDS=0 REVISION_IDLE_TIMEOUT_SECONDS=0 SERVING_READINESS_PROBE='' \
  SERVING_LOGGING_CONFIG='' SERVING_LOGGING_LEVEL=error ENABLE_PROFILING=false \
  SERVING_ENABLE_PROBE_REQUEST_LOG=false METRICS_COLLECTOR_ADDRESS='' ENABLE_HTTP2_AUTO_DETECTION=false \
  ENABLE_HTTP_FULL_DUPLEX=false ROOT_CA='' SYSTEM_NAMESPACE=knative-serving \
  SERVING_ENABLE_REQUEST_LOG=false OBSERVABILITY_CONFIG='{}' \
  QUEUE_ADMIN_PORT=$QPA QUEUE_METRICS_PORT=$QPM QUEUE_USER_METRICS_PORT=0 QUEUE_DRAIN_SECONDS=1 \
  taskset -c 1 "$BIN"/queue-proxy >"$OUT/qp.log" 2>&1 & PIDS+=($!); QP_PID=$!
wait_port "$QP"

cat > "$OUT/source.yaml" <<YAML
revisions:
  - namespace: default
    name: hello-00001
    containerConcurrency: 0
    ready: ["127.0.0.1:$QP"]
YAML
POD_NAME=act POD_IP=127.0.0.1 SYSTEM_NAMESPACE=knative-serving taskset -c 1 "$BIN"/activator \
  --source "file:$OUT/source.yaml" --stats-sink none --http1-addr 127.0.0.1:$ACT --h2c-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
  >"$OUT/act.log" 2>&1 & PIDS+=($!); ACT_PID=$!
wait_port "$ACT" || { cat "$OUT/act.log"; exit 1; }

cat > "$OUT/nginx.conf" <<NG
daemon off; worker_processes 1; pid $PWD/$OUT/nginx.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off;
  upstream app { server 127.0.0.1:$APP; keepalive 1000; }
  server { listen 127.0.0.1:$NG;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
taskset -c 1 nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT" >/dev/null 2>&1 & PIDS+=($!); NG_PID=$!
cat > "$OUT/haproxy.cfg" <<HA
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$HA
  default_backend b
backend b
  http-reuse always
  server app 127.0.0.1:$APP
HA
taskset -c 1 haproxy -f "$OUT/haproxy.cfg" >/dev/null 2>&1 & PIDS+=($!); HA_PID=$!
wait_port "$NG"; wait_port "$HA"

pss() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup"; }
# A process and its children (nginx's worker does the work, not its master).
cpu_ticks() { local t=0 p; for p in "$1" $(pgrep -P "$1" || true); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
declare -A URL=( [direct]="http://127.0.0.1:$APP/" [queue-proxy]="http://127.0.0.1:$QP/"
  [activator+qp]="http://127.0.0.1:$ACT/" [nginx]="http://127.0.0.1:$NG/" [haproxy]="http://127.0.0.1:$HA/" )
declare -A PID=( [direct]=$APP_PID [queue-proxy]=$QP_PID [activator+qp]="$ACT_PID $QP_PID" [nginx]=$NG_PID [haproxy]=$HA_PID )
VARIANTS=(direct queue-proxy activator+qp nginx haproxy)
HDR=(-H "Host: hello.default.example.com" -H "Knative-Serving-Namespace: default" -H "Knative-Serving-Revision: hello-00001")

ng_pss=0; for p in $NG_PID $(pgrep -P $NG_PID || true); do ng_pss=$((ng_pss + $(pss $p))); done
echo "idle PSS KiB: queue-proxy $(pss $QP_PID), activator $(pss $ACT_PID), nginx (master+worker) $ng_pss, haproxy $(pss $HA_PID)" | tee "$OUT/pss.txt"
: > "$OUT/raw.tsv"
for c in $CONNS; do
  for r in $(seq "$ROUNDS"); do
    n=${#VARIANTS[@]}
    for i in $(seq 0 $((n-1))); do
      v=${VARIANTS[$(( (i + r) % n ))]}
      t0=0; for p in ${PID[$v]}; do t0=$((t0 + $(cpu_ticks "$p"))); done
      res=$(taskset -c 0 wrk -t1 -c"$c" -d"${DUR}s" --latency "${HDR[@]}" "${URL[$v]}")
      t1=0; for p in ${PID[$v]}; do t1=$((t1 + $(cpu_ticks "$p"))); done
      reqs=$(echo "$res" | awk '/requests in/{print $1}')
      rps=$(echo "$res" | awk '/Requests\/sec/{print $2}')
      p50=$(echo "$res" | awk '$1=="50%"{print $2}')
      p99=$(echo "$res" | awk '$1=="99%"{print $2}')
      non2xx=$(echo "$res" | awk '/Non-2xx/{print $4}'); non2xx=${non2xx:-0}
      cpu_us=$(python3 -c "print(round(($t1-$t0)/$HZ*1e6/max($reqs,1),2))")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$r" "$v" "$rps" "$p50" "$p99" "$cpu_us" "$non2xx" | tee -a "$OUT/raw.tsv"
    done
  done
done

python3 - "$OUT/raw.tsv" <<'PY' | tee "$OUT/table.md"
import sys, statistics as st, collections
def us(x):
    x = x.strip()
    for suf, m in (("us", 1), ("ms", 1000), ("s", 1e6)):
        if x.endswith(suf): return float(x[:-len(suf)]) * m
    return float("nan")
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    c, r, v, rps, p50, p99, cpu, bad = line.rstrip("\n").split("\t")
    rows[(int(c), v)].append((float(rps), us(p50), us(p99), float(cpu), int(bad)))
print("| c | variant | req/s (median) | × direct | p50 µs | added p50 µs | p99 µs | proxy CPU µs/req (direct: the app) | non-2xx |")
print("|---|---|---|---|---|---|---|---|---|")
for c in sorted({k[0] for k in rows}):
    d = rows[(c, "direct")]
    drps = st.median(x[0] for x in d); dp50 = st.median(x[1] for x in d)
    for v in ["direct", "queue-proxy", "activator+qp", "nginx", "haproxy"]:
        x = rows.get((c, v))
        if not x: continue
        rps = st.median(y[0] for y in x); p50 = st.median(y[1] for y in x)
        print(f"| {c} | {v} | {rps:.0f} | {rps/drps:.2f} | {p50:.0f} | {p50-dp50:+.0f} | {st.median(y[2] for y in x):.0f} | {st.median(y[3] for y in x):.1f} | {sum(y[4] for y in x)} |")
PY
