#!/usr/bin/env bash
# Installs cnnjax with its test extra into ./.venv and runs the unit suite.
# Usage: bash launch/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -n 2 "$@"
