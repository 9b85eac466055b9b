#!/usr/bin/env bash
# The fault of run.sh's reload scenario, run by chat-bench (--fault-command) in the middle of a chat
# load: COUNT reloads one after the other, each timed, and for chatctl one master upgrade after them
# when the binary has `chatctl upgrade` (and RELOAD_UPGRADE is not 0). One line per step goes to TIMES ("reload 1 1234 ms").
#
# Usage: reloads.sh chatctl CHATCTL APP COUNT TIMES        (CHATCTL_HOME as for the app)
#        reloads.sh node-chat PRIMARY_PID LOG COUNT TIMES  (SIGUSR2: node-chat's rolling restart,
#                                                           done when LOG says so)
set -euo pipefail

ms() { echo $(($(date +%s%N) / 1000000)); }

case ${1:-} in
chatctl)
  chatctl=$2 app=$3 count=$4 times=$5
  for ((i = 1; i <= count; i++)); do
    began=$(ms)
    "$chatctl" reload "$app" >&2
    echo "reload $i $(($(ms) - began)) ms" >>"$times"
  done
  if [[ ${RELOAD_UPGRADE:-1} == 1 ]] && "$chatctl" upgrade --help >/dev/null 2>&1; then
    began=$(ms)
    "$chatctl" upgrade "$app" >&2
    echo "upgrade 1 $(($(ms) - began)) ms" >>"$times"
  fi
  ;;
node-chat)
  primary=$2 log=$3 count=$4 times=$5
  for ((i = 1; i <= count; i++)); do
    done_before=$(grep -c "rolling restart done" "$log" || true)
    began=$(ms)
    kill -USR2 "$primary"
    deadline=$((SECONDS + 120))
    until (($(grep -c "rolling restart done" "$log" || true) > done_before)); do
      ((SECONDS < deadline)) || {
        echo "reloads.sh: node-chat's rolling restart $i did not end within 120 s" >&2
        exit 1
      }
      sleep 0.05
    done
    echo "reload $i $(($(ms) - began)) ms" >>"$times"
  done
  ;;
*)
  echo "usage: reloads.sh chatctl CHATCTL APP COUNT TIMES | node-chat PRIMARY_PID LOG COUNT TIMES" >&2
  exit 2
  ;;
esac
