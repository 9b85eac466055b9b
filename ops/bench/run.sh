#!/usr/bin/env bash
# One command for every chat benchmark: the same load (chat-bench, crates/bench) against our chat
# and against two peers with the same HTTP + Socket.IO surface, and the results in
# docs/BENCHMARKS.md between the markers `<!-- run.sh:begin -->` and `<!-- run.sh:end -->`.
#
# Servers (SERVERS picks among them, in this order):
#   chatctl            `chatctl start -i WORKERS -- serve ...`: workers share state through the master
#   chatctl-redis      the same with `--redis`, on the run's own redis-server
#   node-chat          ops/bench/peers/node-chat: socket.io 4 on node:cluster (WORKERS workers),
#                      @socket.io/sticky, @socket.io/redis-adapter on the same redis-server
#   socketioxide-chat  ops/bench/peers/socketioxide-chat: socketioxide + axum, one process
# Every server runs without a message rate limit (ours: --messages-per-second 1000000).
#
# Scenarios (SCENARIOS picks among them), each against a freshly started server:
#   idle     IDLE_CLIENTS connected and in rooms of 10, held IDLE_HOLD: memory per connection.
#            Above 15 000 clients the load is split over ceil(N / 15 000) chat-bench processes (the
#            hard descriptor limit per process is 20 000 here) and this script measures the
#            servers' memory itself once `ss` counts every connection established.
#   chat     CHAT_CLIENTS in rooms of CHAT_ROOM_SIZE, each sending CHAT_RATE msg/s for CHAT_DURATION
#   fanout   one room of FANOUT_CLIENTS, one sender at FANOUT_RATES (FANOUT_STEP each) until the
#            p99 latency passes P99_LIMIT
#   storm    STORM_CLIENTS connecting at once (--ramp 0): time until all are connected, failures
#   polling  POLL_CLIENTS long-polling clients in rooms of 10, 1 msg/s each, POLL_DURATION: through
#            chatctl's master (sticky dispatch) and through @socket.io/sticky for node-chat
#   fault    (not in the default SCENARIOS) FAULT_CLIENTS at the chat load (rooms of CHAT_ROOM_SIZE,
#            CHAT_RATE msg/s each) for FAULT_DURATION, and `kill -9` of one worker FAULT_AFTER into
#            it (chat-bench --fault-command); the clients reconnect with connection-state recovery.
#            Messages lost, sockets recovered or not, time until back. node-chat runs with
#            socket.io's connectionStateRecovery on (NODE_CHAT_RECOVERY=1); socketioxide-chat
#            has no worker to kill and is skipped. Its table goes between its own markers
#            (`<!-- run.sh:fault:begin -->`), so a fault-only run leaves the other tables alone.
#   reload   (not in the default SCENARIOS) RELOAD_CLIENTS at the chat load for RELOAD_DURATION, and from
#            RELOAD_AFTER into it RELOAD_COUNT reloads one after the other (ops/bench/reloads.sh):
#            `chatctl reload`, then one `chatctl upgrade` when the binary has it; node-chat's
#            PM2-style rolling restart (SIGUSR2), with its connectionStateRecovery on. Disconnects,
#            messages lost, each reload's time. socketioxide-chat has no reload and is skipped. Its
#            table has its own markers (`<!-- run.sh:reload:begin -->`).
#
# Usage: ops/bench/run.sh [--quick] [--no-doc]
#   --quick (or QUICK=1)    every scenario tiny (200 clients, short phases): a smoke test of this script
#   --no-doc (or DOC=0)     print the results only, leave docs/BENCHMARKS.md alone
#   WORKERS=N               workers of chatctl and node-chat [default: nproc]
#   SERVERS="..." SCENARIOS="..."  subsets, e.g. SERVERS="chatctl node-chat" SCENARIOS=chat
#   IDLE_CLIENTS=10000 IDLE_HOLD=10s IDLE_RAMP=500 (new clients a second) CHAT_CLIENTS=1000 CHAT_ROOM_SIZE=10 CHAT_RATE=1
#   CHAT_DURATION=20s FANOUT_CLIENTS=2000 FANOUT_RATES=1,2,5,10,20,50,100,200,500,1000
#   FANOUT_STEP=5s FANOUT_RAMP=200 (joins a second) FANOUT_WARMUP=5s P99_LIMIT=200ms
#   STORM_CLIENTS=5000 POLL_CLIENTS=500 POLL_DURATION=20s
#   FAULT_CLIENTS=1000 FAULT_DURATION=20s FAULT_AFTER=8s FAULT_CONNECT_TIMEOUT=30s (how long a client
#                           may take to come back after the kill before it counts as failed)
#   RELOAD_CLIENTS=1000 RELOAD_COUNT=5 RELOAD_DURATION=60s RELOAD_AFTER=5s RELOAD_UPGRADE=1 (0: no upgrade)
#   CONNECT_TIMEOUT=60s      longest one client may take to connect and join (idle, fanout, storm)
#   SOURCES=127.0.0.1-127.0.0.16   local addresses chat-bench connects from (more ephemeral ports);
#                           SOURCES= (empty) leaves the choice to the kernel
#   RUN_TIMEOUT=900         seconds one chat-bench run may take before it is stopped and marked failed
#   KEEP_RESULTS=DIR        copy the raw results (chat-bench JSON, stderr, server logs) there at the end
#   SKIP_BUILD=1            use target/release/{chatctl,chat-bench} and the peers as they are
#   CHATCTL_SERVE_FLAGS="..."  more `chatctl serve` flags for chatctl's workers (an experiment, e.g.
#                           `--recovery-window 0`); recorded in the command line
#
# Default sizes take about 10-15 minutes on 2 cores (most of it the 2 000-user fan-out room,
# whose joins send the whole member list to every member). A chat-bench run that loses or fails
# anything exits 1: the run is recorded (its figures and exit code) and the next one goes on.
#
# Needs: cargo, node + npm, redis-server, jq, python3, ss. Traffic stays on 127.0.0.0/8; the trap
# stops exactly what this script started (servers by pid, chatctl apps by `chatctl stop` then
# their master's process group, redis-server, chat-bench processes), on error and on Ctrl-C too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEERS=$ROOT/ops/bench/peers
DOC=${DOC:-1}
QUICK=${QUICK:-0}
ORIGINAL_ARGS=("$@")
for arg in "$@"; do
  case $arg in
  --quick) QUICK=1 ;;
  --no-doc) DOC=0 ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "run.sh: unknown argument $arg (see --help)" >&2
    exit 2
    ;;
  esac
