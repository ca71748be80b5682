#!/usr/bin/env bash
# Install (idempotent) llama-cpp-python into .venv, built from source for CPU: PyPI ships no CPU wheel.
# Used by `mpq export gguf` checks (tests/export, benchmarks/gguf_export.py) to load our GGUF in llama.cpp.
#
# Build choices (measured on the 2-core CI-class machine, see README "Export"):
#  - GGML_NATIVE=OFF keeps the library portable to any x86-64 with AVX2/FMA/F16C (ggml then enables
#    those by default) instead of -march=native of the build machine; AVX-512 is left out.
#  - LLAVA_BUILD=OFF and no tests/examples/tools/server: the multimodal library and the CLI tools are
#    not used and roughly double the build time.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
[ -x .venv/bin/python ] || { echo "run scripts/install.sh first (.venv missing)" >&2; exit 1; }
if .venv/bin/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "llama-cpp-python $VERSION already installed"
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_BLAS=OFF"
.venv/bin/python -m pip install -q "llama-cpp-python==$VERSION"
