#!/usr/bin/env bash
# What sticky routing costs: the same chat, reached through each router that keeps a Socket.IO
# session on the process that owns it.
#
#   worker   one chat worker directly (`chatctl serve`): the baseline, nothing routes
#   master   `chatctl start -i INSTANCES` with its default scheduling (sticky dispatch: the master
#            peeks each new connection's first request and hands it to the worker of its sid)
#   proxy    `chatctl proxy` in front of that master (node id 1)
#   haproxy  HAProxy with ops/haproxy/chatctl.cfg in front of that master
#   nginx    nginx with ops/nginx/chatctl.conf in front of that master (not in the default list)
#
# For each target:
#   polling    POLL_CONNECTIONS long-polling sessions are opened the way a client opens them
#              (login, handshake, CONNECT to /chat_com: ops/bench/sticky.mjs), then wrk keeps one
#              connection per session busy for DURATION seconds POSTing the packet `3` to it
#              (any packet is a sign of life; the server answers `ok`), so every request carries
#              a sid and is routed by it. Requests/s and latency p50/p99 from wrk; any non-2xx
#              answer or socket error is reported.
#   ws echo    WS_CONNECTIONS users (npm socket.io-client 4.x over websocket) each in a room of
#              its own keep WS_IN_FLIGHT chat messages outstanding on /chat_com; each `myMessage`
#              echo sends the next. Echoes per second over DURATION seconds.
# The chat runs with `--messages-per-second 1000000`, so the rate limit does not shape the load.
# The results go into docs/BENCHMARKS.md, between `<!-- sticky.sh:begin -->` and
# `<!-- sticky.sh:end -->` (the section is added at the end when missing), with ratios to the
# worker and to HAProxy, the machine and the command.
#
# Usage: ops/bench/sticky.sh              (about 2 minutes with the defaults)
#   TARGETS="worker master proxy haproxy"  which targets, in this order; one that cannot start
#                                          (a missing tool, a failing master) is reported as such
#   DURATION=10 POLL_CONNECTIONS=32 WS_CONNECTIONS=50 WS_IN_FLIGHT=32 INSTANCES=2
#   CHATCTL=path/to/chatctl                instead of `cargo build --release -p chatctl`
#   RESULTS=docs/BENCHMARKS.md             where the table goes (RESULTS= prints it only)
#
# Needs: cargo, node with socket.io-client in ops/js/node_modules (ops/test-deps.sh), curl, wrk,
# and haproxy / nginx for those targets (as root on Debian, missing packages are installed).
# Traffic stays on 127.0.0.1; every wait is bounded; the trap stops exactly the processes this
# script started and removes its temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLIENT=$ROOT/ops/bench/sticky.mjs
TARGETS=${TARGETS:-"worker master proxy haproxy"}
DURATION=${DURATION:-10}
POLL_CONNECTIONS=${POLL_CONNECTIONS:-32}
WS_CONNECTIONS=${WS_CONNECTIONS:-50}
WS_IN_FLIGHT=${WS_IN_FLIGHT:-32}
INSTANCES=${INSTANCES:-2}
RESULTS=${RESULTS-$ROOT/docs/BENCHMARKS.md}
NODE_ID=1
MASTER_APP=sticky-bench
CHAT_FLAGS=(--messages-per-second 1000000 --logins-per-address 1000000)

log() { printf '%s\n' "$*" >&2; }
die() {
  log "sticky.sh: $*"
  exit 1
}

for target in $TARGETS; do
  case $target in
    worker | master | proxy | haproxy | nginx) ;;
    *) die "unknown target '$target' (worker, master, proxy, haproxy, nginx)" ;;
  esac
done

# --- tools -----------------------------------------------------------------------------------

have_debian_package() { # command package: installs it as root when missing; fails if still absent
  command -v "$1" >/dev/null && return
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing $2"
    apt-get install -y -qq "$2" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$2" >/dev/null 2>&1; }
  fi
  command -v "$1" >/dev/null
}
have_debian_package curl curl || die "curl is missing"
have_debian_package wrk wrk || die "wrk is missing (Debian package wrk)"
command -v node >/dev/null || die "node is missing"
[[ -f $ROOT/ops/js/node_modules/socket.io-client/package.json ]] ||
  die "socket.io-client is not installed in ops/js: run ops/test-deps.sh"

if [[ -z ${CHATCTL:-} ]]; then
  log "building chatctl (cargo build --release -p chatctl)"
  (cd "$ROOT" && cargo build --release -p chatctl --quiet)
  CHATCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/chatctl