done

WORKERS=${WORKERS:-$(nproc)}
SERVERS=${SERVERS:-"chatctl chatctl-redis node-chat socketioxide-chat"}
SCENARIOS=${SCENARIOS:-"idle chat fanout storm polling"}
SOURCES=${SOURCES-127.0.0.1-127.0.0.16}
SOURCE_ARGS=()
[[ -n $SOURCES ]] && SOURCE_ARGS=(--sources "$SOURCES")
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
CHATCTL_SERVE_FLAGS=${CHATCTL_SERVE_FLAGS:-}
P99_LIMIT=${P99_LIMIT:-200ms}
if [[ $QUICK == 1 ]]; then
  IDLE_CLIENTS=${IDLE_CLIENTS:-200} IDLE_HOLD=${IDLE_HOLD:-2s} IDLE_RAMP=${IDLE_RAMP:-1000}
  CHAT_CLIENTS=${CHAT_CLIENTS:-200} CHAT_DURATION=${CHAT_DURATION:-5s}
  FANOUT_CLIENTS=${FANOUT_CLIENTS:-200} FANOUT_RATES=${FANOUT_RATES:-5,20,50} FANOUT_STEP=${FANOUT_STEP:-2s}
  FANOUT_WARMUP=${FANOUT_WARMUP:-1s}
  STORM_CLIENTS=${STORM_CLIENTS:-200}
  POLL_CLIENTS=${POLL_CLIENTS:-100} POLL_DURATION=${POLL_DURATION:-5s}
  FAULT_CLIENTS=${FAULT_CLIENTS:-200} FAULT_DURATION=${FAULT_DURATION:-6s} FAULT_AFTER=${FAULT_AFTER:-2s}
  RELOAD_CLIENTS=${RELOAD_CLIENTS:-200} RELOAD_COUNT=${RELOAD_COUNT:-2} RELOAD_DURATION=${RELOAD_DURATION:-20s}
  RELOAD_AFTER=${RELOAD_AFTER:-2s}
