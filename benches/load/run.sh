#!/usr/bin/env bash
# Loopback load bench (benchmarking.md §5): direct vs queue-proxy vs activator+queue-proxy vs
# nginx vs haproxy, plus the breaker analogues (queue-proxy with CONTAINER_CONCURRENCY=CC vs
# haproxy with `maxconn CC`), as ratios measured in one run. Installs wrk, hey, nghttp2-client,
# nginx and haproxy from Debian if missing. 127.0.0.1 only; every cell is bounded by DUR.
#
#   benches/load/run.sh [DUR_S=3] [ROUNDS=3] [CONNS="1 10 50 300"]
#   env: BIN=target/release (skip the build)  CC=10  SLEEP_CONNS="50 300"  HEY=1  IDLE=1
#        OPEN="25 50 75" (open-loop loads, % of OPEN_BASE's capacity; "" skips)  OPEN_CONNS=50
#        OPEN_BASE=nginx (variant whose closed-loop capacity the loads refer to)  OPEN_CAP=N (req/s)
#
# Backend: examples/autoscale (Knative's autoscale-go in Rust, one thread): `/` answers at once
# (trivial shape), `/?sleep=100` after 100 ms (Knative's benchmark shape).
# Layouts (§5.2): "split" = wrk on CPU 0, every server on CPU 1 (proxy and backend share it, so
# proxy CPU per request can also be read as (1/ratio − 1) × backend CPU); "one-core" = wrk on
# CPU 1 too (c=1 latency floor without cross-CPU wake-ups).
# Each round runs every variant once in a rotated order; per-round ratios to direct give the
# median and IQR. Each cell: 1 s warm-up (discarded), then DUR s. Recorded per cell: /proc/stat
# steal %, wrk's own CPU % (must stay < 90 %), proxy CPU µs per request (utime+stime of the
# proxy processes / requests). PSS: idle, per 1,000 idle keep-alive connections, and per 1,000
# requests in flight (waiting at the backend).
# Output: benches/load/out/{raw.tsv,table.md,pss.md,idle-conns.md,inflight-conns.md,hey.md,
# latency-*.svg,cpu.svg}.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-3}; ROUNDS=${2:-3}; CONNS=${3:-"1 10 50 300"}
CC=${CC:-10}; SLEEP_CONNS=${SLEEP_CONNS:-"50 300"}; HEY=${HEY:-1}; IDLE=${IDLE:-1}
OPEN=${OPEN-"25 50 75"}; OPEN_CONNS=${OPEN_CONNS:-50}; OPEN_BASE=${OPEN_BASE:-nginx}; OPEN_CAP=${OPEN_CAP:-}
OUT=benches/load/out; mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

need=()
for b in wrk hey h2load nginx haproxy taskset; do command -v "$b" >/dev/null || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  pk=(); for b in "${need[@]}"; do case $b in taskset) pk+=(util-linux);; h2load) pk+=(nghttp2-client);; *) pk+=("$b");; esac; done
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pk[@]}" >/dev/null
  # Debian starts the packaged nginx/haproxy services; this bench runs its own instances.
  { service nginx stop; service haproxy stop; } >/dev/null 2>&1 || true
fi
if [ -z "${BIN:-}" ]; then
  # (`--bin` would narrow every package to that one binary: two commands.)
  cargo build --release -q -p queue-proxy -p activator -p examples
  cargo build --release -q -p benches --bin openloop
  BIN=target/release
fi
[ -z "$OPEN" ] || [ -x "$BIN/openloop" ] || cargo build --release -q -p benches --bin openloop

