#!/usr/bin/env bash
# Serve a mixed plan with vLLM or SGLang on a CUDA GPU box: install mpq-serving (its `mpq` plugin) into
# the Python that already has the CUDA engine, pack the plan if needed, and start the engine's server.
#
#   bash launch/serve.sh vllm configs/smollm2_mixed.yaml --model smollm2               # plan + base model
#   bash launch/serve.sh vllm packed/ --port 8000 -- --tensor-parallel-size 2           # after -- : vLLM's args
#   bash launch/serve.sh sglang packed/ --port 30000 -- --tp-size 1 --mem-fraction-static 0.8
#
# Uses PYTHON (default python3), which must import the engine (pip install vllm / "sglang==0.5.23");
# mpq-serving is installed with that Python's torch, transformers and triton pinned, so pip never swaps
# the engine's CUDA builds. On a CPU-only machine use scripts/install_{vllm,sglang}.sh and
# `mpq serve ... --engine vllm|sglang` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${1:?usage: launch/serve.sh vllm|sglang PLAN_OR_PACKED [--model BASE] [-- engine args]}; shift
case "$ENGINE" in
  vllm) GROUP=vllm.general_plugins; INSTALL="pip install vllm" ;;
  sglang) GROUP=sglang.srt.plugins; INSTALL="pip install sglang==0.5.23" ;;
  *) echo "unknown engine '$ENGINE': vllm or sglang" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
"$PY" -c "import $ENGINE" || { echo "no $ENGINE in $PY: $INSTALL (CUDA), or scripts/install_$ENGINE.sh on CPU" >&2; exit 1; }
if ! "$PY" -c "import importlib.metadata as m; assert 'mpq' in [e.name for e in m.entry_points(group='$GROUP')]" 2>/dev/null; then
  PINS=$(mktemp); trap 'rm -f "$PINS"' EXIT
  "$PY" -m pip freeze | grep -E '^(torch|transformers|triton)==' > "$PINS"
  "$PY" -m pip install -q -c "$PINS" -e ".[serve]"
fi
exec "$PY" -m mpq_serving.cli.main serve --engine "$ENGINE" "$@"