fi
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
IDLE_HOLD=${IDLE_HOLD:-10s}
# New idle clients a second: memory is the figure here, so the joins are paced for the slowest
# server (node-chat's primary hands over a few hundred connections a second on 2 cores).
IDLE_RAMP=${IDLE_RAMP:-500}
CHAT_CLIENTS=${CHAT_CLIENTS:-1000}
CHAT_ROOM_SIZE=${CHAT_ROOM_SIZE:-10}
CHAT_RATE=${CHAT_RATE:-1}
CHAT_DURATION=${CHAT_DURATION:-20s}
FANOUT_CLIENTS=${FANOUT_CLIENTS:-2000}
FANOUT_RATES=${FANOUT_RATES:-1,2,5,10,20,50,100,200,500,1000}
FANOUT_STEP=${FANOUT_STEP:-5s}
FANOUT_RAMP=${FANOUT_RAMP:-200}
FANOUT_WARMUP=${FANOUT_WARMUP:-5s}
# How long one client may take to connect and join in the idle, fanout and storm scenarios, where
# a slow join is a figure (the time until all are connected), not a failure.
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-60s}
STORM_CLIENTS=${STORM_CLIENTS:-5000}
POLL_CLIENTS=${POLL_CLIENTS:-500}
POLL_DURATION=${POLL_DURATION:-20s}
FAULT_CLIENTS=${FAULT_CLIENTS:-1000}
FAULT_DURATION=${FAULT_DURATION:-20s}
FAULT_AFTER=${FAULT_AFTER:-8s}
FAULT_CONNECT_TIMEOUT=${FAULT_CONNECT_TIMEOUT:-30s}
RELOAD_CLIENTS=${RELOAD_CLIENTS:-1000}
RELOAD_COUNT=${RELOAD_COUNT:-5}
RELOAD_DURATION=${RELOAD_DURATION:-60s}
RELOAD_AFTER=${RELOAD_AFTER:-5s}
# One chat-bench process holds at most this many clients (the hard descriptor limit is 20 000).
CLIENTS_PER_BENCH=${CLIENTS_PER_BENCH:-15000}
APP_PREFIX=bench

log() { printf '[run.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

for tool in cargo node npm redis-server redis-cli jq python3 ss pgrep timeout; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
for server in $SERVERS; do
  case $server in chatctl | chatctl-redis | node-chat | socketioxide-chat) ;; *) die "unknown server $server" ;; esac
done
for scenario in $SCENARIOS; do
  case $scenario in idle | chat | fanout | storm | polling | fault | reload) ;; *) die "unknown scenario $scenario" ;; esac
done