fi
[[ -x $CHATCTL ]] || die "no chatctl binary at $CHATCTL"

# --- state and cleanup -----------------------------------------------------------------------

WORK=$(mktemp -d /tmp/chatctl-bench-sticky.XXXXXX)
# Workers run as nobody under root and must reach nothing here but their sockets.
chmod 755 "$WORK"
export CHATCTL_HOME=$WORK/home
mkdir -p "$CHATCTL_HOME"
STARTED_PIDS=() # every background process of this script, by pid

cleanup() {
  set +e
  local pid master
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  master=$(cat "$CHATCTL_HOME/apps/$MASTER_APP/master.pid" 2>/dev/null)
  if [[ -n $master ]] && kill -0 "$master" 2>/dev/null; then
    timeout 30 "$CHATCTL" stop "$MASTER_APP" >/dev/null 2>&1
    # The master leads its own process group: whatever survived `stop` goes with it.
    kill -0 -- "-$master" 2>/dev/null && kill -KILL -- "-$master" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=../lib/ports.sh
source "$ROOT/ops/lib/ports.sh"
for target in WORKER MASTER PROXY HAPROXY NGINX; do
  reserve_port || die "no free loopback port"
  printf -v "${target}_PORT" '%s' "$RESERVED_PORT"
done

now_ms() {
  local t=${EPOCHREALTIME/[.,]/}
  echo $((t / 1000))
}
# Polls until GET /healthz through the target answers 200, for at most $2 seconds.
wait_healthy() { # port seconds
  local deadline=$(($(now_ms) + $2 * 1000))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/healthz") == 200 ]]; do
    (($(now_ms) < deadline)) || return 1
    sleep 0.1
  done
}
# Runs a target's own process in the background (its output in $WORK/NAME.log) and waits until
# GET /healthz through it answers.
run_target() { # name port command...
  local name=$1 port=$2
  shift 2
  "$@" >"$WORK/$name.log" 2>&1 &
  TARGET_PID=$!
  STARTED_PIDS+=("$TARGET_PID")
  wait_healthy "$port" 20 || { log "$name did not answer: $(tail -3 "$WORK/$name.log")"; return 1; }
}
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# --- the targets -----------------------------------------------------------------------------
# Each start_* returns non-zero (with the reason in the log) when the target cannot run, and
# leaves the process id in TARGET_PID when it started a process of its own.

TARGET_PID=
MASTER_STATE=not-started

start_worker() {
  run_target worker "$WORKER_PORT" "$CHATCTL" serve --host 127.0.0.1 --port "$WORKER_PORT" \
    --secret-file "$WORK/secret" "${CHAT_FLAGS[@]}"
}

# The master behind every other target; started once, when the first target needs it.
ensure_master() {
  case $MASTER_STATE in
    running) return 0 ;;
    failed) return 1 ;;
  esac
  local user=()
  [[ $(id -u) == 0 ]] && user=(--user nobody)
  if "$CHATCTL" start --name "$MASTER_APP" --listen "127.0.0.1:$MASTER_PORT" -i "$INSTANCES" \
    --node-id "$NODE_ID" "${user[@]}" -- serve "${CHAT_FLAGS[@]}" >"$WORK/master-start.log" 2>&1 &&
    wait_healthy "$MASTER_PORT" 20; then
    MASTER_STATE=running
  else
    MASTER_STATE=failed
    log "the master did not start: $(tail -5 "$WORK/master-start.log")"
    return 1
  fi
}

start_master() { ensure_master; }

start_proxy() {
  ensure_master || return 1
  RUST_LOG=warn run_target proxy "$PROXY_PORT" "$CHATCTL" proxy --listen "127.0.0.1:$PROXY_PORT" \
    --backend "127.0.0.1:$MASTER_PORT=$NODE_ID"
}

# The repository's config with this run's addresses: the front on loopback, node 1 at the
# master, node 2 left out (there is one host here).
start_haproxy() {
  ensure_master || return 1
  have_debian_package haproxy haproxy || { log "haproxy is missing (Debian package haproxy)"; return 1; }
  sed -e "s|^\( *bind \):80\$|\1127.0.0.1:$HAPROXY_PORT|" \
    -e "s|127\.0\.0\.1:3001|127.0.0.1:$MASTER_PORT|" \
    -e '/node2/d' "$ROOT/ops/haproxy/chatctl.cfg" >"$WORK/haproxy.cfg"
  grep -q "bind 127.0.0.1:$HAPROXY_PORT" "$WORK/haproxy.cfg" || { log "ops/haproxy/chatctl.cfg has no 'bind :80' line"; return 1; }
  haproxy -c -q -f "$WORK/haproxy.cfg" || return 1
  run_target haproxy "$HAPROXY_PORT" haproxy -db -f "$WORK/haproxy.cfg"
}

