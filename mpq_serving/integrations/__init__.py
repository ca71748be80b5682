"""Serving-engine integrations: `common/` (engine-independent), `vllm/`, `sglang/` (thin adapters)."""