# --- build -------------------------------------------------------------------------------------

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CHATCTL=$TARGET/release/chatctl
CHAT_BENCH=$TARGET/release/chat-bench
SX_MANIFEST=$PEERS/socketioxide-chat/Cargo.toml
SX_BIN=$PEERS/socketioxide-chat/target/release/socketioxide-chat
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building chatctl and chat-bench (cargo build --release -p chatctl -p chat-bench)"
  (cd "$ROOT" && cargo build --release --quiet -p chatctl -p chat-bench) || die "cargo build of chatctl/chat-bench failed"
  if [[ " $SERVERS " == *" socketioxide-chat "* ]]; then
    log "building the socketioxide peer"
    # Its own target directory: not the workspace's, whatever CARGO_TARGET_DIR says.
    CARGO_TARGET_DIR=$PEERS/socketioxide-chat/target cargo build --release --quiet --manifest-path "$SX_MANIFEST" ||
      die "cargo build of the socketioxide peer failed"
  fi
  if [[ " $SERVERS " == *" node-chat "* ]]; then
    log "installing the node-chat peer (npm ci)"
    (cd "$PEERS/node-chat" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || die "npm ci in $PEERS/node-chat failed"
  fi
fi
[[ -x $CHATCTL ]] || die "no chatctl at $CHATCTL"
[[ -x $CHAT_BENCH ]] || die "no chat-bench at $CHAT_BENCH"
[[ " $SERVERS " != *" socketioxide-chat "* || -x $SX_BIN ]] || die "no socketioxide peer at $SX_BIN"
[[ " $SERVERS " != *" node-chat "* || -d $PEERS/node-chat/node_modules/socket.io ]] ||
  die "node-chat is not installed: npm ci in $PEERS/node-chat"

# Thousands of sockets: this shell, the servers and chat-bench inherit the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

# --- state and cleanup -------------------------------------------------------------------------

WORK=$(mktemp -d /tmp/chatctl-bench-run.XXXXXX)
# Workers run as nobody when this runs as root, and read the app's home.
chmod 755 "$WORK"
export CHATCTL_HOME=$WORK/chatctl
mkdir -p "$CHATCTL_HOME" "$WORK/results"
REDIS_PID=
NODE_RECOVERY=0 # 1: node-chat starts with socket.io's connectionStateRecovery (the fault scenario)
SERVER_PID=    # node-chat's primary or the socketioxide peer
CHATCTL_APP=   # the running chatctl app, if any
BENCH_PIDS=()  # chat-bench processes of a split run

stop_server() {
  if [[ -n $CHATCTL_APP ]]; then
    local master
    master=$(cat "$CHATCTL_HOME/apps/$CHATCTL_APP/master.pid" 2>/dev/null || true)
    timeout 30 "$CHATCTL" stop "$CHATCTL_APP" >/dev/null 2>&1 || true
    # The master leads its own process group (setsid): whatever survived `stop` goes with it.
    if [[ -n $master ]] && kill -0 -- "-$master" 2>/dev/null; then
      kill -KILL -- "-$master" 2>/dev/null || true
    fi
    CHATCTL_APP=
  fi
  if [[ -n $SERVER_PID ]]; then
    local children=()
    mapfile -t children < <(pgrep -P "$SERVER_PID" || true)
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" "${children[@]}" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
cleanup() {
  set +e
  trap - EXIT
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  stop_server
  if [[ -n ${KEEP_RESULTS:-} ]]; then
    mkdir -p "$KEEP_RESULTS" && cp -r "$WORK/results/." "$KEEP_RESULTS/" && log "raw results kept in $KEEP_RESULTS"
  fi
  if [[ -n $REDIS_PID ]]; then
    kill "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=../lib/ports.sh
source "$ROOT/ops/lib/ports.sh"
free_port() { # sets PORT to a port this script holds until it exits (ops/lib/ports.sh)
  reserve_port || die "no free loopback port"
  PORT=$RESERVED_PORT
}

wait_for_line() { # file pattern seconds pid
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    kill -0 "$4" 2>/dev/null || die "the server exited: $(tail -5 "$1")"
    ((SECONDS < deadline)) || die "no '$2' within $3 s: $(tail -5 "$1")"
    sleep 0.1
  done
}

# --- redis -------------------------------------------------------------------------------------

if [[ " $SERVERS " == *" chatctl-redis "* || " $SERVERS " == *" node-chat "* ]]; then
  free_port
  REDIS_PORT=$PORT
  mkdir -p "$WORK/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --save '' --appendonly no \
    --daemonize no --loglevel warning >"$WORK/redis/log" 2>&1 &
  REDIS_PID=$!
  deadline=$((SECONDS + 10))
  until [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; do
    ((SECONDS < deadline)) || die "redis-server did not answer on port $REDIS_PORT: $(tail -3 "$WORK/redis/log")"
    sleep 0.1
  done
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
  log "redis-server on $REDIS_URL (pid $REDIS_PID)"
fi

# --- servers: each start sets URL and PIDS (the processes chat-bench samples) ------------------

start_chatctl() { # redis|embedded
  local user=() redis=() serve_flags=()
  [[ $(id -u) == 0 ]] && user=(--user nobody)
  read -ra serve_flags <<<"$CHATCTL_SERVE_FLAGS"
  [[ $1 == redis ]] && redis=(--redis "$REDIS_URL")
  free_port
  CHATCTL_APP=$APP_PREFIX-$1-$PORT
  timeout 60 "$CHATCTL" start --name "$CHATCTL_APP" --listen "127.0.0.1:$PORT" -i "$WORKERS" "${user[@]}" "${redis[@]}" \
    -- serve --messages-per-second 1000000 --logins-per-address 1000000 --max-pending 100000 --max-pending-per-address 100000 \
    --max-connections 100000 "${serve_flags[@]}" >"$WORK/server.log" 2>&1 ||
    die "chatctl start failed: $(tail -5 "$WORK/server.log")"
  local master
  master=$(cat "$CHATCTL_HOME/apps/$CHATCTL_APP/master.pid")
  local list
  list=$(timeout 10 "$CHATCTL" list --json)
  mapfile -t PIDS < <(jq -r --arg app "$CHATCTL_APP" \
    '(if type == "array" then . else .apps end)[] | select(.name == $app) | .workers[] | select(.status == "online") | .pid' <<<"$list")
  # How the master spreads connections (shared socket, or its sticky dispatch): the report says it.
  jq -r --arg app "$CHATCTL_APP" '(if type == "array" then . else .apps end)[] | select(.name == $app) | .scheduling // "?"' \
    <<<"$list" >"$WORK/results/chatctl-scheduling"
  ((${#PIDS[@]} == WORKERS)) || die "expected $WORKERS online workers in chatctl list --json, got: ${PIDS[*]}"
  PIDS=("$master" "${PIDS[@]}")
  URL=http://127.0.0.1:$PORT
}

start_node_chat() {
  free_port
  NODE_CHAT_RECOVERY=$NODE_RECOVERY node "$PEERS/node-chat/server.js" --port "$PORT" --workers "$WORKERS" --redis "$REDIS_URL" \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_line "$WORK/server.log" "node-chat listening" 60 "$SERVER_PID"
  mapfile -t PIDS < <(pgrep -P "$SERVER_PID")
  ((${#PIDS[@]} == WORKERS)) || die "expected $WORKERS node-chat workers under pid $SERVER_PID, got: ${PIDS[*]}"
  PIDS=("$SERVER_PID" "${PIDS[@]}")
  URL=http://127.0.0.1:$PORT
}

start_socketioxide_chat() {
  free_port
  "$SX_BIN" --port "$PORT" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_for_line "$WORK/server.log" "socketioxide-chat listening" 30 "$SERVER_PID"
  PIDS=("$SERVER_PID")
  URL=http://127.0.0.1:$PORT
}

start_server() { # name
  # The redis stacks start from an empty Redis: no sessions, members or history of the last run.
  [[ -n $REDIS_PID ]] && redis-cli -p "$REDIS_PORT" flushall >/dev/null
  case $1 in
  chatctl) start_chatctl embedded ;;
  chatctl-redis) start_chatctl redis ;;
  node-chat) start_node_chat ;;
  socketioxide-chat) start_socketioxide_chat ;;
  esac
  log "$1 on $URL, pids ${PIDS[*]}"
}

# --- chat-bench --------------------------------------------------------------------------------

# VmRSS of processes, summed, in KiB.
rss_kib() {
  local pid total=0 kib
  for pid in "$@"; do
    kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

established() { ss -Htn state established "( sport = :$PORT )" 2>/dev/null | wc -l; }

# Runs chat-bench once against the running server; its JSON goes to $out, stderr to $out.err, its
# exit code to $out.rc. A failed run (lost messages, refused clients, a timeout) is recorded, not fatal.
bench() { # out args...
  local out=$1 rc=0 pid_args=() pid
  shift
  for pid in "${PIDS[@]}"; do pid_args+=(--pid "$pid"); done
  # In the background with `wait`: a signal to this script runs its trap at once, while a
  # foreground child would first be waited for.
  timeout --signal=INT --kill-after=10 "$RUN_TIMEOUT" "$CHAT_BENCH" --url "$URL" "${SOURCE_ARGS[@]}" "${pid_args[@]}" \
    --json "$@" >"$out" 2>"$out.err" &
  BENCH_PIDS=($!)
  wait "${BENCH_PIDS[0]}" || rc=$?
  BENCH_PIDS=()
  echo "$rc" >"$out.rc"
  if ((rc != 0)); then
    log "  chat-bench exited $rc: $(grep -v '^\[' "$out.err" | head -3 | tr '\n' ' ')"
  fi
}

# The idle scenario over several chat-bench processes (more clients than one may hold): the
# connections are counted with ss, the servers' memory is read here once all are established,
# and the processes' JSON is summed into one.
bench_idle_split() { # out clients hold
  local out=$1 clients=$2 parts per i first=0 count rss_before rss_connected=0 deadline rc=0
  parts=$(((clients + CLIENTS_PER_BENCH - 1) / CLIENTS_PER_BENCH))
  per=$(((clients + parts - 1) / parts))
  # Each process must still hold its clients when the last one has connected: its share at
  # its ramp, and some slack for a loaded machine.
  local hold_s=${3%s} ramp=$(((IDLE_RAMP + parts - 1) / parts))
  hold_s=$((hold_s + per / ramp + 30))
  rss_before=$(rss_kib "${PIDS[@]}")
  BENCH_PIDS=()
  for ((i = 0; i < parts; i++)); do
    count=$((clients - first < per ? clients - first : per))
    "$CHAT_BENCH" --url "$URL" "${SOURCE_ARGS[@]}" --scenario idle --probe --clients "$count" --room-size 10 \
      --ramp "$ramp" --connect-timeout "$CONNECT_TIMEOUT" --duration "${hold_s}s" --json >"$out.part$i" 2>"$out.part$i.err" &
    BENCH_PIDS+=($!)
    first=$((first + count))
  done
  log "  $parts chat-bench processes of up to $per clients, holding ${hold_s} s"
  # Memory is read once every client is connected, or once the count has not grown for 10 s
  # (some clients failed): per connection then means per connection established.
  local now_established last=0 last_change=$SECONDS measured=0
  deadline=$((SECONDS + hold_s))
  while ((SECONDS < deadline)); do
    now_established=$(established)
    ((now_established != last)) && last_change=$SECONDS
    last=$now_established
    if ((now_established >= clients || (now_established > 0 && SECONDS - last_change >= 10))); then
      sleep 2
      measured=$(established)
      rss_connected=$(rss_kib "${PIDS[@]}")
      break
    fi
    sleep 1
  done
  ((measured >= clients)) || log "  $measured of $clients connections were established when the memory was read"
  for i in "${!BENCH_PIDS[@]}"; do
    wait "${BENCH_PIDS[$i]}" || rc=1
  done
  BENCH_PIDS=()
  echo "$rc" >"$out.rc"
  cat "$out.part"*.err >"$out.err" 2>/dev/null || true
  # Sum the parts; the memory figures are this script's own (all processes at once).
  jq -s --argjson before "$rss_before" --argjson connected "$rss_connected" --argjson parts "$parts" \
    --argjson measured "$measured" '
    {scenario: "idle", transport: .[0].transport, split_processes: $parts,
     clients: (map(.clients) | add), connected: (map(.connected) | add),
     connect_failed: (map(.connect_failed) | add), errors: (map(.errors) | add),
     sent: (map(.sent) | add), expected: (map(.expected) | add), delivered: (map(.delivered) | add),
     lost: (map(.lost) | add), duplicates: (map(.duplicates) | add),
     connect_time_ms: (map(.connect_time_ms) | max), connect_p99_ms: (map(.connect_p99_ms) | max),
     connect_max_ms: (map(.connect_max_ms) | max),
     rss_before_kib: $before, rss_connected_kib: (if $connected > 0 then $connected else null end),
     connections_when_measured: $measured,
     rss_per_connection_bytes: (if $connected > 0 and $measured > 0 then (($connected - $before) * 1024 / $measured | floor) else null end)}
  ' "$out.part"*[0-9] >"$out" 2>/dev/null || echo '{}' >"$out"
}

run_scenario() { # scenario server
  local scenario=$1 server=$2 out=$WORK/results/$1__$2.json victim=
  if [[ $scenario == fault || $scenario == reload ]] && [[ $server == socketioxide-chat ]]; then
    log "$scenario: socketioxide-chat is one process, with no worker to kill or reload; skipped"
    return
  fi
  NODE_RECOVERY=0
  [[ $scenario == fault || $scenario == reload ]] && NODE_RECOVERY=1
  start_server "$server"
  log "$scenario against $server"
  case $scenario in
  idle)
    if ((IDLE_CLIENTS > CLIENTS_PER_BENCH)); then
      bench_idle_split "$out" "$IDLE_CLIENTS" "$IDLE_HOLD"
    else
      bench "$out" --scenario idle --probe --clients "$IDLE_CLIENTS" --room-size 10 --ramp "$IDLE_RAMP" \
        --connect-timeout "$CONNECT_TIMEOUT" --duration "$IDLE_HOLD"
    fi
    ;;
  chat)
    bench "$out" --scenario chat --clients "$CHAT_CLIENTS" --room-size "$CHAT_ROOM_SIZE" --rate "$CHAT_RATE" \
      --duration "$CHAT_DURATION"
    ;;
  fanout)
    # Every join sends the room's whole member list to every member: the joins of a large room
    # are paced, given time, and their traffic lets up before the first step.
    bench "$out" --scenario fanout --clients "$FANOUT_CLIENTS" --ramp "$FANOUT_RAMP" --connect-timeout "$CONNECT_TIMEOUT" \
      --warmup "$FANOUT_WARMUP" --rates "$FANOUT_RATES" --step-duration "$FANOUT_STEP" --p99-limit "$P99_LIMIT"
    ;;
  storm)
    bench "$out" --scenario idle --clients "$STORM_CLIENTS" --room-size 10 --ramp 0 --connect-timeout "$CONNECT_TIMEOUT" \
      --duration 2s
    ;;
  polling)
    bench "$out" --scenario chat --transport polling --clients "$POLL_CLIENTS" --room-size 10 --rate 1 \
      --duration "$POLL_DURATION"
    ;;
  fault)
    # PIDS is the master (chatctl) or the cluster primary (node-chat), then the workers: the
    # first worker dies. What the machine was doing shows in the figures: recorded with them.
    victim=${PIDS[1]}
    echo "$victim" >"$out.victim"
    uptime >"$out.load"
    bench "$out" --scenario chat --clients "$FAULT_CLIENTS" --room-size "$CHAT_ROOM_SIZE" --rate "$CHAT_RATE" \
      --duration "$FAULT_DURATION" --connect-timeout "$FAULT_CONNECT_TIMEOUT" \
      --fault-after "$FAULT_AFTER" --fault-command "kill -9 $victim"
    ;;
  reload)
    local reloads
    if [[ $server == node-chat ]]; then
      reloads=$(printf '%q ' "$ROOT/ops/bench/reloads.sh" node-chat "${PIDS[0]}" "$WORK/server.log" "$RELOAD_COUNT" "$out.times")
    else
      reloads=$(printf '%q ' "$ROOT/ops/bench/reloads.sh" chatctl "$CHATCTL" "$CHATCTL_APP" "$RELOAD_COUNT" "$out.times")
    fi
    uptime >"$out.load"
    # Every worker is replaced: none of the processes sampled at the start is expected to remain.
    victim=all
    bench "$out" --scenario chat --clients "$RELOAD_CLIENTS" --room-size "$CHAT_ROOM_SIZE" --rate "$CHAT_RATE" \
      --duration "$RELOAD_DURATION" --connect-timeout "$FAULT_CONNECT_TIMEOUT" \
      --fault-after "$RELOAD_AFTER" --fault-command "$reloads"
    ;;
  esac
  # A server that died under the load is a result too.
  local pid
  for pid in "${PIDS[@]}"; do
    [[ $pid == "$victim" || $victim == all ]] && continue
    kill -0 "$pid" 2>/dev/null || {
      log "  $server: process $pid is gone after $scenario"
      echo "$pid" >>"$out.dead"
    }
  done
  if [[ -n $CHATCTL_APP ]]; then
    # The app's log: the master's and the workers' lines (restarts, health probes).
    cp "$CHATCTL_HOME/apps/$CHATCTL_APP/logs/app.log" "$out.server.log" 2>/dev/null || true
  else
    cp "$WORK/server.log" "$out.server.log" 2>/dev/null || true
  fi
  stop_server
}

