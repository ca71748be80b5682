#!/usr/bin/env bash
# vLLM on a CUDA box: see launch/serve.sh.
exec bash "$(dirname "$0")/serve.sh" vllm "$@"
