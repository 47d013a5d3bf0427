#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv). Idempotent; safe to re-run.
# The CPU build of torch goes in first, so no resolver drags a multi-GB CUDA build onto a CPU machine.
# Usage: scripts/setup.sh [dev|run]   (default: dev = everything the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${1:-dev}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip "setuptools>=69" wheel
"${PIP[@]}" "torch==2.13.*" numpy
case "$PROFILE" in
  dev) "${PIP[@]}" -e ".[dev]" -e ./clients ;;
  run) "${PIP[@]}" -e ".[cpu,train,export]" -e ./clients ;;
  *) echo "unknown profile $PROFILE (dev|run)" >&2; exit 2 ;;
esac
if [ "$PROFILE" = dev ]; then
  bash scripts/setup_triton.sh
  bash scripts/setup_fairseq.sh  # fairseq as a test oracle (tests/models/fairseq_oracle)
fi