start_nginx() {
  ensure_master || return 1
  have_debian_package nginx nginx || { log "nginx is missing (Debian package nginx)"; return 1; }
  mkdir -p "$WORK/nginx"
  sed -e "s|^\( *listen \)80;|\1127.0.0.1:$NGINX_PORT;|" \
    -e "s|127\.0\.0\.1:3001|127.0.0.1:$MASTER_PORT|" \
    -e '/upstream chatctl_node2 {/,/}/d' -e '/3002/d' -e '/~^AC/d' \
    "$ROOT/ops/nginx/chatctl.conf" >"$WORK/nginx/nginx.conf"
  grep -q "listen 127.0.0.1:$NGINX_PORT;" "$WORK/nginx/nginx.conf" || { log "ops/nginx/chatctl.conf has no 'listen 80;' line"; return 1; }
  local globals="daemon off; pid $WORK/nginx/nginx.pid; error_log stderr;"
  nginx -q -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g "$globals" || return 1
  run_target nginx "$NGINX_PORT" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g "$globals"
}

target_port() {
  case $1 in
    worker) echo "$WORKER_PORT" ;;
    master) echo "$MASTER_PORT" ;;
    proxy) echo "$PROXY_PORT" ;;
    haproxy) echo "$HAPROXY_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
  esac
}

target_description() {
  case $1 in
    worker) echo "one worker, \`chatctl serve\`" ;;
    master) echo "\`chatctl start -i $INSTANCES\` (sticky dispatch)" ;;
    proxy) echo "\`chatctl proxy\` → the master" ;;
    haproxy) echo "HAProxy $(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}') → the master" ;;
    nginx) echo "nginx $(nginx -v 2>&1 | sed 's|.*nginx/||') → the master" ;;
  esac
}

# --- the measurements ------------------------------------------------------------------------

# wrk's script: one sid per thread, and as many threads as connections, so each connection
# carries the requests of one session, as a long-polling client's does.
cat >"$WORK/poll.lua" <<'LUA'
local sids = {}
for line in io.lines(os.getenv("STICKY_SIDS")) do sids[#sids + 1] = line end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("index", threads)
end
function init(args)
  local sid = sids[(index - 1) % #sids + 1]
  ping = wrk.format("POST", "/socket.io/?EIO=4&transport=polling&sid=" .. sid,
    { ["Content-Type"] = "text/plain;charset=UTF-8" }, "3")
end
function request()
  return ping
end
LUA

# wrk's latency (e.g. 143.00us, 3.75ms, 1.02s) in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) printf "%.2f", v / 1000; else if (v ~ /ms$/) printf "%.2f", v + 0;
    else if (v ~ /m$/) printf "%.0f", v * 60000; else if (v ~ /s$/) printf "%.0f", v * 1000; else print "-" }'
}

declare -A RPS P50 P99 ERRORS ECHO STATE

measure() { # target
  local target=$1 port url output
  port=$(target_port "$target")
  url=http://127.0.0.1:$port
  if ! node "$CLIENT" sessions "$url" "$POLL_CONNECTIONS" >"$WORK/sids.txt" 2>"$WORK/client.log"; then
    log "$target: cannot open polling sessions: $(tail -3 "$WORK/client.log")"
    STATE[$target]="no polling sessions"
  else
    output=$(STICKY_SIDS=$WORK/sids.txt wrk -t"$POLL_CONNECTIONS" -c"$POLL_CONNECTIONS" \
      -d"${DURATION}s" --latency -s "$WORK/poll.lua" "$url/") || log "$target: wrk failed"
    RPS[$target]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$output")
    P50[$target]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$output")")
    P99[$target]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$output")")
    ERRORS[$target]=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$output")
    log "$target polling: ${RPS[$target]} req/s, p50 ${P50[$target]} ms, p99 ${P99[$target]} ms, ${ERRORS[$target]} errors"
  fi
  if output=$(node "$CLIENT" echo "$url" "$WS_CONNECTIONS" "$WS_IN_FLIGHT" "$DURATION" 2>"$WORK/client.log"); then
    ECHO[$target]=$(sed -n 's/.*"per_second":\([0-9]*\).*/\1/p' <<<"$output")
    log "$target ws echo: ${ECHO[$target]} msg/s"
  else
    log "$target: websocket echo failed: $(tail -3 "$WORK/client.log")"
  fi
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for target in $TARGETS; do
  log "--- $target"
  TARGET_PID=
  if "start_$target"; then
    STATE[$target]=measured
    measure "$target"
  else
    STATE[$target]="did not start"
  fi
  # The target's own process goes before the next one runs; the master stays for the others.
  [[ -n $TARGET_PID ]] && stop_pid "$TARGET_PID"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table -------------------------------------------------------------------------------

