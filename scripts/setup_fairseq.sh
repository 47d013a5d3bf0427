#!/usr/bin/env bash
# A separate environment holding fairseq, used only as a test oracle (tests/models/fairseq_oracle/).
# fairseq-fixed is an sdist whose C extensions need torch at build time, hence --no-build-isolation with torch
# (the local CPU wheel, never a CUDA build), numpy, cython, setuptools and wheel installed first (~4 min on 2
# cores). It pulls torchaudio (a CUDA build that breaks imports): removed again. timm goes in without its
# dependencies (it imports torchvision, which the oracle harness stubs). Idempotent: an existing build is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
ENV=.venv-fairseq
# timm itself imports torchvision at module level; the oracle harness stubs that, so only check it is there.
CHECK="import fairseq, omegaconf, hydra, safetensors, PIL, importlib.util as u; assert u.find_spec('timm')"
if [ -x "$ENV/bin/python" ] && "$ENV/bin/python" -c "$CHECK" 2>/dev/null \
  && ! "$ENV/bin/python" -m pip show -q torchaudio >/dev/null 2>&1; then
  exit 0
fi
[ -x "$ENV/bin/python" ] || "$PY" -m venv "$ENV"
PIP=("$ENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==2.13.0" numpy cython setuptools wheel safetensors pillow
"${PIP[@]}" --no-build-isolation "fairseq-fixed==0.12.3.1" "torch==2.13.0"
"$ENV/bin/python" -m pip uninstall -y -q torchaudio || true
"${PIP[@]}" --no-deps timm
"$ENV/bin/python" -c "$CHECK"
