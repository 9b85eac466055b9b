#!/usr/bin/env bash
# What joining one large room costs in bytes: CLIENTS users join one room at RAMP a second
# (chat-bench --scenario idle --room-size CLIENTS) on `chatctl start -i 2`, and chat-bench adds
# up the Engine.IO packets every client received from its first request until it left: the
# open packets, the namespace answers, the member lists, every `user_entered`, the pings.
# Run it once per build to compare two (the figures are in docs/BENCHMARKS.md, "Joins").
#
# Usage: ops/bench/joins.sh        (about 15 s for 2,000 users once built)
#   CHATCTL=path/to/chatctl   that binary instead of target/release/chatctl (built if missing)
#   CLIENTS=2000 RAMP=200 WORKERS=2
#
# Needs: cargo, jq. Traffic stays on 127.0.0.1; the trap stops the app this script started and
# removes its temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLIENTS=${CLIENTS:-2000}
RAMP=${RAMP:-200}
WORKERS=${WORKERS:-2}
APP=joins

die() {
  echo "joins.sh: $*" >&2
  exit 1
}

(cd "$ROOT" && cargo build --release --quiet -p chat-bench)
BENCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/chat-bench
if [[ -z ${CHATCTL:-} ]]; then
  (cd "$ROOT" && cargo build --release --quiet -p chatctl)
  CHATCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/chatctl
fi
[[ -x $CHATCTL ]] || die "no chatctl binary at $CHATCTL"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d /tmp/chatctl-bench-joins.XXXXXX)
# Workers run as nobody when this runs as root: they read the app's home.
chmod 755 "$WORK"
export CHATCTL_HOME=$WORK/home
cleanup() {
  "$CHATCTL" stop "$APP" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=../lib/ports.sh
source "$ROOT/ops/lib/ports.sh"
reserve_port || die "no free port"
PORT=$RESERVED_PORT

# The caps on logins and unadmitted handshakes per address are lifted: the load comes from one.
timeout 60 "$CHATCTL" start --name "$APP" --listen "127.0.0.1:$PORT" -i "$WORKERS" -- serve \
  --logins-per-address 1000000 --max-pending-per-address 100000 >"$WORK/start.log" 2>&1 ||
  die "chatctl start failed: $(cat "$WORK/start.log")"

"$BENCH" --url "http://127.0.0.1:$PORT" --scenario idle --clients "$CLIENTS" --room-size "$CLIENTS" \
  --ramp "$RAMP" --connect-timeout 60s --duration 2s --json --quiet >"$WORK/report.json" ||
  die "chat-bench failed: $(head -c 2000 "$WORK/report.json")"

jq -r --arg version "$("$CHATCTL" --version)" '
  "\($version): \(.connected) of \(.clients) users joined one room at \('"$RAMP"') a second",
  "bytes of packets the clients received: \(.received_bytes)",
  "per join: \(.received_bytes / .connected | floor) bytes"' "$WORK/report.json"
