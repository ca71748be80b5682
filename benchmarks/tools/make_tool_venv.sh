#!/usr/bin/env bash
# A throw-away venv for one third-party quantization tool, for the side-by-side benchmarks:
#   bash benchmarks/tools/make_tool_venv.sh gptqmodel /tmp/venv-gptqmodel
# torch 2.13.0 (the CPU wheel) first, so the tool's own torch requirement installs nothing more.
set -euo pipefail
tool=$1; dir=$2
python3 -m venv "$dir"
"$dir/bin/pip" install -q torch==2.13.0
case "$tool" in
  gptqmodel) GPTQMODEL_CPU_WORKERS=2 "$dir/bin/pip" install -q gptqmodel==7.6.0 ;;
  llmcompressor) "$dir/bin/pip" install -q llmcompressor==0.14.0.1 ;;
  autoawq) "$dir/bin/pip" install -q autoawq==0.2.9 transformers==4.51.3 ;;
  *) echo "unknown tool $tool (gptqmodel, llmcompressor, autoawq)" >&2; exit 2 ;;
esac
echo "$dir/bin/python"
