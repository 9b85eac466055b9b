#!/usr/bin/env bash
# Runs every test of the workspace, after installing what they need. This is the README's test
# command and what CI runs (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ops/test-deps.sh
export CHATCTL_PYTHON="$root/ops/python/.venv/bin/python"
cargo test --workspace --locked "$@"
