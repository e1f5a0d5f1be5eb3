#!/usr/bin/env python3
"""Summarises benches/load/out/raw.tsv (written by run.sh) into a Markdown table on stdout and
two SVG charts next to it: latency-<layout>-<shape>.svg (p50/p90/p99 per variant and
concurrency) and cpu.svg (proxy CPU µs per request per variant). Stdlib only; the SVG is written
by hand so no plotting package is needed.

    benches/load/summarize.py benches/load/out

raw.tsv columns: layout shape c round variant rps p50_us p90_us p99_us cpu_us non2xx steal_pct
wrk_cpu_pct. Rows with layout "open" come from the open-loop generator (benches/src/bin/openloop.rs):
there c is the offered load in % of direct's capacity, latencies run from each request's intended
start, and the last column is the generator's CPU. Ratios to direct are taken per round (rotated order, same round), then the median
and IQR over rounds are reported. "CPU-bound × direct" estimates the same ratio from CPU cost
alone (split layout: the app and the proxy share one CPU, so saturation is 1/(app + proxy) µs
against direct's 1/app), which stays meaningful when direct's req/s is bounded by wrk.
"""

import collections
import math
import os
import statistics as st
import sys

COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"]


def quartiles(xs):
    xs = sorted(xs)
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = st.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def load(path):
    rows = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) != 13:
            continue
        layout, shape, c, rnd, v = f[0], f[1], int(f[2]), int(f[3]), f[4]
        rps, p50, p90, p99, cpu, bad, steal, wcpu = map(float, f[5:])
        rows.append(dict(layout=layout, shape=shape, c=c, round=rnd, v=v, rps=rps, p50=p50,
                         p90=p90, p99=p99, cpu=cpu, bad=int(bad), steal=steal, wcpu=wcpu))
    return rows


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bar_chart(path, title, groups, series, unit, log=False):
    """groups: [(group label, [(variant, {series: value})])]; horizontal bars."""
    row_h, bar_h, left, width = 14, 4, 210, 520
    n_rows = sum(len(items) for _, items in groups)
    height = 60 + n_rows * row_h + len(groups) * 18 + 30
    vals = [val for _, items in groups for _, d in items for s in series if (val := d.get(s)) and val > 0]
    vmax = max(vals) if vals else 1
    vmin = min(vals) if vals else 1
    if log:
        lo, hi = math.log10(max(vmin / 2, 1e-3)), math.log10(vmax * 1.1)
        scale = lambda x: (math.log10(max(x, 10 ** lo)) - lo) / (hi - lo) * width
    else:
        scale = lambda x: x / (vmax * 1.05) * width
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 140}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="10" y="18" font-size="14" font-weight="bold">{esc(title)}</text>']
    for i, s in enumerate(series):
        out.append(f'<rect x="{left + i * 90}" y="28" width="10" height="10" fill="{COLORS[i]}"/>'
                   f'<text x="{left + i * 90 + 14}" y="37">{esc(s)}</text>')
    y = 56
    for label, items in groups:
        out.append(f'<text x="10" y="{y + 10}" font-weight="bold">{esc(label)}</text>')
        y += 16
        for v, d in items:
            out.append(f'<text x="{left - 6}" y="{y + 9}" text-anchor="end">{esc(v)}</text>')
            for i, s in enumerate(series):
                val = d.get(s)
                if val is None or val != val:
                    continue
                w = max(scale(val), 1)
                out.append(f'<rect x="{left}" y="{y + i * bar_h}" width="{w:.1f}" height="{bar_h - 0.5}" '
                           f'fill="{COLORS[i]}"><title>{esc(v)} {esc(s)}: {val:.1f} {unit}</title></rect>')
            last = d.get(series[-1])
            if last is not None and last == last:
                out.append(f'<text x="{left + max(scale(last), 1) + 4}" y="{y + 9}" fill="#555">'
                           f'{last:.0f}</text>')
            y += row_h
        y += 2
    axis = f"{unit}, log scale" if log else unit
    out.append(f'<text x="{left}" y="{height - 8}" fill="#555">{esc(axis)}; bar end label = '
               f'{esc(series[-1])}</text></svg>')
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "benches/load/out"
    rows = load(os.path.join(out_dir, "raw.tsv"))
    if not rows:
        sys.exit("no rows in raw.tsv")
    variants = list(dict.fromkeys(r["v"] for r in rows))
    cells = collections.defaultdict(list)
    for r in rows:
        cells[(r["layout"], r["shape"], r["c"], r["v"])].append(r)
    direct = {(r["layout"], r["shape"], r["c"], r["round"]): r for r in rows if r["v"] == "direct"}

    print("| layout | shape | c | variant | req/s median | × direct median (IQR) | CPU-bound × direct "
          "| p50 µs | added p50 µs "
          "| p90 µs | p99 µs | added p99 µs | proxy CPU µs/req (direct: the app) | non-2xx | max steal % "
          "| max wrk CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lat_groups = collections.defaultdict(list)
    cpu_groups = collections.defaultdict(list)
    for key in sorted({k[:3] for k in cells}, key=lambda k: (k[0] != "split", k[1], k[2])):
        layout, shape, c = key
        d = cells.get(key + ("direct",), [])
        d_p50 = st.median(x["p50"] for x in d) if d else float("nan")
        d_p99 = st.median(x["p99"] for x in d) if d else float("nan")
        d_cpu = st.median(x["cpu"] for x in d) if d else float("nan")
        for v in variants:
            xs = cells.get(key + (v,))
            if not xs:
                continue
            ratios = [x["rps"] / direct[(layout, shape, c, x["round"])]["rps"]
                      for x in xs if (layout, shape, c, x["round"]) in direct
                      and direct[(layout, shape, c, x["round"])]["rps"] > 0]
            q1, med, q3 = quartiles(ratios) if ratios else (float("nan"),) * 3
            p50 = st.median(x["p50"] for x in xs)
            p90 = st.median(x["p90"] for x in xs)
            p99 = st.median(x["p99"] for x in xs)
            cpu = st.median(x["cpu"] for x in xs)
            # Saturation on the shared server CPU, from CPU cost alone: with the app alone on it
            # the CPU serves 1/app requests per second, with a proxy next to it 1/(app + proxy).
            # Meaningful where direct's measured req/s is bounded by the load generator (split).
            bound = (d_cpu / (d_cpu + cpu) if v != "direct" and layout == "split"
                     and d_cpu + cpu > 0 else float("nan"))
            print(f"| {layout} | {shape} | {c} | {v} | {st.median(x['rps'] for x in xs):.0f} "
                  f"| {med:.2f} ({q1:.2f}–{q3:.2f}) | {bound:.2f} | {p50:.0f} | {p50 - d_p50:+.0f} "
                  f"| {p90:.0f} "
                  f"| {p99:.0f} | {p99 - d_p99:+.0f} | {cpu:.1f} | {sum(x['bad'] for x in xs)} "
                  f"| {max(x['steal'] for x in xs):.1f} | {max(x['wcpu'] for x in xs):.0f} |")
            lat_groups[(layout, shape)].append((f"c={c}", v, {"p50": p50, "p90": p90, "p99": p99}))
            if v != "direct":
                cpu_groups[f"{layout} {shape} c={c}"].append((v, {"CPU µs/req": cpu}))

    for (layout, shape), items in lat_groups.items():
        groups = collections.OrderedDict()
        for g, v, d in items:
            groups.setdefault(g, []).append((v, d))
        bar_chart(os.path.join(out_dir, f"latency-{layout}-{shape}.svg"),
                  (f"Latency per variant (open loop at c % of direct capacity, {shape} backend)"
                   if layout == "open" else
                   f"Latency per variant ({layout} layout, {shape} backend, wrk closed loop)"),
                  list(groups.items()), ["p50", "p90", "p99"], "µs", log=True)
    bar_chart(os.path.join(out_dir, "cpu.svg"), "Proxy CPU per request (utime+stime / requests)",
              list(cpu_groups.items()), ["CPU µs/req"], "µs per request")


if __name__ == "__main__":
    main()
