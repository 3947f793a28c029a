# Shared header of the launch scripts (sourced, not run): the repository root
# as working directory and a Python with cnnjax installed.
#
# PYTHON_BIN=/path/to/python uses that environment as it is (e.g. one with
# jax[cuda] on a GPU machine); otherwise ./.venv is created with $PYTHON
# (default python3) and cnnjax is installed into it, as launch/demo.sh does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON_BIN:-}" ]; then
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install -q -e .
  PYTHON_BIN=.venv/bin/python
fi

# run_study ONLY WORKDIR [CONFIG_ARGS]: the steps of configs/study.py that
# produce ONLY (a seed table or figure, e.g. table2.3; '' = the whole study)
# in WORKDIR, with CONFIG_ARGS (default: runlocal, the demo on a CPU).
run_study() {
  local only="$1"
  local workdir="${2:?usage: bash $0 WORKDIR [config args, default runlocal]}"
  local args="${3:-runlocal}"
  exec "$PYTHON_BIN" -m cnnjax.main \
      --config "configs/study.py:${args}${only:+,only=$only}" \
      --workdir "$workdir"
}
