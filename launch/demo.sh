#!/usr/bin/env bash
# Installs cnnjax into ./.venv and runs the main job on the embedded demo data:
# R-CNN detection on the generated VOC-format set (configs/pascal_det.py:runlocal),
# pretraining the demo CaffeNet first when it is not cached yet.
# Usage: bash launch/demo.sh [WORKDIR] [extra config args, e.g. layer=pool5]
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-workdirs/pascal_det_demo}"
ARGS="${2:-}"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m cnnjax.main \
    --config "configs/pascal_det.py:runlocal${ARGS:+,$ARGS}" --workdir "$WORKDIR"
