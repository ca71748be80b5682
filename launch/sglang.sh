#!/usr/bin/env bash
# Serve a mixed plan with SGLang on a CUDA GPU box: install mpq-serving (the `mpq` SGLang plugin) into the
# Python that already has CUDA sglang, pack the plan if needed, and start SGLang's server
# (`python -m sglang.launch_server --model-path PACKED --quantization mpq ...`).
#
#   bash launch/sglang.sh configs/smollm2_mixed.yaml --model smollm2           # plan + base model
#   bash launch/sglang.sh packed/ --port 30000 -- --tp-size 1 --mem-fraction-static 0.8   # after -- : SGLang's args
#
# Uses PYTHON (default python3), which must import sglang (pip install "sglang==0.5.23"); mpq-serving is
# installed with that Python's torch and transformers pinned, so pip never swaps SGLang's CUDA builds.
# On a CPU-only machine use scripts/install_sglang.sh and `mpq serve ... --engine sglang` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import sglang" || { echo "no sglang in $PY: pip install sglang==0.5.23 (CUDA), or use scripts/install_sglang.sh on CPU" >&2; exit 1; }
if ! "$PY" -c "import importlib.metadata as m; assert 'mpq' in [e.name for e in m.entry_points(group='sglang.srt.plugins')]" 2>/dev/null; then
  PINS=$(mktemp); trap 'rm -f "$PINS"' EXIT
  "$PY" -m pip freeze | grep -E '^(torch|transformers|triton)==' > "$PINS"
  "$PY" -m pip install -q -c "$PINS" -e ".[serve]"
fi
exec "$PY" -m mpq_serving.cli.main serve --engine sglang "$@"
