#!/usr/bin/env bash
# chatctl's master against PM2 in cluster mode, side by side on this machine:
#
#   (a) recovery: SIGKILL one worker, time until its replacement is listed online and the app
#       answers (median of KILLS kills, alternating between the two workers); chatctl twice,
#       with its defaults and with --spare 1 (a warm worker takes the killed one's place).
#       A chat worker is listed online only once it takes connections (it says so over IPC);
#       PM2 lists a worker online when it forks it, so there the new pid must answer a GET;
#   (b) memory: RSS of chatctl's master vs PM2's God daemon (and of the workers, for context),
#       idle after start and again after the load runs;
#   (c) reload under load: `wrk -t2 -c50 -d10s`, `chatctl reload` / `pm2 reload` RELOAD_AT
#       seconds in; non-2xx answers and socket errors, RELOADS runs each, after one run of
#       the same load without a reload (the baseline).
#
# chatctl runs the chat app (2 workers, GET /healthz answers "ok"); PM2 runs
# ops/bench/peers/hello.js (2 instances, GET / answers "ok"). Both with their default settings,
# except chatctl's --restart-reset (see KILL_GAP below).
#
# Usage: ops/bench/supervisor.sh            (about 5 minutes; prints a summary at the end)
#   CHATCTL=path/to/chatctl   use this binary instead of `cargo build --release -p chatctl`
#   KILLS=5 RELOADS=3 WRK_DURATION=10 RELOAD_AT=3 PORT_CHATCTL= PORT_PM2= (default: reserved by ops/lib/ports.sh)
#   CHATCTL_FLAGS="--restart-delay 0ms"   more flags for `chatctl start` (word-split)
#
# Needs: cargo, node + npm, curl, jq, wrk (as root on Debian the last three are installed when
# missing). Traffic goes to 127.0.0.1 only; every loop is bounded; the trap stops exactly the
# processes this script started (the chatctl app, the PM2 daemon of its own PM2_HOME, wrk) and
# removes its temporary CHATCTL_HOME and PM2_HOME.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEERS=$ROOT/ops/bench/peers
KILLS=${KILLS:-5}
RELOADS=${RELOADS:-3}
WRK_DURATION=${WRK_DURATION:-10}
RELOAD_AT=${RELOAD_AT:-3}
PORT_CHATCTL=${PORT_CHATCTL:-}
PORT_PM2=${PORT_PM2:-}
# chatctl's backoff grows for a worker that crashes again within --restart-reset (30 s by
# default). The kills here stand for independent crashes, so the app gets --restart-reset 2s
# and each killed worker has been up at least KILL_GAP seconds: every restart is a first one,
# with the default first delay (100 ms). PM2 restarts at once by default (restart_delay 0).
KILL_GAP=3
APP=bench

log() { printf '%s\n' "$*" >&2; }
die() {
  log "supervisor.sh: $*"
  exit 1
}

# --- tools -----------------------------------------------------------------------------------

need_debian_package() { # command package
  command -v "$1" >/dev/null && return
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing $2"
    apt-get install -y -qq "$2" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }
  fi
  command -v "$1" >/dev/null || die "$1 is missing (Debian package $2)"
}
need_debian_package curl curl
need_debian_package jq jq
need_debian_package wrk wrk
command -v node >/dev/null || die "node is missing"
command -v npm >/dev/null || die "npm is missing"

if [[ -z ${CHATCTL:-} ]]; then
  log "building chatctl (cargo build --release -p chatctl)"
  (cd "$ROOT" && cargo build --release -p chatctl --quiet)
  CHATCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/chatctl