PIDS=()
# Background jobs may be shells around the real process: stop their children too.
cleanup() { for p in "${PIDS[@]}"; do kill $(pgrep -P "$p" || true) "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
. benches/load/lib.sh

APP=$(free_port); QP=$(free_port); QPC=$(free_port); NG=$(free_port); HA=$(free_port); HAC=$(free_port); ACT=$(free_port)
PORT=$APP taskset -c 1 "$BIN"/autoscale >/dev/null 2>&1 & PIDS+=($!); APP_PID=$!
wait_port "$APP"

run_qp "$BIN" "$QP" "$APP" 0 >"$OUT/qp.log" 2>&1 & PIDS+=($!); QP_PID=$!
run_qp "$BIN" "$QPC" "$APP" "$CC" >"$OUT/qp-cc.log" 2>&1 & PIDS+=($!); QPC_PID=$!
wait_port "$QP"; wait_port "$QPC"

cat > "$OUT/source.yaml" <<YAML
revisions:
  - namespace: default
    name: hello-00001
    containerConcurrency: 0
    ready: ["127.0.0.1:$QP"]
YAML
POD_NAME=act POD_IP=127.0.0.1 SYSTEM_NAMESPACE=knative-serving ACTIVATOR_LOG_LEVEL=error taskset -c 1 "$BIN"/activator \
  --source "file:$OUT/source.yaml" --stats-sink none --http1-addr 127.0.0.1:$ACT --h2c-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
  >"$OUT/act.log" 2>&1 & PIDS+=($!); ACT_PID=$!
wait_port "$ACT" || { cat "$OUT/act.log"; exit 1; }

nginx_conf "$PWD/$OUT/nginx.pid" "$APP" "$NG" > "$OUT/nginx.conf"
taskset -c 1 nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT" >/dev/null 2>&1 & PIDS+=($!); NG_PID=$!
cat > "$OUT/haproxy.cfg" <<HA
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout queue 60s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$HA
  default_backend b
frontend fcc
  bind 127.0.0.1:$HAC
  default_backend bcc
backend b
  http-reuse always
  server app 127.0.0.1:$APP
# The breaker analogue: at most CC requests at the app, the rest wait in haproxy's queue.
backend bcc
  http-reuse always
  server app 127.0.0.1:$APP maxconn $CC
HA
taskset -c 1 haproxy -f "$OUT/haproxy.cfg" >/dev/null 2>&1 & PIDS+=($!); HA_PID=$!
wait_port "$NG"; wait_port "$HA"; wait_port "$HAC"

pss() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup"; }
tree() { echo "$1" $(pgrep -P "$1" || true); }
pss_tree() { local t=0 p; for p in $(tree "$1"); do t=$((t + $(pss "$p"))); done; echo "$t"; }
# utime+stime of a process and its children (nginx's worker does the work, not its master).
# shellcheck disable=SC2046
cpu_ticks() { ticks $(tree "$1"); }
steal_snap() { awk '/^cpu /{t=0; for(i=2;i<=9;i++) t+=$i; print t, $9}' /proc/stat; }
declare -A PORTOF=( [direct]=$APP [queue-proxy]=$QP [qp-cc$CC]=$QPC [activator+qp]=$ACT [nginx]=$NG [haproxy]=$HA [haproxy-maxconn$CC]=$HAC )
declare -A PID=( [direct]=$APP_PID [queue-proxy]=$QP_PID [qp-cc$CC]=$QPC_PID [activator+qp]="$ACT_PID $QP_PID" [nginx]=$NG_PID [haproxy]=$HA_PID [haproxy-maxconn$CC]=$HA_PID )
VARIANTS=(direct queue-proxy "qp-cc$CC" activator+qp nginx haproxy "haproxy-maxconn$CC")
# The queue-proxy's binary may run under the backgrounded function's shell; measure the real process.
QP_REAL=$(pgrep -P "$QP_PID" || echo "$QP_PID"); QPC_REAL=$(pgrep -P "$QPC_PID" || echo "$QPC_PID")
PID[queue-proxy]=$QP_REAL; PID[qp-cc$CC]=$QPC_REAL; PID[activator+qp]="$ACT_PID $QP_REAL"

{
  echo "| process | idle PSS KiB |"; echo "|---|---|"
  echo "| backend (autoscale) | $(pss "$APP_PID") |"
  echo "| queue-proxy | $(pss "$QP_REAL") |"
  echo "| activator | $(pss "$ACT_PID") |"
  echo "| nginx (master+worker) | $(pss_tree "$NG_PID") |"
  echo "| haproxy | $(pss "$HA_PID") |"
} > "$OUT/pss.md"

# One wrk cell: prints "rps p50 p90 p99 reqs non2xx wrk_cpu_pct". wrk's CPU comes from rusage.
wrk_cell() { # CPUSET C URL
  python3 - "$@" "${HDR[@]}" <<'PY'
import resource, subprocess, sys, time
cpus, c, url, hdr = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
dur = __import__("os").environ["DUR"]
t = time.monotonic()
out = subprocess.run(["taskset", "-c", cpus, "wrk", "-t1", f"-c{c}", f"-d{dur}s", "--timeout", "10s", "--latency", *hdr, url],
                     capture_output=True, text=True).stdout
wall = time.monotonic() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
def us(x):
    for suf, m in (("us", 1), ("ms", 1000), ("s", 1e6)):
        if x.endswith(suf): return float(x[:-len(suf)]) * m
    return float("nan")
lat = {}; rps = reqs = bad = 0
for line in out.splitlines():
    f = line.split()
    if len(f) == 2 and f[0] in ("50%", "90%", "99%"): lat[f[0]] = us(f[1])
    if "requests in" in line: reqs = int(f[0])
    if line.startswith("Requests/sec"): rps = float(f[1])
    if "Non-2xx" in line: bad = int(f[-1])
    if "Socket errors" in line: bad += sum(int(x.strip(",")) for x in f[3::2] if x.strip(",").isdigit())
cpu = 100 * (ru.ru_utime + ru.ru_stime) / wall
print(rps, lat.get("50%", 0), lat.get("90%", 0), lat.get("99%", 0), reqs, bad, round(cpu, 1))
PY
}
export DUR

if [ "$IDLE" = 1 ]; then
  # ΔPSS per 1,000 connections, each sending one request: PATH "/" is answered at once, so the
  # connections then idle; "/?sleep=4000" keeps the request in flight at the backend. Prints a
  # table row: PSS before, with the connections, per connection, and 1.5 s after they left.
  cat > "$OUT/conns.py" <<'PY'
import socket, sys, time
port, pid, name, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
inflight = path != "/"
def pss():
    import subprocess
    kids = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
    t = 0
    for p in [pid] + kids:
        for line in open(f"/proc/{p}/smaps_rollup"):
            if line.startswith("Pss:"): t += int(line.split()[1])
    return t
req = (f"GET {path} HTTP/1.1\r\n".encode() + b"Host: hello.default.example.com\r\nKnative-Serving-Namespace: default\r\n"
       b"Knative-Serving-Revision: hello-00001\r\n\r\n")
before = pss(); socks = []
for i in range(1000):
    s = socket.create_connection(("127.0.0.1", port), timeout=10); s.sendall(req); socks.append(s)
    if i % 100 == 99: time.sleep(0.01)
if not inflight:
    for s in socks:
        s.recv(4096)
time.sleep(1.0)
held = pss()
for s in socks: s.close()
time.sleep(1.5)
print(f"| {name} | {before} | {held} | {(held - before) / 1000:.2f} | {pss()} |")
PY
  conns_table() { # PATH HEADER PAUSE
    echo "| process | PSS before KiB | $2 | KiB each | 1.5 s after they left |"; echo "|---|---|---|---|---|"
    for v in direct queue-proxy activator+qp nginx haproxy; do
      case $v in direct) p=$APP_PID;; queue-proxy) p=$QP_REAL;; activator+qp) p=$ACT_PID;; nginx) p=$NG_PID;; haproxy) p=$HA_PID;; esac
      python3 "$OUT/conns.py" "${PORTOF[$v]}" "$p" "$v" "$1"
      sleep "$3"
    done
  }
  # Measured before any load, so memory freed by earlier cells cannot hide the growth.
  conns_table / "with 1,000 idle connections" 1 | tee "$OUT/idle-conns.md"
  conns_table "/?sleep=4000" "with 1,000 requests in flight" 4 | tee "$OUT/inflight-conns.md"
