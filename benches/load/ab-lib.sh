# Shared by ab.sh and ab-activator.sh (sourced): ports, process bookkeeping, and the queue-proxy
# with the reconciler's environment (CC 0, logging off) in front of an app port.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
# utime+stime clock ticks of the given pids, summed.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
PIDS=()
OUT=$(mktemp -d)
cleanup() { kill -9 "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
# qp BIN_DIR PORT APP_PORT: starts BIN_DIR/queue-proxy on CPU 1; its pid is $! and in PIDS.
qp() {
  env -i PATH="$PATH" SERVING_NAMESPACE=default SERVING_CONFIGURATION=hello SERVING_REVISION=hello-00001 \
    SERVING_POD=hello-pod SERVING_POD_IP=127.0.0.1 SERVING_SERVICE=hello QUEUE_SERVING_PORT="$2" \
    QUEUE_SERVING_TLS_PORT=8112 USER_PORT="$3" CONTAINER_CONCURRENCY=0 REVISION_TIMEOUT_SECONDS=300 \
    REVISION_RESPONSE_START_TIMEOUT_SECONDS=0 REVISION_IDLE_TIMEOUT_SECONDS=0 SERVING_READINESS_PROBE='' \
    SERVING_LOGGING_CONFIG='' SERVING_LOGGING_LEVEL=error ENABLE_PROFILING=false \
    SERVING_ENABLE_PROBE_REQUEST_LOG=false METRICS_COLLECTOR_ADDRESS='' ENABLE_HTTP2_AUTO_DETECTION=false \
    ENABLE_HTTP_FULL_DUPLEX=false ROOT_CA='' SYSTEM_NAMESPACE=knative-serving \
    SERVING_ENABLE_REQUEST_LOG=false OBSERVABILITY_CONFIG='{}' \
    QUEUE_ADMIN_PORT="$(free_port)" QUEUE_METRICS_PORT="$(free_port)" QUEUE_USER_METRICS_PORT=0 \
    QUEUE_DRAIN_SECONDS=1 taskset -c 1 "$1"/queue-proxy >/dev/null 2>&1 &
  PIDS+=($!)
}
HDR=(-H "Host: hello.default.example.com" -H "Knative-Serving-Namespace: default" -H "Knative-Serving-Revision: hello-00001")
