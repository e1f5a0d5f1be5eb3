#!/usr/bin/env python3
"""The closed-loop simulator against `activator local` on the seeds' autoscale run.

Runs examples/autoscale.yaml (target 10 at 100 %, window shortened to 6 s) under `activator
local`, waits for zero pods, then 50 closed-loop clients (`hey -c 50` style, `?sleep=100`) for
LOAD seconds while sampling GET /status every 100 ms; then runs `activator simulate
--closed-loop` with the same annotations, demand 50 for the same LOAD seconds and the pod start
measured by local mode's cold start. Prints both per second and the panic transitions.

    cargo build --workspace && python3 benches/closed-loop-vs-local.py [target/debug]
"""
import json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug"
LOAD, TAIL, CLIENTS = 20, 12, 50


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def status(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=2) as r:
        return json.load(r).get("default/autoscale-00001", {})


yaml = open("examples/autoscale.yaml").read().replace(
    'autoscaling.knative.dev/target: "10"',
    'autoscaling.knative.dev/target: "10"\n        autoscaling.knative.dev/window: "6s"')
tmp = tempfile.mkdtemp()
path = os.path.join(tmp, "autoscale.yaml")
open(path, "w").write(yaml)
port, admin = free_port(), free_port()
local = subprocess.Popen([f"{BIN}/activator", "local", "--listen", f"127.0.0.1:{port}",
                          "--admin", f"127.0.0.1:{admin}", "--scale-to-zero-grace-period", "1s", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = time.time() + 60
    while True:
        try:
            s = status(admin)
            if s and not s["pods"]:
                break
        except OSError:
            pass
        assert time.time() < deadline, "no idle revision"
        time.sleep(0.2)
    stop = threading.Event()
    errors = [0]

    def client():
        while not stop.is_set():
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=30)
                c.sendall(b"GET /?sleep=100 HTTP/1.1\r\nHost: autoscale.default.example.com\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := c.recv(4096):
                    data += chunk
                c.close()
                if not data.startswith(b"HTTP/1.1 200"):
                    errors[0] += 1
            except OSError:
                errors[0] += 1

    t0 = time.time()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    samples = []
    while time.time() - t0 < LOAD + TAIL:
        if time.time() - t0 >= LOAD and not stop.is_set():
            stop.set()
        try:
            s = status(admin)
            samples.append((time.time() - t0, s["ready_pods"], s["desired_pods"], s["panic"], s.get("last_cold_start"), s["panic_concurrency"]))
        except OSError:
            pass
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
finally:
    local.terminate()
    local.wait(30)

cold = next((x[4] for x in reversed(samples) if x[4]), None) or {}
start_ms = (cold.get("pod_start_ms") or 0) + (cold.get("readiness_ms") or 0)
trace = os.path.join(tmp, "demand.jsonl")
# Local mode's revision had idled to zero before the load: the simulated one idles WARM seconds
# first (its initial pod scales to zero), then the same demand; times are shifted back.
WARM = 15
open(trace, "w").write("".join(json.dumps(x) + "\n" for x in [
    {"t": 0, "concurrency": 0}, {"t": WARM, "concurrency": CLIENTS}, {"t": WARM + LOAD, "concurrency": 0}]))
sim = subprocess.run([f"{BIN}/activator", "simulate", "--closed-loop",
                      "--annotation", "target=10", "--annotation", "target-utilization-percentage=100",
                      "--annotation", "window=6s", "--pod-start-delay", f"{max(start_ms, 1):.0f}ms",
                      "--until", str(WARM + LOAD + TAIL), trace], capture_output=True, text=True, check=True)
rows = [json.loads(l) for l in sim.stdout.splitlines()]
ticks, summary = rows[:-1], rows[-1]["summary"]
ticks = [dict(x, t=round(x["t"] - WARM, 2)) for x in ticks if x["t"] > WARM]
summary["panic_transitions"] = [(t - WARM, p) for t, p in summary["panic_transitions"] if t > WARM]

print(f"client errors: {errors[0]}; pod start used for the simulation: {start_ms:.0f} ms")
print(" t | local ready/desired panic (panic-window concurrency) | simulated ready/desired panic")
for sec in range(1, LOAD + TAIL):
    loc = [x for x in samples if x[0] <= sec]
    l = loc[-1] if loc else (0, 0, 0, False, None, 0.0)
    sm = next((x for x in ticks if x["t"] >= sec), ticks[-1])
    print(f"{sec:2d} | {l[1]:2d}/{l[2]:2d} {'P' if l[3] else '-'} ({l[5]:5.1f}) | {sm['ready']:2d}/{sm['desired']:2d} {'P' if sm['panic'] else '-'}")


def transitions(seq):
    out, prev = [], False
    for t, p in seq:
        if p != prev:
            out.append((round(t, 1), p))
            prev = p
    return out


print("local panic transitions:", transitions([(x[0], x[3]) for x in samples]))
print("simulated panic transitions:", [(round(t, 1), p) for t, p in summary["panic_transitions"]])
