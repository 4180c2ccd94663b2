#!/usr/bin/env bash
# Rewrites constraints.txt from .venv/: the exact versions the test suite passed with, which
# scripts/bootstrap.sh and infra/Dockerfile install (so a laptop, CI and every cluster node run
# the same Ray, torch and timm). Run after changing pyproject.toml's dependencies, on a .venv built
# from scratch (rm -rf .venv; make env), then `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
{
    echo "# Exact versions medshards is tested with; written by scripts/lock.sh from a fresh .venv."
    echo "# Installed by scripts/bootstrap.sh and infra/Dockerfile as pip constraints (-c)."
    .venv/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(pyflakes|pip|setuptools|wheel)=='
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
