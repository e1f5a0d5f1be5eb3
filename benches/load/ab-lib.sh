# Shared by ab.sh and ab-activator.sh (sourced): lib.sh, plus a scratch dir and the processes,
# killed on exit.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PIDS=()
OUT=$(mktemp -d)
cleanup() { kill -9 "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
# qp BIN_DIR PORT APP_PORT: the queue-proxy with CC 0; its pid is $! and in PIDS.
qp() {
  run_qp "$1" "$2" "$3" 0 >/dev/null 2>&1 &
  PIDS+=($!)
}
