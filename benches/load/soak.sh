#!/usr/bin/env bash
# Reliability scenario 9, full length (not in CI): sustained overload must keep memory flat.
# 200 rps of 10 KiB POSTs with a 1 s client timeout into a queue-proxy at CONTAINER_CONCURRENCY=2
# whose app sleeps 30 s per request, for DURATION_S (default 300). Prints RSS, open fds and the
# answer mix every 10 s, then a verdict: RSS must stay under CEILING_MIB and be flat after the
# first minute (max - min below FLAT_MIB).
#
#   benches/load/soak.sh [DURATION_S=300] [RPS=200] [CEILING_MIB=64] [FLAT_MIB=8]
#
# BIN overrides where the release binaries are (default: build them here). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-300}; RPS=${2:-200}; CEILING_MIB=${3:-64}; FLAT_MIB=${4:-8}
OUT=benches/load/out; mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p queue-proxy -p examples
  BIN=target/release
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

APP=$(free_port); QP=$(free_port)
PORT=$APP "$BIN"/autoscale >/dev/null 2>&1 & PIDS+=($!)
wait_port "$APP"
env -i PATH="$PATH" SERVING_NAMESPACE=default SERVING_CONFIGURATION=soak SERVING_REVISION=soak-00001 \
  SERVING_POD=soak-pod SERVING_POD_IP=127.0.0.1 QUEUE_SERVING_PORT=$QP QUEUE_SERVING_TLS_PORT=8112 \
  USER_PORT=$APP CONTAINER_CONCURRENCY=2 REVISION_TIMEOUT_SECONDS=300 SERVING_READINESS_PROBE='' \
  SERVING_LOGGING_CONFIG='' SERVING_LOGGING_LEVEL=error ROOT_CA='' SYSTEM_NAMESPACE=knative-serving \
  OBSERVABILITY_CONFIG='{}' QUEUE_ADMIN_PORT=0 QUEUE_METRICS_PORT=0 QUEUE_DRAIN_SECONDS=1 \
  "$BIN"/queue-proxy >"$OUT/soak-qp.log" 2>&1 & PIDS+=($!); QP_PID=$!
wait_port "$QP"

python3 - "$QP" "$QP_PID" "$DUR" "$RPS" "$CEILING_MIB" "$FLAT_MIB" <<'PY'
import http.client, sys, threading, time, collections, os
port, pid, dur, rps, ceiling, flat = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
body = b"b" * 10240
counts = collections.Counter(); lock = threading.Lock()
stop = time.monotonic() + dur
tick = threading.Semaphore(0)

def worker():
    while True:
        tick.acquire()
        if time.monotonic() >= stop:
            return
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("POST", "/?sleep=30000", body=body)
            k = str(c.getresponse().status)
            c.close()
        except (TimeoutError, OSError) as e:
            k = "timeout" if "timed out" in str(e) else type(e).__name__
        with lock:
            counts[k] += 1

def status(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1])

threads = [threading.Thread(target=worker, daemon=True) for _ in range(400)]
for t in threads: t.start()
samples = []
start = time.monotonic(); nxt = start; last_print = start
while time.monotonic() < stop:
    # Open-loop pacing: RPS ticks per second whatever the answers do.
    now = time.monotonic()
    while nxt <= now:
        tick.release(); nxt += 1 / rps
    if now - last_print >= 10:
        last_print = now
        rss = status("VmRSS:"); fds = len(os.listdir(f"/proc/{pid}/fd"))
        samples.append((now - start, rss))
        with lock: mix = dict(counts)
        print(f"t={now - start:5.0f}s rss={rss / 1024:6.1f} MiB fds={fds:4d} answers={mix}", flush=True)
    time.sleep(0.002)
for _ in threads: tick.release()
warm = [r for t, r in samples if t >= 60] or [r for _, r in samples]
peak = max(r for _, r in samples) / 1024
spread = (max(warm) - min(warm)) / 1024
ok = peak < ceiling and spread < flat
print(f"peak RSS {peak:.1f} MiB (ceiling {ceiling}), spread after warm-up {spread:.1f} MiB (limit {flat}): {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
