#!/usr/bin/env bash
# A separate environment for the real `tritonserver` (shipped in nvidia-pytriton, which pins numpy<2).
# Its python backend runs our torch-free preprocessing and ONNX Runtime, so those go in too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv-triton/bin/python ] || "$PY" -m venv .venv-triton
PIP=(.venv-triton/bin/python -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "nvidia-pytriton==0.7.*" "numpy<2" onnxruntime tokenizers pillow soundfile soxr pyyaml