ratio() { # value base
  [[ -n $1 && -n $2 && $2 != 0 ]] || { echo "-"; return; }
  awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", a / b}'
}

table() {
  local target
  echo "| target | polling req/s | p50 ms | p99 ms | errors | × worker | × HAProxy | ws echo msg/s | × worker | × HAProxy |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for target in $TARGETS; do
    if [[ ${STATE[$target]} == "did not start" ]]; then
      echo "| $(target_description "$target") | did not start | | | | | | | | |"
      continue
    fi
    echo "| $(target_description "$target") | ${RPS[$target]:--} | ${P50[$target]:--} | ${P99[$target]:--} | ${ERRORS[$target]:--}" \
      "| $(ratio "${RPS[$target]:-}" "${RPS[worker]:-}") | $(ratio "${RPS[$target]:-}" "${RPS[haproxy]:-}")" \
      "| ${ECHO[$target]:--} | $(ratio "${ECHO[$target]:-}" "${ECHO[worker]:-}") | $(ratio "${ECHO[$target]:-}" "${ECHO[haproxy]:-}") |"
  done
}

COMMAND="TARGETS=\"$TARGETS\" DURATION=$DURATION POLL_CONNECTIONS=$POLL_CONNECTIONS WS_CONNECTIONS=$WS_CONNECTIONS WS_IN_FLIGHT=$WS_IN_FLIGHT INSTANCES=$INSTANCES ops/bench/sticky.sh"
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
SECTION=$(
  cat <<EOF
<!-- sticky.sh:begin -->
## Sticky routing: one worker, the master, chatctl proxy, HAProxy

Measured $(date -u '+%Y-%m-%d %H:%M UTC') with \`$COMMAND\`
($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no git"), release build).
Machine: $CPU, $(nproc) CPUs, $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM,
Linux $(uname -r); load average $LOAD_BEFORE before the runs, $LOAD_AFTER after. The load
generators (wrk, Node) run on the same machine.

$(table)

- **polling**: $POLL_CONNECTIONS long-polling sessions, one keep-alive connection each, every
  request a POST of the packet \`3\` with its sid (the server answers \`ok\`), ${DURATION} s of wrk.
  This is the routing path: each request is read, its sid decoded and the request sent to its
  owner. \`errors\` counts non-2xx answers and socket errors.
- **ws echo**: $WS_CONNECTIONS websocket users (npm socket.io-client), each in its own room, each
  keeping $WS_IN_FLIGHT chat messages outstanding; echoes (\`myMessage\`) per second over
  ${DURATION} s. Once a websocket is set up, every router only copies bytes: the proxies' rows
  differ from the master's by the cost of that extra hop. The chat records each message in the
  room history: in memory for the lone worker, in the master's store for the others.
- The master runs $INSTANCES workers; the proxies are in front of it with one backend (node $NODE_ID).
  × worker and × HAProxy are the ratios of the row's figure to the worker's and HAProxy's.
<!-- sticky.sh:end -->
EOF
)

printf '\n%s\n' "$SECTION"
if [[ -n $RESULTS ]]; then
  # Replace the section between the markers, or add it at the end; nothing else changes.
  SECTION=$SECTION node -e '
    const fs = require("fs");
    const [file] = process.argv.slice(1);
    const section = process.env.SECTION;
    const text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
    const begin = text.indexOf("<!-- sticky.sh:begin -->");
    const end = text.indexOf("<!-- sticky.sh:end -->");
    const updated = begin >= 0 && end > begin
      ? text.slice(0, begin) + section + text.slice(end + "<!-- sticky.sh:end -->".length)
      : text.replace(/\n*$/, "\n\n") + section + "\n";
    fs.writeFileSync(file, updated);
  ' "$RESULTS"
  log "results written to $RESULTS"
fi