fi
[[ -x $CHATCTL ]] || die "no chatctl binary at $CHATCTL"
log "installing PM2 (npm ci in ops/bench/peers)"
(cd "$PEERS" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
PM2=$PEERS/node_modules/.bin/pm2
# Read from its package: every pm2 command, even --version, starts a daemon when none runs.
PM2_VERSION=$(node -p "require('$PEERS/node_modules/pm2/package.json').version")

# --- state and cleanup -----------------------------------------------------------------------

WORK=$(mktemp -d /tmp/chatctl-bench-supervisor.XXXXXX)
export CHATCTL_HOME=$WORK/chatctl PM2_HOME=$WORK/pm2
mkdir -p "$CHATCTL_HOME" "$PM2_HOME"
STARTED_PIDS=() # wrk runs, killed at exit if still there

cleanup() {
  set +e
  local pid master god
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  master=$(cat "$CHATCTL_HOME/apps/$APP/master.pid" 2>/dev/null)
  if [[ -n $master ]] && kill -0 "$master" 2>/dev/null; then
    timeout 30 "$CHATCTL" stop "$APP" >/dev/null 2>&1
    # The master leads its own process group (setsid): whatever survived `stop` goes with it.
    kill -0 -- "-$master" 2>/dev/null && kill -KILL -- "-$master" 2>/dev/null
  fi
  god=$(cat "$PM2_HOME/pm2.pid" 2>/dev/null)
  if [[ -n $god ]] && kill -0 "$god" 2>/dev/null; then
    timeout 30 "$PM2" kill >/dev/null 2>&1
    kill -0 "$god" 2>/dev/null && kill -KILL "$god" 2>/dev/null
  fi
  # Any other process of this run names its temporary directory on its command line (a PM2
  # daemon that a pm2 command started on its own, say): none may outlive the run.
  for pid in $(pgrep -f -- "$WORK"); do
    log "supervisor.sh: killing leftover process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    kill -KILL "$pid" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=../lib/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/ports.sh"
[[ -n $PORT_CHATCTL ]] || { reserve_port || die "no free port"; PORT_CHATCTL=$RESERVED_PORT; }
[[ -n $PORT_PM2 ]] || { reserve_port || die "no free port"; PORT_PM2=$RESERVED_PORT; }

# --- helpers ---------------------------------------------------------------------------------

now_ms() { # bash 5: no process per clock reading
  local t=${EPOCHREALTIME/[.,]/}
  echo $((t / 1000))
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
median() { sort -n | awk '{v[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
# Milliseconds one run of a command takes (the cost of one poll of a process list).
time_ms() {
  local start end
  start=$(now_ms)
  "$@" >/dev/null 2>&1 || true
  end=$(now_ms)
  echo $((end - start))
}

chatctl_status() { timeout 10 "$CHATCTL" status "$APP" --json 2>/dev/null; }
chatctl_all_online() {
  chatctl_status | jq -e '[.workers[] | select(.status == "online")] | length == 2' >/dev/null 2>&1
}
pm2_jlist() { timeout 20 "$PM2" jlist 2>/dev/null; }
pm2_all_online() {
  pm2_jlist | jq -e '[.[] | select(.name == "hello" and .pm2_env.status == "online")] | length == 2' >/dev/null 2>&1
}
wait_for() { # seconds command...: polls until the command succeeds
  local deadline=$(($(now_ms) + $1 * 1000))
  shift
  until "$@"; do
    (($(now_ms) < deadline)) || return 1
    sleep 0.1
  done
}

# (a) for chatctl: kill slot's worker; done when `chatctl status --json` lists another pid
# online for the slot (a chat worker reports ready over IPC only once it takes connections)
# and GET /healthz is answered on the app's port.
chatctl_recovery_ms() { # slot
  local slot=$1 old new start deadline
  old=$(chatctl_status | jq -r ".workers[] | select(.id == $slot) | .pid")
  [[ $old =~ ^[0-9]+$ ]] || die "chatctl: no pid for worker $slot"
  start=$(now_ms)
  kill -KILL "$old"
  deadline=$((start + 30000))
  while (($(now_ms) < deadline)); do
    new=$(chatctl_status | jq -r ".workers[] | select(.id == $slot and .status == \"online\") | .pid")
    if [[ $new =~ ^[0-9]+$ && $new != "$old" ]] &&
      [[ $(curl -s --max-time 2 "http://127.0.0.1:$PORT_CHATCTL/healthz") == ok ]]; then
      echo $(($(now_ms) - start))
      return
    fi
    sleep 0.005
  done
  die "chatctl: worker $slot was not replaced within 30 s"
}

# (a) for PM2: kill the instance's worker; done when a GET / is answered by a pid that is
# neither the killed one nor the other instance (hello.js names itself in x-worker-pid), then
# checked (not timed: one `pm2 jlist` costs hundreds of ms) to be that instance's new online pid.
pm2_recovery_ms() { # pm_id
  local id=$1 list old other served start deadline elapsed listed
  list=$(pm2_jlist)
  old=$(jq -r ".[] | select(.name == \"hello\" and .pm_id == $id) | .pid" <<<"$list")
  other=$(jq -r ".[] | select(.name == \"hello\" and .pm_id != $id) | .pid" <<<"$list")
  [[ $old =~ ^[0-9]+$ ]] || die "pm2: no pid for instance $id"
  start=$(now_ms)
  kill -KILL "$old"
  deadline=$((start + 30000))
  while (($(now_ms) < deadline)); do
    served=$(curl -s --max-time 2 -o /dev/null -D - "http://127.0.0.1:$PORT_PM2/" |
      tr -d '\r' | awk -F': ' 'tolower($1) == "x-worker-pid" {print $2}')
    if [[ $served =~ ^[0-9]+$ && $served != "$old" && $served != "$other" ]]; then
      elapsed=$(($(now_ms) - start))
      listed=$(pm2_jlist | jq -r ".[] | select(.pm_id == $id and .pm2_env.status == \"online\") | .pid")
      [[ $listed == "$served" ]] || die "pm2: pid $served answered but instance $id is listed as '$listed'"
      echo "$elapsed"
      return
    fi
    sleep 0.005
  done
  die "pm2: instance $id was not replaced within 30 s"
}

# (c) one wrk run with a reload RELOAD_AT seconds in. Prints "non2xx socket_errors requests
# rps reload_ms" and keeps wrk's output in $WORK.
reload_under_wrk() { # label url reload-command...
  local label=$1 url=$2 out wrk_pid start reload_ms non2xx errors requests rps
  shift 2
  out=$WORK/wrk-$label-$RANDOM.txt
  wrk -t2 -c50 "-d${WRK_DURATION}s" "$url" >"$out" 2>&1 &
  wrk_pid=$!
  STARTED_PIDS+=("$wrk_pid")
  sleep "$RELOAD_AT"
  start=$(now_ms)
  timeout 120 "$@" >"$out.reload" 2>&1 || log "$label: the reload command failed: $(tail -3 "$out.reload")"
  reload_ms=$(($(now_ms) - start))
  wait "$wrk_pid" || true
  sed 's/^/    /' "$out" >&2
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
  errors=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$out" |
    awk '{print $1 + $2 + $3 + $4}')
  requests=$(awk '/requests in/ {print $1}' "$out")
  rps=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$out")
  echo "${non2xx:-0} ${errors:-0} ${requests:-0} ${rps:-0} $reload_ms"
}

# --- chatctl ---------------------------------------------------------------------------------

USER_FLAG=()
[[ $(id -u) == 0 ]] && USER_FLAG=(--user nobody)
read -ra EXTRA_FLAGS <<<"${CHATCTL_FLAGS:-}"
chatctl_worker_pids() { chatctl_status | jq -r '.workers[].pid, (.spares // [])[].pid'; }

# One chatctl run with more start flags; its figures go to C_<variant>_* (variant: a word).
run_chatctl() { # variant flags...
  local variant=$1 i
  shift
  log "chatctl ($variant): starting the chat app, 2 workers on 127.0.0.1:$PORT_CHATCTL"
  timeout 60 "$CHATCTL" start --name "$APP" --listen "127.0.0.1:$PORT_CHATCTL" -i 2 \
    --restart-reset 2s "${USER_FLAG[@]}" "${EXTRA_FLAGS[@]}" "$@" >/dev/null
  CHATCTL_MASTER=$(cat "$CHATCTL_HOME/apps/$APP/master.pid")
  [[ $CHATCTL_MASTER =~ ^[0-9]+$ ]] || die "chatctl: no master pid"
  wait_for 30 chatctl_all_online || die "chatctl: workers not online"
  [[ $(curl -s --max-time 2 "http://127.0.0.1:$PORT_CHATCTL/healthz") == ok ]] || die "chatctl: GET /healthz did not answer ok"
  sleep 2
  declare -g "C_${variant}_MASTER_IDLE=$(rss_kib "$CHATCTL_MASTER")"
  declare -g "C_${variant}_WORKERS_IDLE=$(for p in $(chatctl_worker_pids); do rss_kib "$p"; done | awk '{s+=$1} END {print s}')"
  C_LIST_MS=$(for _ in 1 2 3 4 5; do time_ms "$CHATCTL" status "$APP" --json; done | median)

  local recovery=()
  for ((i = 0; i < KILLS; i++)); do
    sleep "$KILL_GAP"
    wait_for 30 chatctl_all_online || die "chatctl: workers not back online"
    recovery+=("$(chatctl_recovery_ms $((i % 2)))")
    log "chatctl ($variant): kill $((i + 1)): replacement serving after ${recovery[-1]} ms"
  done
  declare -g "C_${variant}_RECOVERY=${recovery[*]}"

  # The same load without a reload: errors here are not the reload's.
  wait_for 60 chatctl_all_online || die "chatctl: workers not online before the load"
  log "chatctl ($variant): wrk without a reload"
  declare -g "C_${variant}_BASE=$(reload_under_wrk chatctl "http://127.0.0.1:$PORT_CHATCTL/healthz" true)"
  local reloads=()
  for ((i = 0; i < RELOADS; i++)); do
    wait_for 60 chatctl_all_online || die "chatctl: workers not online before reload run"
    log "chatctl ($variant): wrk with a reload at ${RELOAD_AT}s (run $((i + 1)))"
    reloads+=("$(reload_under_wrk chatctl "http://127.0.0.1:$PORT_CHATCTL/healthz" "$CHATCTL" reload "$APP")")
  done
  declare -g "C_${variant}_RELOADS=$(printf '%s;' "${reloads[@]}")"
  wait_for 60 chatctl_all_online || die "chatctl: workers not online after the reloads"
  sleep 2
  declare -g "C_${variant}_MASTER_AFTER=$(rss_kib "$CHATCTL_MASTER")"
  declare -g "C_${variant}_WORKERS_AFTER=$(for p in $(chatctl_worker_pids); do rss_kib "$p"; done | awk '{s+=$1} END {print s}')"
  timeout 60 "$CHATCTL" stop "$APP" >/dev/null
  timeout 60 "$CHATCTL" delete "$APP" >/dev/null
}

run_chatctl defaults
run_chatctl spare --spare 1

# --- PM2 -------------------------------------------------------------------------------------

log "pm2: starting hello.js, 2 instances in cluster mode on 127.0.0.1:$PORT_PM2"
PORT=$PORT_PM2 HOST=127.0.0.1 timeout 60 "$PM2" start "$PEERS/hello.js" --name hello -i 2 >/dev/null
PM2_GOD=$(cat "$PM2_HOME/pm2.pid")
[[ $PM2_GOD =~ ^[0-9]+$ ]] || die "pm2: no daemon pid"
wait_for 30 pm2_all_online || die "pm2: instances not online"
wait_for 10 bash -c "[[ \$(curl -s --max-time 2 http://127.0.0.1:$PORT_PM2/) == ok ]]" || die "pm2: GET / did not answer ok"
sleep 2
pm2_worker_pids() { pm2_jlist | jq -r '.[] | select(.name == "hello") | .pid'; }
P_GOD_IDLE=$(rss_kib "$PM2_GOD")
P_WORKERS_IDLE=$(for p in $(pm2_worker_pids); do rss_kib "$p"; done | awk '{s+=$1} END {print s}')
P_LIST_MS=$(for _ in 1 2 3 4 5; do time_ms "$PM2" jlist; done | median)

P_RECOVERY=()
for ((i = 0; i < KILLS; i++)); do
  sleep "$KILL_GAP"
  wait_for 30 pm2_all_online || die "pm2: instances not back online"
  P_RECOVERY+=("$(pm2_recovery_ms $((i % 2)))")
  log "pm2: kill $((i + 1)): replacement serving after ${P_RECOVERY[-1]} ms"
done

wait_for 60 pm2_all_online || die "pm2: instances not online before the load"
log "pm2: wrk without a reload"
P_BASE=$(reload_under_wrk pm2 "http://127.0.0.1:$PORT_PM2/" true)
P_RELOAD=()
for ((i = 0; i < RELOADS; i++)); do
  wait_for 60 pm2_all_online || die "pm2: instances not online before reload run"
  log "pm2: wrk with a reload at ${RELOAD_AT}s (run $((i + 1)))"
  P_RELOAD+=("$(reload_under_wrk pm2 "http://127.0.0.1:$PORT_PM2/" "$PM2" reload hello)")
done
wait_for 60 pm2_all_online || die "pm2: instances not online after the reloads"
sleep 2
P_GOD_AFTER=$(rss_kib "$PM2_GOD")
P_WORKERS_AFTER=$(for p in $(pm2_worker_pids); do rss_kib "$p"; done | awk '{s+=$1} END {print s}')
timeout 60 "$PM2" kill >/dev/null

# --- summary ---------------------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
P_MED=$(printf '%s\n' "${P_RECOVERY[@]}" | median)
C_defaults_MED=$(tr ' ' '\n' <<<"$C_defaults_RECOVERY" | median)
C_spare_MED=$(tr ' ' '\n' <<<"$C_spare_RECOVERY" | median)
reload_rows() { # label runs...
  local label=$1 run non2xx errors requests rps reload_ms
  shift
  for run in "$@"; do
    [[ -n $run ]] || continue
    read -r non2xx errors requests rps reload_ms <<<"$run"
    [[ $label == *"no reload"* ]] && reload_ms=-
    echo "| $label | $requests | $rps | $non2xx | $errors | $reload_ms |"
  done
}
IFS=';' read -ra C_defaults_RELOAD <<<"$C_defaults_RELOADS"
IFS=';' read -ra C_spare_RELOAD <<<"$C_spare_RELOADS"

cat <<EOF

## Supervisor: chatctl vs PM2 — results

date: $(date -u +%Y-%m-%dT%H:%MZ)   nproc: $(nproc)   cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
chatctl: $("$CHATCTL" --version) (start flags: -i 2 --restart-reset 2s ${USER_FLAG[*]} ${CHATCTL_FLAGS:-}; "--spare 1" rows: also --spare 1)   node: $(node --version)   pm2: $PM2_VERSION   $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)

(a) SIGKILL of a worker until its replacement is listed online and the app answers (ms)
| | runs | median | ours/PM2 |
| --- | --- | --- | --- |
| chatctl | $C_defaults_RECOVERY | $C_defaults_MED | $(ratio "$C_defaults_MED" "$P_MED") |
| chatctl --spare 1 | $C_spare_RECOVERY | $C_spare_MED | $(ratio "$C_spare_MED" "$P_MED") |
| PM2 | ${P_RECOVERY[*]} | $P_MED | |
one poll of the process list: chatctl status --json $C_LIST_MS ms, pm2 jlist $P_LIST_MS ms (median of 5)

(b) memory, RSS in MiB (idle after start / after the kills and the load runs)
| | supervisor | ours/PM2 | workers (and spare) |
| --- | --- | --- | --- |
| chatctl master | $(mib "$C_defaults_MASTER_IDLE") / $(mib "$C_defaults_MASTER_AFTER") | $(ratio "$C_defaults_MASTER_IDLE" "$P_GOD_IDLE") / $(ratio "$C_defaults_MASTER_AFTER" "$P_GOD_AFTER") | $(mib "$C_defaults_WORKERS_IDLE") / $(mib "$C_defaults_WORKERS_AFTER") |
| chatctl master, --spare 1 | $(mib "$C_spare_MASTER_IDLE") / $(mib "$C_spare_MASTER_AFTER") | $(ratio "$C_spare_MASTER_IDLE" "$P_GOD_IDLE") / $(ratio "$C_spare_MASTER_AFTER" "$P_GOD_AFTER") | $(mib "$C_spare_WORKERS_IDLE") / $(mib "$C_spare_WORKERS_AFTER") |
| PM2 God daemon | $(mib "$P_GOD_IDLE") / $(mib "$P_GOD_AFTER") | | $(mib "$P_WORKERS_IDLE") / $(mib "$P_WORKERS_AFTER") |

(c) wrk -t2 -c50 -d${WRK_DURATION}s with a reload ${RELOAD_AT}s in
| | requests | req/s | non-2xx | socket errors | reload took (ms) |
| --- | --- | --- | --- | --- | --- |
$(reload_rows "chatctl, no reload" "$C_defaults_BASE")
$(reload_rows chatctl "${C_defaults_RELOAD[@]}")
$(reload_rows "chatctl --spare 1, no reload" "$C_spare_BASE")
$(reload_rows "chatctl --spare 1" "${C_spare_RELOAD[@]}")
$(reload_rows "PM2, no reload" "$P_BASE")
$(reload_rows PM2 "${P_RELOAD[@]}")
EOF
