#!/usr/bin/env python3
"""Activator buffering bench (issue 8 item 4, benchmarking.md §5.6 "Activator buffering").

Starts the real activator binary with a file source whose only revision has no ready pods (scaled
to zero), holds N HTTP/1.1 requests on N client connections (127.0.0.1 only), and reports:

- PSS of the activator before, while holding N requests (ΔPSS / N = KiB per held request),
- PSS 0.2 s, 1 s and 3 s after every client disconnected (back to baseline?),
- that the activator's `kn_revision_request_queued` gauge went to N and back to 0.

    benches/load/buffering.py [--bin target/release] [--counts 100,1000,10000] [--rounds 1]
                              [--h2c-streams 100]

With --h2c-streams S the requests are sent by h2load (nghttp2-client) over h2c prior knowledge,
S streams per connection (N / S connections), instead of one HTTP/1.1 connection each.

Stdlib only. Raises RLIMIT_NOFILE to its hard limit for itself and the activator.
Writes a Markdown table to stdout and raw rows to benches/load/out/buffering.tsv.
"""

import argparse
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

NS, REV = "default", "held-00001"
REQUEST = (
    "GET /hold HTTP/1.1\r\nHost: held.default.example.com\r\n"
    f"Knative-Serving-Namespace: {NS}\r\nKnative-Serving-Revision: {REV}\r\n"
    "User-Agent: buffering-bench\r\nAccept: */*\r\n\r\n"
).encode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, deadline_s=30):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def smaps(pid):
    """Pss, Rss, Private_Dirty in KiB from /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in ("Pss", "Rss", "Private_Dirty"):
                out[k] = int(rest.split()[0])
    return out


def queued(metrics_port):
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("kn_revision_request_queued{") and f'"{REV}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def wait_queued(metrics_port, want, deadline_s):
    end = time.monotonic() + deadline_s
    q = -1
    while time.monotonic() < end:
        q = queued(metrics_port)
        if q == want:
            return q
        time.sleep(0.05)
    return q


def hold(port, n):
    """Opens n connections and sends one request on each; returns the sockets."""
    socks = []
    for i in range(n):
        for attempt in range(50):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                # Accept backlog full for a moment: let the activator catch up.
                time.sleep(0.02 * (attempt + 1))
        else:
            raise SystemExit(f"could not open connection {i}")
        s.sendall(REQUEST)
        socks.append(s)
        if i % 500 == 499:
            time.sleep(0.01)
    return socks


def close_all(socks):
    for s in socks:
        # RST, as a client that gives up would (and no TIME_WAIT pile-up across rounds).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def steal_pct(before, after):
    def parse(text):
        v = [int(x) for x in text.split()[1:9]]
        return sum(v), v[7]

    t0, s0 = parse(before)
    t1, s1 = parse(after)
    return 100.0 * (s1 - s0) / max(t1 - t0, 1)


def cpu_line():
    with open("/proc/stat") as f:
        return f.readline()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--counts", default="100,1000,10000")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default="benches/load/out")
    ap.add_argument("--extra-args", default="", help="extra activator flags (experiments)")
    ap.add_argument("--h2c-streams", type=int, default=0, help="hold over h2c, S streams per connection")
    args = ap.parse_args()
    counts = [int(x) for x in args.counts.split(",")]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = max(counts) + 200
    if hard < need:
        raise SystemExit(f"ulimit -n hard limit {hard} < {need}: raise it")

    os.makedirs(args.out, exist_ok=True)
    src = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    # A revision scaled to zero: known, no ready pods, so every request is held.
    src.write(f"revisions:\n  - namespace: {NS}\n    name: {REV}\n    containerConcurrency: 1\n"
              "    ready: []\n")
    src.close()
    port, mport = free_port(), free_port()
    env = dict(os.environ, POD_NAME="bench-activator", POD_IP="127.0.0.1",
               SYSTEM_NAMESPACE="knative-serving", ACTIVATOR_LOG_LEVEL="error")
    # Room for the largest count (the default per-revision bound is 10,000).
    cmd = [os.path.join(args.bin, "activator"), "--source", f"file:{src.name}",
           "--stats-sink", "none", "--http1-addr", f"127.0.0.1:{port}",
           "--h2c-addr", "127.0.0.1:0", "--metrics-addr", f"127.0.0.1:{mport}",
           "--max-queued-requests", str(max(counts) + 1)] + args.extra_args.split()
    act = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                           stderr=open(os.path.join(args.out, "buffering-activator.log"), "w"))
    rows = []
    try:
        wait_port(port)
        wait_port(mport)
        time.sleep(1.0)
        base = smaps(act.pid)
        print(f"# activator pid {act.pid}, idle: Pss {base['Pss']} KiB, Rss {base['Rss']} KiB; "
              f"loadavg {loadavg()}", file=sys.stderr)
        for rnd in range(1, args.rounds + 1):
            for n in counts:
                before = smaps(act.pid)
                st0 = cpu_line()
                t0 = time.monotonic()
                if args.h2c_streams:
                    conns = max(1, n // args.h2c_streams)
                    socks = [subprocess.Popen(
                        ["h2load", "-n", str(n), "-c", str(conns), "-m", str(args.h2c_streams),
                         "-t", "1", "-H", f"Knative-Serving-Namespace: {NS}",
                         "-H", f"Knative-Serving-Revision: {REV}", f"http://127.0.0.1:{port}/hold"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
                else:
                    socks = hold(port, n)
                got = wait_queued(mport, n, 60)
                time.sleep(0.5)
                held = smaps(act.pid)
                open_s = time.monotonic() - t0
                if args.h2c_streams:
                    socks[0].kill()
                    socks[0].wait()
                else:
                    close_all(socks)
                t1 = time.monotonic()
                after = {}
                for label, at in (("0.2s", 0.2), ("1s", 1.0), ("3s", 3.0)):
                    time.sleep(max(0.0, t1 + at - time.monotonic()))
                    after[label] = smaps(act.pid)
                q_after = queued(mport)
                st1 = cpu_line()
                row = dict(round=rnd, n=n, queued=got, queued_after=q_after,
                           base=base["Pss"], before=before["Pss"], held=held["Pss"],
                           per_kib=(held["Pss"] - before["Pss"]) / n,
                           a02=after["0.2s"]["Pss"], a1=after["1s"]["Pss"],
                           a3=after["3s"]["Pss"], open_s=open_s,
                           steal=steal_pct(st0, st1), load=loadavg())
                rows.append(row)
                print(f"# {row}", file=sys.stderr)
    finally:
        act.terminate()
        try:
            act.wait(5)
        except subprocess.TimeoutExpired:
            act.kill()
        os.unlink(src.name)

    with open(os.path.join(args.out, "buffering.tsv"), "w") as f:
        keys = list(rows[0].keys()) if rows else []
        f.write("\t".join(keys) + "\n")
        for r in rows:
            f.write("\t".join(str(r[k]) for k in keys) + "\n")
    proto = f"h2c, {args.h2c_streams} streams/conn" if args.h2c_streams else "HTTP/1.1, 1 conn each"
    print(f"Held over {proto}.\n")
    print("| round | held N | queued gauge | PSS before KiB | PSS held KiB | KiB / held request "
          "| ×N=10k MiB | PSS +0.2 s | +1 s | +3 s | +1 s − idle baseline KiB | queued after "
          "| steal % | loadavg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['round']} | {r['n']} | {r['queued']} | {r['before']} | {r['held']} "
              f"| {r['per_kib']:.2f} | {r['per_kib'] * 10000 / 1024:.1f} | {r['a02']} | {r['a1']} "
              f"| {r['a3']} | {r['a1'] - r['base']:+d} | {r['queued_after']} | {r['steal']:.1f} "
              f"| {r['load']} |")
    bad = [r for r in rows if r["queued"] != r["n"] or r["queued_after"] != 0]
    if bad:
        print(f"\nWARNING: {len(bad)} cells did not hold exactly N or did not drain", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
