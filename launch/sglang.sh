#!/usr/bin/env bash
# SGLang on a CUDA box: see launch/serve.sh.
exec bash "$(dirname "$0")/serve.sh" sglang "$@"
