#!/usr/bin/env bash
# Where the memory of held requests goes: runs the activator under valgrind's massif, holds N
# HTTP/1.1 requests (revision with no pods; 127.0.0.1 only), disconnects, and prints the peak
# heap snapshot's biggest allocation sites. Needs valgrind (Debian package). With H2C=S the N
# requests are h2c streams sent by h2load (nghttp2-client), S per connection.
#
#   benches/load/held-massif.sh [BIN=target/release/activator] [N=1000]
#   H2C=100 benches/load/held-massif.sh target/release/activator 1000
set -euo pipefail
BIN=${1:-target/release/activator}; N=${2:-1000}
OUT=${OUT:-benches/load/out}; mkdir -p "$OUT"
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
P=$(port); M=$(port)
printf 'revisions:\n  - namespace: default\n    name: held-00001\n    containerConcurrency: 1\n    ready: []\n' > "$OUT/held-source.yaml"
POD_NAME=a POD_IP=127.0.0.1 SYSTEM_NAMESPACE=x ACTIVATOR_LOG_LEVEL=error valgrind --tool=massif \
  --massif-out-file="$OUT/massif.out" --depth=40 --threshold=0.2 "$BIN" --source "file:$OUT/held-source.yaml" \
  --stats-sink none --http1-addr 127.0.0.1:$P --h2c-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:$M \
  --max-queued-requests $((N + 1)) > "$OUT/massif-activator.log" 2>&1 &
VP=$!
trap 'kill -INT $VP 2>/dev/null || true' EXIT
for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.2; done
python3 - "$N" "$P" "$M" "${H2C:-0}" <<'PY'
import socket, subprocess, sys, time, urllib.request
n, port, mport, h2c = map(int, sys.argv[1:])
req = (b"GET /hold HTTP/1.1\r\nHost: held.default.example.com\r\nKnative-Serving-Namespace: default\r\n"
       b"Knative-Serving-Revision: held-00001\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n")
socks, h2load = [], None
if h2c:
    h2load = subprocess.Popen(["h2load", "-n", str(n), "-c", str(max(1, n // h2c)), "-m", str(h2c),
        "-H", "Knative-Serving-Namespace: default", "-H", "Knative-Serving-Revision: held-00001",
        "-H", "User-Agent: x", f"http://127.0.0.1:{port}/hold"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
else:
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30); s.sendall(req); socks.append(s)
        if i % 100 == 99: time.sleep(0.05)
for _ in range(600):
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=30).read().decode()
    q = [l for l in body.splitlines() if l.startswith("kn_revision_request_queued{")]
    if q and int(float(q[0].split()[-1])) == n: break
    time.sleep(0.5)
time.sleep(3)
for s in socks: s.close()
if h2load: h2load.kill(); h2load.wait()
time.sleep(3)
PY
kill -INT $VP; wait $VP || true; trap - EXIT
ms_print "$OUT/massif.out" > "$OUT/massif.txt"
python3 - "$OUT/massif.txt" "$N" <<'PY'
import re, sys
blocks = open(sys.argv[1]).read().split("-" * 80)
n = int(sys.argv[2])
peak = max((b for b in blocks if "(heap allocation functions)" in b),
           key=lambda b: int(re.search(r"\(([\d,]+)B\) \(heap", b).group(1).replace(",", "")))
print("peak heap per held request:", int(re.search(r"\(([\d,]+)B\) \(heap", peak).group(1).replace(",", "")) // n, "bytes")
for line in peak.splitlines():
    m = re.match(r"^([| ]*)->([\d.]+)% \(([\d,]+)B\) (0x[0-9A-F]+: )?(.*)$", line)
    if m and len(m.group(1)) <= 4 and float(m.group(2)) >= 1:
        print(f"{int(m.group(3).replace(',', '')) // n:>7} B/req  {m.group(5)[:110]}")
PY
