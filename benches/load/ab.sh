#!/usr/bin/env bash
# Interleaved A/B of two queue-proxy builds against nginx (benchmarking.md §5.1: ratios in one
# run, rotated order). One backend (examples/autoscale), queue-proxy A, queue-proxy B and nginx
# all pinned on CPU 1; wrk on CPU 0 ("split") or CPU 1 ("one-core"). Per cell: 1 s warm-up, then
# DUR s; prints one TSV row: layout c round variant req/s p50 cpu_us_per_req (utime+stime of the
# proxy process, nginx master + worker, / requests). 127.0.0.1 only.
#
#   benches/load/ab.sh DIR_A DIR_B [CONNS="10 50"] [ROUNDS=5] [DUR=4] [LAYOUT=split]
#   (each DIR holds a queue-proxy binary; DIR_B also the autoscale backend)
set -euo pipefail
A=$1; B=$2; CONNS=${3:-"10 50"}; ROUNDS=${4:-5}; DUR=${5:-4}; LAYOUT=${6:-split}
WCPU=0; [ "$LAYOUT" = one-core ] && WCPU=1
. "$(dirname "$0")/ab-lib.sh"
APP=$(free_port); PA=$(free_port); PB=$(free_port); NG=$(free_port)
PORT=$APP taskset -c 1 "$B"/autoscale >/dev/null 2>&1 & PIDS+=($!)
wait_port "$APP"
qp "$A" "$PA" "$APP"; A_PID=$!
qp "$B" "$PB" "$APP"; B_PID=$!
nginx_conf "$OUT/nginx.pid" "$APP" "$NG" > "$OUT/nginx.conf"
taskset -c 1 nginx -c "$OUT/nginx.conf" -p "$OUT" >/dev/null 2>&1 & PIDS+=($!); NG_PID=$!
wait_port "$PA"; wait_port "$PB"; wait_port "$NG"
NGW=$(pgrep -P "$NG_PID" || true); PIDS+=($NGW)
declare -A PORT=([A]=$PA [B]=$PB [nginx]=$NG) PID=([A]=$A_PID [B]=$B_PID [nginx]="$NG_PID $NGW")
V=(A B nginx)
for c in $CONNS; do for r in $(seq "$ROUNDS"); do for i in 0 1 2; do
  v=${V[$(( (i + r) % 3 ))]}; url=http://127.0.0.1:${PORT[$v]}/
  taskset -c $WCPU wrk -t1 -c"$c" -d1s "${HDR[@]}" "$url" >/dev/null
  # shellcheck disable=SC2086
  t0=$(ticks ${PID[$v]})
  out=$(taskset -c $WCPU wrk -t1 -c"$c" -d"${DUR}s" --latency "${HDR[@]}" "$url")
  # shellcheck disable=SC2086
  t1=$(ticks ${PID[$v]})
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$LAYOUT" "$c" "$r" "$v" \
    "$(awk '/Requests\/sec/{print $2}' <<<"$out")" "$(awk '$1=="50%"{print $2}' <<<"$out")" \
    "$(python3 -c "print(round(($t1-$t0)/$HZ*1e6/max($reqs,1),2))")"
done; done; done
