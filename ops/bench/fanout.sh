#!/usr/bin/env bash
# Fan-out of one room across chatctl's workers: the embedded bus (through the master) against
# Redis pub/sub.
#
# For each mode (embedded, redis) an app of 2 chat workers is started; for each send rate, CLIENTS
# users (npm socket.io-client 4.x over websocket, ops/bench/fanout.mjs) log in and join one room,
# RAMP at a time, spread by the kernel over the 2 workers. Senders among them send RATE messages a
# second together for DURATION seconds, each carrying its send time; the others record the
# end-to-end latency of every message. Per run it reports: deliveries per second (summed over
# receivers), latency p50/p99/max, lost deliveries (expected = sent × receivers; a delivery later
# than GRACE seconds after the last send counts as lost), and CPU: the 2 workers, the
# master and redis-server from /proc/PID/stat (utime+stime) between the start of sending and the
# moment every client process is done (its last delivery, or for the senders 1 s after their last
# send), each client process's own (process.cpuUsage), and the whole machine's (/proc/stat).
# The results are in docs/BENCHMARKS.md ("Fan-out across workers").
#
# Usage: ops/bench/fanout.sh              (about 3.5 minutes on 2 cores once chatctl is built;
#                                         a results table at the end)
#   CHATCTL=path/to/chatctl   use this binary instead of `cargo build --release -p chatctl`
#   CLIENTS=1000 RATES="20 100" MODES="embedded redis" DURATION=10 RAMP=200
#   CLIENT_PROCS=2 (receiving Node processes; the senders share one more)
#   GRACE=5 (seconds receivers wait for late messages after the last send)
#   PORT= REDIS_PORT=            (default: ports reserved by ops/lib/ports.sh)
#
# The chat allows one socket 20 messages a second (serve --messages-per-second). The app runs with
# its defaults: workers started as `chatctl start -- chatctl serve --messages-per-second N` would
# not get the master's shared store (the master offers it only to the built-in chat app), so
# RATE is sent by ceil(RATE / 15) senders taking turns (2 for 20 msg/s, 7 for 100 msg/s), and the
# room has CLIENTS - senders receivers.
#
# Needs: cargo, node, jq, redis-server, and socket.io-client in ops/js/node_modules
# (ops/test-deps.sh). Traffic stays on 127.0.0.1; every wait is bounded; the trap stops exactly
# the processes this script started (the chatctl app, redis-server, the Node clients) and removes
# its temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLIENT=$ROOT/ops/bench/fanout.mjs
CLIENTS=${CLIENTS:-1000}
RATES=${RATES:-"20 100"}
MODES=${MODES:-"embedded redis"}
DURATION=${DURATION:-10}
RAMP=${RAMP:-200}
CLIENT_PROCS=${CLIENT_PROCS:-2}
GRACE=${GRACE:-5}
PORT=${PORT:-}
REDIS_PORT=${REDIS_PORT:-}
SENDER_RATE_LIMIT=20 # the chat's default --messages-per-second
# A token bucket refilled at exactly the send rate stays empty after one late burst, and then
# refuses what follows: each sender keeps a quarter below the limit.
SENDER_RATE=15
APP=fanout

log() { printf '%s\n' "$*" >&2; }
die() {
  log "fanout.sh: $*"
  exit 1
}

((CLIENTS >= 2 && CLIENT_PROCS >= 1 && CLIENTS - 1 >= CLIENT_PROCS)) || die "need CLIENTS >= CLIENT_PROCS + 1"
for tool in node jq redis-server; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
[[ -d $ROOT/ops/js/node_modules/socket.io-client ]] || die "socket.io-client is not in ops/js/node_modules: run ops/test-deps.sh"

if [[ -z ${CHATCTL:-} ]]; then
  log "building chatctl (cargo build --release -p chatctl)"
  (cd "$ROOT" && cargo build --release -p chatctl --quiet)
  CHATCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/chatctl
