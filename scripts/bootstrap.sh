#!/usr/bin/env bash
# Builds the project's environment in .venv/ (idempotent: re-runs only when pyproject.toml changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.medshards-installed
want=$(sha256sum pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "medshards: building .venv (first run takes several minutes)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, as a pair that imports together; installing the project first lets
# pip pick a torch that no torchvision on this machine matches. Every version comes from
# constraints.txt (scripts/lock.sh): what the tests passed with, and what infra/Dockerfile installs.
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "$want" > "$stamp"
