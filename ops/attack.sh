#!/usr/bin/env bash
# Hostile clients and broken workers cost nothing (issue 13): the scenarios too long or too
# heavy for CI, against servers this script starts itself on loopback (a chatctl master with 2
# workers and short timers, a second one on Redis, a chatctl proxy, masters running misbehaving
# IPC workers). One line per scenario, `PASS name: figures` or `FAIL name: ...`; exits 1 if any
# failed. Runs in about 2 minutes.
#
#   ops/attack.sh                 # builds target/release/chatctl first
#   CHATCTL=/path/to/chatctl ops/attack.sh
#
# Needs node with ops/js/node_modules (ops/test-deps.sh), python3 and redis-server.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/ops/lib/ports.sh"

if [[ -z ${CHATCTL:-} ]]; then
  (cd "$root" && cargo build --release -p chatctl) >&2 || { echo "FAIL build: cargo build --release -p chatctl failed" >&2; exit 1; }
  CHATCTL=$root/target/release/chatctl
fi
for tool in node python3 redis-server; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed: run ops/test-deps.sh" >&2; exit 1; }
done
[[ -d $root/ops/js/node_modules/socket.io-client ]] || { echo "ops/js/node_modules is missing: run ops/test-deps.sh" >&2; exit 1; }

home=$(mktemp -d "${TMPDIR:-/tmp}/chatctl-attack.XXXXXX")
# As root the workers run as nobody, in the directory start ran in: one they may enter.
chmod 755 "$home"
export CHATCTL_HOME=$home
apps=()
started_pids=()

