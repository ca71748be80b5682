#!/usr/bin/env bash
# Kernel roofline on a CUDA GPU box: check the compiled Triton kernels against the torch references, then
# time every format at batch 1, 4, 16, 64, 256 on 4096x4096, 4096x14336, 14336x4096 and a 64-expert
# top-8 mixed-format MoE layer (`mpq bench kernels`), writing a table and benchmarks/results/kernels-<gpu>.json.
#
#   bash launch/gpu_bench.sh                      # everything
#   bash launch/gpu_bench.sh --batches 1,16       # extra arguments go to `mpq bench kernels`
#
# Uses the Python that already has CUDA torch and Triton (PYTHON=...), and installs mpq-serving into it
# with that torch pinned, so pip never swaps the CUDA build for another.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device visible'"
if ! "$PY" -c "import mpq_serving.cli.main" 2>/dev/null; then
  TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)")
  "$PY" -m pip install -q -e ".[test]" "torch==$TORCH_VERSION" "triton==$("$PY" -c 'import triton; print(triton.__version__)')"
fi
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
mkdir -p benchmarks/results
MPQ_TRITON_TEST_DEVICE=cuda "$PY" -m pytest -q tests/kernels/triton
"$PY" -m mpq_serving.cli.main bench kernels --device cuda --large --json "benchmarks/results/kernels-$GPU.json" "$@"