fi

: > "$OUT/raw.tsv"
run_cells() { # LAYOUT WRK_CPUS SHAPE PATH CONNS
  local layout=$1 cpus=$2 shape=$3 path=$4 conns=$5 c r i v n=${#VARIANTS[@]}
  for c in $conns; do
    for r in $(seq "$ROUNDS"); do
      for i in $(seq 0 $((n-1))); do
        v=${VARIANTS[$(( (i + r) % n ))]}
        url="http://127.0.0.1:${PORTOF[$v]}$path"
        DUR=1 wrk_cell "$cpus" "$c" "$url" >/dev/null # warm-up (pools, caches), discarded
        t0=0; for p in ${PID[$v]}; do t0=$((t0 + $(cpu_ticks "$p"))); done
        s0=$(steal_snap)
        read -r rps p50 p90 p99 reqs bad wcpu < <(wrk_cell "$cpus" "$c" "$url")
        s1=$(steal_snap)
        t1=0; for p in ${PID[$v]}; do t1=$((t1 + $(cpu_ticks "$p"))); done
        cpu_us=$(python3 -c "print(round(($t1-$t0)/$HZ*1e6/max($reqs,1),2))")
        steal=$(python3 -c "a='$s0'.split(); b='$s1'.split(); print(round(100*(int(b[1])-int(a[1]))/max(int(b[0])-int(a[0]),1),2))")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$layout" "$shape" "$c" "$r" "$v" \
          "$rps" "$p50" "$p90" "$p99" "$cpu_us" "$bad" "$steal" "$wcpu" | tee -a "$OUT/raw.tsv"
      done
    done
  done
}
run_cells split 0 trivial / "$CONNS"
run_cells split 0 sleep100 "/?sleep=100" "$SLEEP_CONNS"
run_cells one-core 1 trivial / 1

# Open loop (benchmarking.md §5.3): a fixed request rate at 25/50/75 % of a capacity, so a proxy
# that stalls cannot slow the load down. Latency is measured from each request's intended start
# (benches/src/bin/openloop.rs). Rows go to raw.tsv with layout "open" and c = the load in %.
# Deviation: the capacity is OPEN_BASE's (nginx by default: the best median req/s in the split
# trivial cells above), not direct's. On loopback direct runs at 60–80k req/s, bounded by wrk
# itself; 25 % of that already saturates every one-core proxy and 75 % exceeds what the
# generator can send (≈ 33k req/s on one core), so "% of direct" measured only backlogs.
open_cell() { # RATE URL -> "rps p50 p90 p99 reqs errors gen_cpu_pct"
  python3 - "$@" "$BIN/openloop" "$OPEN_CONNS" "${HDR[@]}" <<'PY'
import os, resource, subprocess, sys, time
rate, url, exe, conns, hdr = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
args = ["taskset", "-c", "0", exe, "--url", url, "--rate", rate, "--duration", os.environ["DUR"],
        "--warmup", "1", "--connections", conns]
for i in range(0, len(hdr), 2): args += ["-H", hdr[i + 1]]
t = time.monotonic()
out = subprocess.run(args, capture_output=True, text=True).stdout.split()
wall = time.monotonic() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
rps, p50, p90, p99, p999, mx, reqs, errs = (out + ["0"] * 10)[:8]
print(rps, p50, p90, p99, reqs, errs, round(100 * (ru.ru_utime + ru.ru_stime) / wall, 1))
PY
}
if [ -n "$OPEN" ] && { [ -n "$OPEN_CAP" ] || [ -s "$OUT/raw.tsv" ]; }; then
  CAP=${OPEN_CAP:-$(python3 - "$OUT/raw.tsv" "$OPEN_BASE" <<'PY'
import collections, statistics, sys
by_c = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split("\t")
    if f[:2] == ["split", "trivial"] and f[4] == sys.argv[2]: by_c[f[2]].append(float(f[5]))
print(int(max((statistics.median(v) for v in by_c.values()), default=0)))
PY
)}
  echo "open loop: $OPEN_BASE capacity $CAP req/s (closed loop, split layout, or OPEN_CAP)"
  OPEN_VARIANTS=(direct queue-proxy activator+qp nginx haproxy); n=${#OPEN_VARIANTS[@]}
  for pct in $OPEN; do
    rate=$((CAP * pct / 100))
    [ "$rate" -gt 0 ] || continue
    for r in $(seq "$ROUNDS"); do
      for i in $(seq 0 $((n-1))); do
        v=${OPEN_VARIANTS[$(( (i + r) % n ))]}
        url="http://127.0.0.1:${PORTOF[$v]}/"
        t0=0; for p in ${PID[$v]}; do t0=$((t0 + $(cpu_ticks "$p"))); done
        s0=$(steal_snap)
        read -r rps p50 p90 p99 reqs bad gcpu < <(open_cell "$rate" "$url")
        s1=$(steal_snap)
        t1=0; for p in ${PID[$v]}; do t1=$((t1 + $(cpu_ticks "$p"))); done
        # The warm-up second is sent too: CPU per request over everything sent.
        cpu_us=$(python3 -c "print(round(($t1-$t0)/$HZ*1e6/max($rate*($DUR+1),1),2))")
        steal=$(python3 -c "a='$s0'.split(); b='$s1'.split(); print(round(100*(int(b[1])-int(a[1]))/max(int(b[0])-int(a[0]),1),2))")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' open trivial "$pct" "$r" "$v" \
          "$rps" "$p50" "$p90" "$p99" "$cpu_us" "$bad" "$steal" "$gcpu" | tee -a "$OUT/raw.tsv"
      done
    done
  done
fi

if [ "$HEY" = 1 ]; then
  # The seeds' shape, reported only as ratios (hey costs several times wrk's CPU per request).
  { echo "| variant | hey -c 50 req/s | × direct |"; echo "|---|---|---|"
    d=""
    for v in "${VARIANTS[@]}"; do
      rps=$(taskset -c 0 hey -c 50 -z "${DUR}s" "${HDR[@]}" "http://127.0.0.1:${PORTOF[$v]}/" | awk '/Requests\/sec/{print $2}')
      d=${d:-$rps}
      echo "| $v | $rps | $(python3 -c "print(round($rps/$d,2))") |"
    done; } | tee "$OUT/hey.md"
fi

[ -s "$OUT/raw.tsv" ] && python3 benches/load/summarize.py "$OUT" | tee "$OUT/table.md"
echo "machine: $(nproc) CPUs, loadavg $(cut -d' ' -f1-3 /proc/loadavg), CC=$CC, DUR=${DUR}s, ROUNDS=$ROUNDS" | tee -a "$OUT/table.md"