# --- the run -----------------------------------------------------------------------------------

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
for scenario in $SCENARIOS; do
  for server in $SERVERS; do
    run_scenario "$scenario" "$server"
  done
done

# The exact command: the settings given in the environment, then the arguments.
command_line=""
for var in QUICK WORKERS SERVERS SCENARIOS IDLE_CLIENTS IDLE_HOLD IDLE_RAMP CHAT_CLIENTS CHAT_ROOM_SIZE CHAT_RATE CHAT_DURATION \
  FANOUT_CLIENTS FANOUT_RATES FANOUT_STEP FANOUT_RAMP FANOUT_WARMUP CONNECT_TIMEOUT P99_LIMIT STORM_CLIENTS POLL_CLIENTS POLL_DURATION \
  FAULT_CLIENTS FAULT_DURATION FAULT_AFTER FAULT_CONNECT_TIMEOUT RELOAD_CLIENTS RELOAD_COUNT RELOAD_DURATION RELOAD_AFTER RELOAD_UPGRADE CHATCTL_SERVE_FLAGS SOURCES RUN_TIMEOUT CLIENTS_PER_BENCH SKIP_BUILD; do
  if printenv "$var" >/dev/null; then command_line+="$var=$(printf '%q' "$(printenv "$var")") "; fi
