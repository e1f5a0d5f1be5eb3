#!/usr/bin/env bash
# Interleaved A/B of two activator builds (benchmarking.md §5.1: ratios in one run, rotated
# order), the activator-hop counterpart of ab.sh. One backend (examples/autoscale) behind one
# queue-proxy (CC 0); activator A and activator B both route revision hello-00001 to that
# queue-proxy (file source). Backend, queue-proxy and both activators are pinned on CPU 1; wrk
# on CPU 0 ("split") or CPU 1 ("one-core"). Per cell: 1 s warm-up, then DUR s; prints one TSV
# row: layout c round variant req/s p50 act_cpu_us_per_req (utime+stime of that activator
# process / requests; 0 for "qp") total_cpu_us_per_req (activator + queue-proxy + backend). The variant
# "qp" is wrk straight at the queue-proxy (the hop the activator adds is the difference).
# 127.0.0.1 only.
#
#   benches/load/ab-activator.sh DIR_A DIR_B [CONNS="10 50"] [ROUNDS=5] [DUR=4] [LAYOUT=split]
#   (each DIR holds an activator binary; DIR_B also queue-proxy and autoscale)
set -euo pipefail
A=$1; B=$2; CONNS=${3:-"10 50"}; ROUNDS=${4:-5}; DUR=${5:-4}; LAYOUT=${6:-split}
WCPU=0; [ "$LAYOUT" = one-core ] && WCPU=1
. "$(dirname "$0")/ab-lib.sh"
APP=$(free_port); QP=$(free_port); PA=$(free_port); PB=$(free_port)
PORT=$APP taskset -c 1 "$B"/autoscale >/dev/null 2>&1 & PIDS+=($!); APP_PID=$!
wait_port "$APP"
qp "$B" "$QP" "$APP"; QP_PID=$!
wait_port "$QP"
printf 'revisions:\n  - namespace: default\n    name: hello-00001\n    containerConcurrency: 0\n    ready: ["127.0.0.1:%s"]\n' "$QP" > "$OUT/source.yaml"
act() { # BIN PORT
  POD_NAME=act POD_IP=127.0.0.1 SYSTEM_NAMESPACE=knative-serving ACTIVATOR_LOG_LEVEL=error taskset -c 1 "$1"/activator \
    --source "file:$OUT/source.yaml" --stats-sink none --http1-addr 127.0.0.1:"$2" --h2c-addr 127.0.0.1:0 \
    --metrics-addr none >/dev/null 2>&1 &
  PIDS+=($!)
}
act "$A" "$PA"; A_PID=$!
act "$B" "$PB"; B_PID=$!
wait_port "$PA"; wait_port "$PB"
declare -A PORT=([A]=$PA [B]=$PB [qp]=$QP) PID=([A]=$A_PID [B]=$B_PID [qp]="")
# The activator is ready once it answers 200 (probe of the pod done).
for v in A B; do for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "${HDR[@]}" "http://127.0.0.1:${PORT[$v]}/")" = 200 ] && break; sleep 0.1
done; done
V=(A B qp)
for c in $CONNS; do for r in $(seq "$ROUNDS"); do for i in 0 1 2; do
  v=${V[$(( (i + r) % 3 ))]}; url=http://127.0.0.1:${PORT[$v]}/
  taskset -c $WCPU wrk -t1 -c"$c" -d1s "${HDR[@]}" "$url" >/dev/null
  # shellcheck disable=SC2086
  t0=$(ticks ${PID[$v]}); a0=$(ticks ${PID[$v]} "$QP_PID" "$APP_PID")
  out=$(taskset -c $WCPU wrk -t1 -c"$c" -d"${DUR}s" --latency "${HDR[@]}" "$url")
  # shellcheck disable=SC2086
  t1=$(ticks ${PID[$v]}); a1=$(ticks ${PID[$v]} "$QP_PID" "$APP_PID")
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$LAYOUT" "$c" "$r" "$v" \
    "$(awk '/Requests\/sec/{print $2}' <<<"$out")" "$(awk '$1=="50%"{print $2}' <<<"$out")" \
    "$(python3 -c "print(round(($t1-$t0)/$HZ*1e6/max($reqs,1),2))")" \
    "$(python3 -c "print(round(($a1-$a0)/$HZ*1e6/max($reqs,1),2))")"
done; done; done
