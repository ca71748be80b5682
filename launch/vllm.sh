#!/usr/bin/env bash
# Serve a mixed plan with vLLM on a CUDA GPU box: install mpq-serving (the `mpq` vLLM plugin) into the
# Python that already has CUDA vllm, pack the plan if needed, and start vLLM's OpenAI server.
#
#   bash launch/vllm.sh configs/smollm2_mixed.yaml --model smollm2            # plan + base model
#   bash launch/vllm.sh packed/ --port 8000 -- --tensor-parallel-size 2        # packed folder; after -- : vLLM's args
#
# Uses PYTHON (default python3), which must import vllm (pip install vllm); mpq-serving is installed
# with that Python's torch and transformers pinned, so pip never swaps vLLM's CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import vllm" || { echo "no vllm in $PY: pip install vllm (CUDA), or use scripts/install_vllm.sh on CPU" >&2; exit 1; }
if ! "$PY" -c "import importlib.metadata as m; assert 'mpq' in [e.name for e in m.entry_points(group='vllm.general_plugins')]" 2>/dev/null; then
  PINS=$(mktemp); trap 'rm -f "$PINS"' EXIT
  "$PY" -m pip freeze | grep -E '^(torch|transformers|triton)==' > "$PINS"
  "$PY" -m pip install -q -c "$PINS" -e ".[serve]"
fi
exec "$PY" -m mpq_serving.cli.main serve --engine vllm "$@"
