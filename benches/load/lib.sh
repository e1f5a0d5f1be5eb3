# Shared by the load scripts (sourced; defines functions and constants only): free ports, port
# waits, CPU ticks, the request headers, the queue-proxy with the reconciler's environment, and
# the nginx configuration every script compares against. 127.0.0.1 only.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
# utime+stime clock ticks of the given pids, summed.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
HDR=(-H "Host: hello.default.example.com" -H "Knative-Serving-Namespace: default" -H "Knative-Serving-Revision: hello-00001")
# run_qp BIN_DIR PORT APP_PORT CC: the queue-proxy on CPU 1 with logging and metrics off. Call it
# as a background job (`run_qp … &`): it execs, so $! is the queue-proxy itself.
run_qp() {
  exec env -i PATH="$PATH" SERVING_NAMESPACE=default SERVING_CONFIGURATION=hello SERVING_REVISION=hello-00001 \
    SERVING_POD=hello-pod SERVING_POD_IP=127.0.0.1 SERVING_SERVICE=hello QUEUE_SERVING_PORT="$2" \
    QUEUE_SERVING_TLS_PORT=8112 USER_PORT="$3" CONTAINER_CONCURRENCY="$4" REVISION_TIMEOUT_SECONDS=300 \
    REVISION_RESPONSE_START_TIMEOUT_SECONDS=0 REVISION_IDLE_TIMEOUT_SECONDS=0 SERVING_READINESS_PROBE='' \
    SERVING_LOGGING_CONFIG='' SERVING_LOGGING_LEVEL=error ENABLE_PROFILING=false \
    SERVING_ENABLE_PROBE_REQUEST_LOG=false METRICS_COLLECTOR_ADDRESS='' ENABLE_HTTP2_AUTO_DETECTION=false \
    ENABLE_HTTP_FULL_DUPLEX=false ROOT_CA='' SYSTEM_NAMESPACE=knative-serving \
    SERVING_ENABLE_REQUEST_LOG=false OBSERVABILITY_CONFIG='{}' \
    QUEUE_ADMIN_PORT="$(free_port)" QUEUE_METRICS_PORT="$(free_port)" QUEUE_USER_METRICS_PORT=0 \
    QUEUE_DRAIN_SECONDS=1 taskset -c 1 "$1"/queue-proxy
}
# nginx_conf PID_FILE APP_PORT PORT: one worker, keep-alive to the app (the comparison proxy).
nginx_conf() {
  cat <<NG
daemon off; worker_processes 1; pid $1; error_log /dev/null;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$2; keepalive 1000; }
  server { listen 127.0.0.1:$3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NG
}
