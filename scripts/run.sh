#!/usr/bin/env bash
# The main job on a fresh machine: set up, build the default models if the store is empty
# (`d2v quickstart`: pretrain tiny data2vec models on the bundled sample data, export them), then serve
# them on http://127.0.0.1:8080 (OpenAI-compatible /v1/embeddings plus /v1/embed/{text,image,audio}).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh run
exec .venv/bin/d2v serve --quickstart-if-empty "$@"
