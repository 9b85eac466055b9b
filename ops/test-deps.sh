#!/usr/bin/env bash
# Installs what the tests drive: the npm clients and browser driver (ops/js), the PyPI clients (a
# venv in ops/python/.venv) and, when run as root on Debian, the system packages, among them the
# Debian chromium that crates/chat/tests/browser.rs drives (playwright-core never downloads a
# browser of its own). Idempotent and quick when everything is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

apt_packages=()
for tool in node:nodejs npm:npm python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || apt_packages+=("${tool#*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)
# The browser test launches this binary; CHATCTL_CHROMIUM points it at another build.
[ -x "${CHATCTL_CHROMIUM:-/usr/bin/chromium}" ] || apt_packages+=(chromium)
# crates/coord/tests/redis.rs starts redis-servers of its own on loopback ports;
# redis_cluster.rs joins three of them with redis-cli --cluster create (Redis 7).
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_packages+=(redis-tools)
# bin/chatctl/tests/monit.rs drives `chatctl monit` in a tmux pane (send-keys, capture-pane).
command -v tmux >/dev/null 2>&1 || apt_packages+=(tmux)
# bin/chatctl/tests/hooks.rs runs ops/hooks/webhook.sh, which posts with curl the JSON jq builds.
command -v curl >/dev/null 2>&1 || apt_packages+=(curl)
command -v jq >/dev/null 2>&1 || apt_packages+=(jq)
# bin/chatctl/tests/metrics.rs has a real Prometheus scrape the admin address, and checks
# its exposition with promtool (both in Debian's prometheus).
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
# bin/chatctl/tests/lifecycle.rs checks the unit of `chatctl startup` with systemd-analyze verify.
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)
# bin/chatctl/tests/socket_activation.rs hands the master its listening socket the way systemd
# does, with systemd-socket-activate (Debian's systemd).
command -v systemd-socket-activate >/dev/null 2>&1 || apt_packages+=(systemd)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-deps: installing ${apt_packages[*]} with apt-get"
    # Wait for another apt run (another script installing its own tools) instead of failing.
    apt_lock=(-o DPkg::Lock::Timeout=600)
    apt-get "${apt_lock[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_lock[@]}" install -y -qq "${apt_packages[@]}" >/dev/null
  else
    echo "test-deps: missing ${apt_packages[*]}; install them (Debian: sudo apt-get install ${apt_packages[*]})" >&2
    exit 1
  fi
fi

if [ ! -d "$root/ops/js/node_modules" ] || [ "$root/ops/js/package-lock.json" -nt "$root/ops/js/node_modules" ]; then
  echo "test-deps: npm ci in ops/js"
  (cd "$root/ops/js" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$root/ops/js/node_modules"
fi

venv="$root/ops/python/.venv"
if [ ! -x "$venv/bin/python" ] || [ "$root/ops/python/requirements.txt" -nt "$venv" ]; then
  echo "test-deps: python venv in ops/python/.venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/ops/python/requirements.txt"
  touch "$venv"
fi