fi
[[ -x $CHATCTL ]] || die "no chatctl binary at $CHATCTL"
CHATCTL=$(cd "$(dirname "$CHATCTL")" && pwd)/$(basename "$CHATCTL")

# 1 000 websockets: the clients and the workers need the descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- state and cleanup -----------------------------------------------------------------------

WORK=$(mktemp -d /tmp/chatctl-bench-fanout.XXXXXX)
# Workers run as nobody when this runs as root: they read the app's home.
chmod 755 "$WORK"
export CHATCTL_HOME=$WORK/chatctl
mkdir -p "$CHATCTL_HOME"
STARTED_PIDS=() # Node clients
REDIS_PID=

stop_app() {
  local master
  master=$(cat "$CHATCTL_HOME/apps/$APP/master.pid" 2>/dev/null) || return 0
  if [[ -n $master ]] && kill -0 "$master" 2>/dev/null; then
    timeout 30 "$CHATCTL" stop "$APP" >/dev/null 2>&1
    # The master leads its own process group (setsid): whatever survived `stop` goes with it.
    kill -0 -- "-$master" 2>/dev/null && kill -KILL -- "-$master" 2>/dev/null
  fi
  return 0
}
stop_redis() {
  if [[ -n $REDIS_PID ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
  fi
  REDIS_PID=
  return 0
}
cleanup() {
  set +e
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  stop_app
  stop_redis
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=../lib/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/ports.sh"
[[ -n $PORT ]] || { reserve_port || die "no free port"; PORT=$RESERVED_PORT; }
[[ -n $REDIS_PORT ]] || { reserve_port || die "no free port"; REDIS_PORT=$RESERVED_PORT; }

# --- helpers ---------------------------------------------------------------------------------

now_ms() { # bash 5: no process per clock reading
  local t=${EPOCHREALTIME/[.,]/}
  echo $((t / 1000))
}
CLK_TCK=$(getconf CLK_TCK)
# CPU time of processes in clock ticks: utime + stime (fields 14 and 15 of /proc/PID/stat,
# counted after the command name, which may hold spaces).
cpu_ticks() {
  local pid total=0 fields
  for pid in "$@"; do
    fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || die "process $pid is gone"
    total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
  done
  echo "$total"
}
# Busy ticks of the whole machine, every core (user nice system irq softirq steal in /proc/stat):
# with the processes above, it tells whether the machine itself was the limit, and whether
# anything else ran during the run.
# Softirq, apart: loopback TCP is processed there, and that time is charged to no process.
machine_busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
machine_softirq_ticks() { awk '/^cpu / {print $8; exit}' /proc/stat; }
# "seconds (percent of one core)" for ticks over a window in ms
cpu_text() { awk -v t="$1" -v hz="$CLK_TCK" -v ms="$2" 'BEGIN { printf "%.2f s (%d %%)", t / hz, t / hz * 100000 / ms }'; }

# Polls until every file holds a line with "event":"$1"; fails on an "error" line or a dead client.
wait_for_event() { # event seconds files...
  local event=$1 deadline=$(($(now_ms) + $2 * 1000)) file pid missing
  shift 2
  while :; do
    missing=0
    for file in "$@"; do
      if grep -q '"event":"error"' "$file" 2>/dev/null; then
        die "client $(basename "$file"): $(grep '"event":"error"' "$file" | head -1)"
      fi
      grep -q "\"event\":\"$event\"" "$file" 2>/dev/null || missing=$((missing + 1))
    done
    ((missing == 0)) && return 0
    if [[ $event == ready ]]; then
      for pid in "${STARTED_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a client exited before it was ready (pid $pid): $(cat "$@" 2>/dev/null | tail -3)"
      done
    fi
    (($(now_ms) < deadline)) || die "$missing client process(es) not '$event' within $2 s"
    sleep 0.05
  done
}

app_worker_pids() {
  timeout 10 "$CHATCTL" list --json | jq -r --arg app "$APP" \
    '(if type == "array" then . else .apps end)[] | select(.name == $app) | .workers[] | select(.status == "online") | .pid'
}

start_app() { # mode
  local env=()
  if [[ $1 == redis ]]; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize no --loglevel warning >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    local deadline=$(($(now_ms) + 10000))
    until [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; do
      (($(now_ms) < deadline)) || die "redis-server did not answer on port $REDIS_PORT: $(tail -3 "$WORK/redis.log")"
      sleep 0.1
    done
    env=(--env "REDIS_URL=redis://127.0.0.1:$REDIS_PORT")
  fi
  local user=()
  [[ $(id -u) == 0 ]] && user=(--user nobody)
  log "$1: starting 2 chat workers on 127.0.0.1:$PORT"
  # Every user logs in from this machine's one address: lift the per-address login budget.
  env+=(--env "CHATCTL_LOGINS_PER_ADDRESS=1000000")
  timeout 60 "$CHATCTL" start --name "$APP" --listen "127.0.0.1:$PORT" -i 2 "${user[@]}" "${env[@]}" >/dev/null ||
    die "chatctl start failed"
  MASTER_PID=$(cat "$CHATCTL_HOME/apps/$APP/master.pid")
  mapfile -t WORKER_PIDS < <(app_worker_pids)
  ((${#WORKER_PIDS[@]} == 2)) || die "expected 2 online workers in chatctl list --json, got: ${WORKER_PIDS[*]}"
}

# One measured run; appends its row to $WORK/rows.
run_once() { # mode rate
  local mode=$1 rate=$2 run=$WORK/run-$1-$2 tag room files=() outs=() i first count per senders
  mkdir -p "$run"
  senders=$(((rate + SENDER_RATE - 1) / SENDER_RATE))
  ((CLIENTS - senders >= CLIENT_PROCS)) || die "$CLIENTS users are too few for $senders senders"
  # Short nicknames (e1, e1s0, e12, ...): each join sends the room's list of them to everyone.
  RUN_NUMBER=$((RUN_NUMBER + 1))
  tag=${mode:0:1}$RUN_NUMBER
  room=fanout-$mode-$rate
  STARTED_PIDS=()
  local common=(--url "http://127.0.0.1:$PORT" --room "$room" --tag "$tag" --total "$CLIENTS"
    --rate "$rate" --senders "$senders" --duration "$DURATION" --grace "$GRACE" --go "$run/go")
  node "$CLIENT" clients "${common[@]}" --sender --first 0 --count "$senders" --ramp "$senders" \
    --out "$run/sender.json" >"$run/sender.log" 2>&1 &
  STARTED_PIDS+=($!)
  files+=("$run/sender.log")
  outs+=("$run/sender.json")
  per=$(((CLIENTS - senders + CLIENT_PROCS - 1) / CLIENT_PROCS))
  first=$senders
  for ((i = 0; i < CLIENT_PROCS; i++)); do
    count=$((CLIENTS - first < per ? CLIENTS - first : per))
    node "$CLIENT" clients "${common[@]}" --first "$first" --count "$count" \
      --ramp $(((RAMP + CLIENT_PROCS - 1) / CLIENT_PROCS)) \
      --out "$run/receivers-$i.json" >"$run/receivers-$i.log" 2>&1 &
    STARTED_PIDS+=($!)
    files+=("$run/receivers-$i.log")
    outs+=("$run/receivers-$i.json")
    first=$((first + count))
  done
  log "$mode, $rate msg/s: $CLIENTS users ($senders sending) joining room $room ($RAMP at a time over $CLIENT_PROCS+1 client processes)"
  local joined_at join_ms
  joined_at=$(now_ms)
  wait_for_event "ready" 240 "${files[@]}"
  join_ms=$(($(now_ms) - joined_at))
  # The join storm (each join sends the room's users_list to every member) has passed: every
  # client saw the full list. Let the last packets settle before measuring.
  sleep 2
  local workers0 master0 redis0=0 machine0 softirq0 start end
  workers0=$(cpu_ticks "${WORKER_PIDS[@]}")
  master0=$(cpu_ticks "$MASTER_PID")
  [[ -n $REDIS_PID ]] && redis0=$(cpu_ticks "$REDIS_PID")
  machine0=$(machine_busy_ticks)
  softirq0=$(machine_softirq_ticks)
  start=$(($(now_ms) + 300))
  echo "$start" >"$run/go.tmp" && mv "$run/go.tmp" "$run/go"
  log "$mode, $rate msg/s: sending for $DURATION s"
  wait_for_event "done" $((DURATION + GRACE + 60)) "${files[@]}"
  end=$(now_ms)
  local workers master redis=0 machine softirq window=$((end - start))
  machine=$(($(machine_busy_ticks) - machine0))
  softirq=$(($(machine_softirq_ticks) - softirq0))
  workers=$(($(cpu_ticks "${WORKER_PIDS[@]}") - workers0))
  master=$(($(cpu_ticks "$MASTER_PID") - master0))
  [[ -n $REDIS_PID ]] && redis=$(($(cpu_ticks "$REDIS_PID") - redis0))
  for i in "${STARTED_PIDS[@]}"; do
    wait "$i" || die "a client failed: $(cat "${files[@]}" | grep error | head -1)"
  done
  STARTED_PIDS=()
  local summary
  summary=$(node "$CLIENT" summary "${outs[@]}") || die "summary failed"
  echo "$summary" >"$run/summary.json"
  log "  $summary"
  local redis_text=-
  [[ $mode == redis ]] && redis_text=$(cpu_text "$redis" "$window")
  jq -r --arg mode "$mode" --arg join "$join_ms" --arg workers "$(cpu_text "$workers" "$window")" \
    --arg master "$(cpu_text "$master" "$window")" --arg redis "$redis_text" --arg window "$window" \
    --arg machine "$(cpu_text "$machine" "$window"), softirq $(cpu_text "$softirq" "$window")" \
    '"| \($mode) | \(.rate) | \(.senders) | \(.receivers) | \(.sent) | \(.expected) | \(.delivered) | \(.lost) | \(.delivered_per_s) | \(.p50_ms) | \(.p99_ms) | \(.max_ms) | \($workers) | \($master) | \($redis) | \(.client_cpu_ms | map(. / 10 / ($window | tonumber) * 1000 | floor | tostring + " %") | join(" / ")) | \($machine) | \($join) |"' \
    <<<"$summary" >>"$WORK/rows"
  # The clients' leaving sends users_list and user_left to whoever is left: let it pass.
  sleep 3
}

: >"$WORK/rows"
RUN_NUMBER=0
for mode in $MODES; do
  [[ $mode == embedded || $mode == redis ]] || die "unknown mode $mode (embedded or redis)"
  start_app "$mode"
  for rate in $RATES; do
    run_once "$mode" "$rate"
  done
  stop_app
  stop_redis
done

cat <<EOF

## Fan-out across workers: embedded bus vs Redis — results

date: $(date -u +%Y-%m-%dT%H:%MZ)   nproc: $(nproc)   cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
chatctl: $("$CHATCTL" --version)   node: $(node --version)   socket.io-client: $(node -p "require('$ROOT/ops/js/node_modules/socket.io-client/package.json').version")   $(redis-server --version | cut -d' ' -f1-3)
$CLIENTS users in one room over 2 workers (default chat settings), senders at most $SENDER_RATE msg/s each (the chat's limit: $SENDER_RATE_LIMIT) in one process, receivers in $CLIENT_PROCS processes; $DURATION s of sending per run
CPU: seconds from the start of sending until every client was done, and % of one core over that span

| mode | rate (msg/s) | senders | receivers | sent | expected deliveries | delivered | lost | delivered msg/s | p50 (ms) | p99 (ms) | max (ms) | 2 workers CPU | master CPU | redis CPU | client CPU (sender / receiver processes) | machine busy (all $(nproc) cores), of which softirq | join (ms) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
$(cat "$WORK/rows")
EOF
