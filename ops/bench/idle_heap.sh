#!/usr/bin/env bash
# Where an idle connection's bytes go: heaptrack on `chatctl serve --threads 1` holding CLIENTS
# idle chat clients (chat-bench --scenario idle: logged in, both namespaces joined, rooms of 10),
# killed while they are held, so that what heaptrack calls "leaked" is what the connections
# keep. Run it at two sizes and divide the difference of the totals by the difference of the
# sizes: that is the heap of one connection, without the process's own (docs/BENCHMARKS.md,
# "Where the bytes go").
#
# With PROCESS=master it measures the master of `chatctl run -i 2` instead (the workers run
# untraced): what a cluster keeps per connection in the master (the chat's login sessions and
# presence, connection-state recovery's kept sockets).
#
# Usage: ops/bench/idle_heap.sh [OUT_DIR]     (about 20 s for 4,000 clients once built)
#   CLIENTS=4000   CHATCTL=path/to/chatctl (built if not given)   PROCESS=serve|master
# Prints the heap left and the server's RSS; OUT_DIR keeps heaptrack's data (ht.zst) and
# `heaptrack_print --print-leaks` by call site (leaks.txt).
#
# Needs: heaptrack, cargo, ss. Traffic stays on 127.0.0.0/8; the trap stops what this script
# started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLIENTS=${CLIENTS:-4000}
PROCESS=${PROCESS:-serve}
OUT=${1:-$(mktemp -d /tmp/chatctl-idle-heap.XXXXXX)}
mkdir -p "$OUT"

die() {
  echo "idle_heap.sh: $*" >&2
  exit 1
}
command -v heaptrack >/dev/null || die "heaptrack is missing (apt-get install heaptrack)"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release --quiet -p chat-bench)
if [[ -z ${CHATCTL:-} ]]; then
  (cd "$ROOT" && cargo build --release --quiet -p chatctl)
  CHATCTL=$TARGET/release/chatctl
fi
BENCH=$TARGET/release/chat-bench

# shellcheck source=../lib/ports.sh
source "$ROOT/ops/lib/ports.sh"
reserve_port || die "no free loopback port"
PORT=$RESERVED_PORT

HOME_DIR=$(mktemp -d /tmp/chatctl-idle-heap-home.XXXXXX)
TRACKER= BENCH_PID= SERVER=
# The master's workers (PROCESS=master), stopped here too in case the master's end does not
# take them along.
WORKERS=()
cleanup() {
  [[ -n $BENCH_PID ]] && kill "$BENCH_PID" 2>/dev/null
  [[ -n $SERVER ]] && kill -KILL "$SERVER" 2>/dev/null
  [[ -n $TRACKER ]] && kill "$TRACKER" 2>/dev/null
  ((${#WORKERS[@]} == 0)) || kill "${WORKERS[@]}" 2>/dev/null
  rm -rf "$HOME_DIR"
}
trap cleanup EXIT

ulimit -n "$(ulimit -Hn)"
SERVE_FLAGS=(--logins-per-address 1000000 --messages-per-second 1000000 --max-pending-per-address 100000
  --max-connections 100000)
case $PROCESS in
  serve) COMMAND=(serve --port "$PORT" --threads 1 "${SERVE_FLAGS[@]}") ;;
  # Only the master is traced: the total would otherwise hold the workers' heaps, several times
  # the master's (the workers are its children, run as /proc/self/fd/N).
  master) COMMAND=(run --name idle-heap --listen "127.0.0.1:$PORT" -i 2 -- serve "${SERVE_FLAGS[@]}") ;;
  *) die "PROCESS is serve or master, not $PROCESS" ;;
esac
CHAT_SECRET=idle-heap-measurement-secret-0123456789 CHATCTL_HOME=$HOME_DIR \
  heaptrack -o "$OUT/ht" "$CHATCTL" "${COMMAND[@]}" >"$OUT/serve.log" 2>&1 &
TRACKER=$!
for _ in $(seq 100); do
  ss -Htln "( sport = :$PORT )" | grep -q . && break
  sleep 0.2
done
SERVER=$(pgrep -P "$TRACKER" -x chatctl || true)
[[ -n $SERVER ]] || die "chatctl $PROCESS did not start under heaptrack: $(tail -3 "$OUT/serve.log")"
if [[ $PROCESS == master ]]; then
  for _ in $(seq 150); do
    mapfile -t WORKERS < <(pgrep -P "$SERVER" || true)
    ((${#WORKERS[@]} == 2)) && grep -q "worker online worker=1" "$OUT/serve.log" &&
      grep -q "worker online worker=0" "$OUT/serve.log" && break
    sleep 0.2
  done
  ((${#WORKERS[@]} == 2)) || die "the master's two workers did not come online: $(tail -3 "$OUT/serve.log")"
fi

"$BENCH" --url "http://127.0.0.1:$PORT" --sources 127.0.0.1-127.0.0.16 --scenario idle \
  --clients "$CLIENTS" --room-size 10 --ramp 2000 --duration 60s >"$OUT/bench.log" 2>&1 &
BENCH_PID=$!
for _ in $(seq 300); do
  (($(ss -Htn state established "( sport = :$PORT )" | wc -l) >= CLIENTS)) && break
  sleep 0.2
done
# The last joins' answers and room lists settle.
sleep 2
echo "connections: $(ss -Htn state established "( sport = :$PORT )" | wc -l) of $CLIENTS"
grep VmRSS "/proc/$SERVER/status"
for worker in "${WORKERS[@]}"; do echo "worker $worker: $(grep VmRSS "/proc/$worker/status")"; done
# Killed while held: nothing is freed, so heaptrack reports every live allocation as leaked.
kill -KILL "$SERVER"
SERVER=
wait "$TRACKER" 2>/dev/null || true
TRACKER=
heaptrack_print -f "$OUT"/ht.*zst --print-leaks 1 --peak-limit 200 --sub-peak-limit 400 \
  --print-peaks 0 --print-allocators 0 --print-temporary 0 >"$OUT/leaks.txt" 2>/dev/null
grep "total memory leaked" "$OUT/leaks.txt"
echo "heaptrack data and leaks by call site: $OUT"
