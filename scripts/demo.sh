#!/usr/bin/env bash
# Fresh machine → a mixed-precision SmolLM2 answering OpenAI requests on http://127.0.0.1:${PORT:-8000}/v1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
mpq model prepare smollm2
exec mpq serve configs/smollm2_mixed.yaml --model smollm2 --engine hf --port "${PORT:-8000}" --served-model-name smollm2-mixed