done
command_line+="ops/bench/run.sh${ORIGINAL_ARGS[*]:+ ${ORIGINAL_ARGS[*]}}"

version_of() { node -p "require('$PEERS/node-chat/node_modules/$1/package.json').version" 2>/dev/null || echo "?"; }
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
git -C "$ROOT" diff --quiet HEAD -- crates bin 2>/dev/null || commit+=" (with uncommitted changes in crates/ or bin/)"
jq -n --arg started "$STARTED" --arg finished "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg command "$command_line" \
  --arg quick "$QUICK" --arg nproc "$(nproc)" --arg cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
  --arg ram "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" --arg kernel "$(uname -sr)" \
  --arg load_start "$LOAD_AT_START" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg commit "$commit" \
  --arg chatctl_scheduling "$(cat "$WORK/results/chatctl-scheduling" 2>/dev/null || echo "?")" \
  --arg chatctl "$("$CHATCTL" --version 2>/dev/null || echo "?")" --arg rustc "$(rustc --version 2>/dev/null || echo "?")" \
  --arg node "$(node --version)" --arg socketio "$(version_of socket.io)" --arg sticky "$(version_of @socket.io/sticky)" \
  --arg redis_adapter "$(version_of @socket.io/redis-adapter)" --arg redis_client "$(version_of redis)" \
  --arg socketioxide "$(awk '/^name = "socketioxide"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' "$PEERS/socketioxide-chat/Cargo.lock")" \
  --arg redis "$(redis-server --version | awk '{print $3}' | sed 's/^v=//')" --arg workers "$WORKERS" \
  --arg fd_limit "$FD_LIMIT" --arg servers "$SERVERS" --arg scenarios "$SCENARIOS" \
  --arg idle_clients "$IDLE_CLIENTS" --arg idle_hold "$IDLE_HOLD" --arg idle_ramp "$IDLE_RAMP" --arg chat_clients "$CHAT_CLIENTS" \
  --arg chat_room_size "$CHAT_ROOM_SIZE" --arg chat_rate "$CHAT_RATE" --arg chat_duration "$CHAT_DURATION" \
  --arg fanout_clients "$FANOUT_CLIENTS" --arg fanout_rates "$FANOUT_RATES" --arg fanout_step "$FANOUT_STEP" \
  --arg fanout_ramp "$FANOUT_RAMP" --arg fanout_warmup "$FANOUT_WARMUP" --arg connect_timeout "$CONNECT_TIMEOUT" \
  --arg p99_limit "$P99_LIMIT" --arg storm_clients "$STORM_CLIENTS" --arg poll_clients "$POLL_CLIENTS" \
  --arg poll_duration "$POLL_DURATION" --arg fault_clients "$FAULT_CLIENTS" --arg fault_duration "$FAULT_DURATION" \
  --arg fault_after "$FAULT_AFTER" --arg fault_connect_timeout "$FAULT_CONNECT_TIMEOUT" \
  --arg reload_clients "$RELOAD_CLIENTS" --arg reload_count "$RELOAD_COUNT" --arg reload_duration "$RELOAD_DURATION" \
  --arg reload_after "$RELOAD_AFTER" '$ARGS.named' >"$WORK/results/meta.json"

doc_args=()
[[ $DOC == 1 ]] && doc_args=(--doc "$ROOT/docs/BENCHMARKS.md")
python3 "$ROOT/ops/bench/run_report.py" "$WORK/results" "${doc_args[@]}"
[[ $DOC == 1 ]] && log "results written to docs/BENCHMARKS.md (between <!-- run.sh:begin --> and <!-- run.sh:end -->, the fault and reload scenarios between their own markers)"
exit 0