cleanup() {
  local app pid
  for app in "${apps[@]}"; do
    pid=$(cat "$home/apps/$app/master.pid" 2>/dev/null)
    timeout 20 "$CHATCTL" stop "$app" >/dev/null 2>&1
    [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null
  done
  for pid in "${started_pids[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  rm -rf "$home"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failures=0
# Prints a scenario's line and counts a failure.
report() { # PASS|FAIL name figures
  echo "$1 $2: $3"
  [[ $1 == PASS ]] || failures=$((failures + 1))
}

# The JSON of one app in `chatctl list --json`, through a python expression over `app`.
listed() { # app expression
  "$CHATCTL" list --json 2>/dev/null | python3 -c '
import json, sys
app = next((a for a in json.load(sys.stdin) if a["name"] == sys.argv[1]), None)
workers = (app or {}).get("workers") or []
try:
    print(eval(sys.argv[2]))
except Exception:
    print("")' "$1" "$2"
}

worker_pids() { listed "$1" '",".join(str(w["pid"]) for w in workers if w.get("pid"))'; }

# Waits (20 s at most, polling) until a command succeeds.
wait_for() { # command...
  local end=$((SECONDS + 20))
  until "$@"; do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
master_pid() { cat "$home/apps/$1/master.pid" 2>/dev/null; }
app_log() { cat "$home/apps/$1/logs/app.log" 2>/dev/null; }

start_app() { # name port start-flags... [-- command]
  local name=$1 port=$2
  shift 2
  apps+=("$name")
  "$CHATCTL" start --name "$name" --listen "127.0.0.1:$port" "$@" >"$home/$name.start" 2>&1
}

# Short timers, so that the scenarios' bounds are seconds: pings every 1 s answered within 1 s,
# a websocket write may block 2 s, the master peeks at most 2 s for a request line and a worker
# waits at most 2 s for request headers.
serve=(-- serve --ping-interval 1s --ping-timeout 1s --write-timeout 2s --header-read-timeout 2s)

reserve_port; chat_port=$RESERVED_PORT
reserve_port; redis_chat_port=$RESERVED_PORT
reserve_port; redis_port=$RESERVED_PORT
reserve_port; proxy_port=$RESERVED_PORT
reserve_port; endless_port=$RESERVED_PORT
reserve_port; storm_port=$RESERVED_PORT
base=http://127.0.0.1:$chat_port

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$home/redis.log" 2>&1 &
started_pids+=($!)

if ! start_app attack "$chat_port" -i 2 --peek-timeout 2s "${serve[@]}"; then
  echo "FAIL setup: chatctl start: $(cat "$home/attack.start")"
  exit 1
fi
"$CHATCTL" proxy --listen "127.0.0.1:$proxy_port" --backend "127.0.0.1:$chat_port=0" \
  --header-read-timeout 2s >"$home/proxy.log" 2>&1 &
started_pids+=($!)
redis_up() { redis-cli -p "$redis_port" ping >/dev/null 2>&1; }
wait_for redis_up || { echo "FAIL setup: redis-server does not answer: $(cat "$home/redis.log")"; exit 1; }
if ! start_app attack-redis "$redis_chat_port" -i 2 --redis "redis://127.0.0.1:$redis_port" "${serve[@]}"; then
  echo "FAIL setup: chatctl start --redis: $(cat "$home/attack-redis.start")"
  exit 1
fi
proxy_serves() { curl -sf -o /dev/null "http://127.0.0.1:$proxy_port/socket.io/?EIO=4&transport=polling"; }
wait_for proxy_serves || { echo "FAIL setup: chatctl proxy does not serve: $(cat "$home/proxy.log")"; exit 1; }

attack() { node "$root/ops/attack/attack.mjs" "$@"; [[ $? == 0 ]] || failures=$((failures + 1)); }

attack attachment-bomb "$base" 1000000 "$(worker_pids attack)"
attack handshake-flood "$base" 12000
# Ping interval + ping timeout + write timeout, and half a second for the polling.
attack never-reads "$base" 4500 "$(worker_pids attack)"
attack slowloris "$base" "http://127.0.0.1:$proxy_port" 100 "$(worker_pids attack)"

ghost() { # name app-port store
  local out
  out=$(node "$root/bin/chatctl/tests/clients/ghost.mjs" "http://127.0.0.1:$2" 3 2>&1 | tail -1)
  if [[ $out == *'"event":"done"'* ]]; then
    report PASS "$1" "a user in 3 rooms renamed itself and left; the $3 store lists $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rooms"])' "$out") (the watcher alone), no ghost"
  else
    report FAIL "$1" "$out"
  fi
}
ghost ghost-embedded "$chat_port" embedded
ghost ghost-redis "$redis_chat_port" Redis

# A worker that writes 100 MB without a newline on its IPC channel (fd 4).
start_app endless "$endless_port" -i 1 --ipc-max-line 64K --min-uptime 100ms \
  -- sh -c 'head -c 100000000 /dev/zero >&4; exec sleep 600'
replaced() { [[ $(listed endless 'workers[0]["restarts"]') -ge 1 ]] 2>/dev/null; }
if wait_for replaced && app_log endless | grep -q 'longer than 65536 bytes'; then
  kb=$(rss_kb "$(master_pid endless)")
  if ((kb < 65536)); then
    report PASS endless-ipc-line "the worker was replaced after a line longer than --ipc-max-line 64K, master RSS $((kb / 1024)) MB"
  else
    report FAIL endless-ipc-line "the worker was replaced but the master's RSS is $((kb / 1024)) MB"
  fi
else
  report FAIL endless-ipc-line "not replaced within 20 s: $(listed endless 'workers'); $(app_log endless | tail -3)"
fi
"$CHATCTL" stop endless >/dev/null 2>&1

# One worker publishes a broadcast storm at full speed, the other cannot keep up and is
# stopped for 2 s (see bin/chatctl/tests/clients/ipc_worker.py).
start_app storm "$storm_port" -i 2 --ipc-queue-size 1M --ipc-max-line 64K \
  --health-interval 300ms --health-timeout 3s --health-misses 3 \
  -- python3 "$root/bin/chatctl/tests/clients/ipc_worker.py"
overflowing() { app_log storm | grep -q 'cannot keep up with the broadcasts'; }
answered() { app_log storm | grep -cE 'w1 \| ([^ ]+ )?answered'; }
if wait_for overflowing; then
  busy=$(listed storm 'workers[1]["pid"]')
  kill -STOP "$busy"
  sleep 2 # the pause is the scenario, not a synchronisation
  kill -CONT "$busy"
  before=$(answered)
  more_answers() { (($(answered) >= before + 3)); }
  wait_for more_answers
  after=$(answered)
  kb=$(rss_kb "$(master_pid storm)")
  lost=$(app_log storm | grep -c 'LOST reply')
  killed=$(app_log storm | grep -c 'health probes')
  now_pid=$(listed storm 'workers[1]["pid"]')
  restarts=$(listed storm 'workers[1]["restarts"]')
  figures="busy worker stopped 2 s in the storm: $lost store replies lost, $(((after - before) * 10)) replies answered in the first moments after it, restarts $restarts, master RSS $((kb / 1024)) MB (--ipc-queue-size 1M)"
  if ((lost == 0 && killed == 0 && after >= before + 3 && kb < 65536)) && [[ $now_pid == "$busy" && $restarts == 0 ]]; then
    report PASS paused-worker-storm "$figures"
  else
    report FAIL paused-worker-storm "$figures; killed lines $killed, pid $busy -> $now_pid"
  fi
else
  report FAIL paused-worker-storm "the storm never overflowed the busy worker's queue: $(app_log storm | tail -3)"
fi

exit $((failures > 0))
