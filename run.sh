#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (once, and again when pyproject.toml changes), then runs.
#   ./run.sh demo      the main job (offline, on scikit-learn's embedded digits data)
#   ./run.sh test      ruff + mypy + the whole test suite, then tests/callbacks under lightning.pytorch (what CI runs)
#   ./run.sh <cmd...>  any command inside the environment, e.g. ./run.sh lightning-dnn fit --config ...
set -euo pipefail
cd "$(dirname "$0")"
VENV="${LIGHTNING_DNN_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[run.sh] creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.lightning-dnn-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[run.sh] installing lightning-dnn and its dependencies (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e ".[dev]"
    touch "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

cmd="${1:-demo}"
[ $# -gt 0 ] && shift
setup
case "$cmd" in
  demo)
    exec python examples/main_job.py "$@"
    ;;
  test)
    echo "[run.sh] ruff" >&2
    ruff check lightning_dnn tests examples bench
    echo "[run.sh] mypy" >&2
    mypy
    echo "[run.sh] pytest" >&2
    if [ $# -gt 0 ]; then
      exec python -m pytest -q "$@"
    fi
    python -m pytest -q
    # the callback tests again with lightning.pytorch instead of pytorch_lightning (docs/LIGHTNING_PACKAGES.md)
    echo "[run.sh] pytest tests/callbacks under lightning.pytorch" >&2
    LIGHTNING_DNN_TEST_PACKAGE=lightning exec python -m pytest -q tests/callbacks
    ;;
  *)
    exec "$cmd" "$@"
    ;;
esac
