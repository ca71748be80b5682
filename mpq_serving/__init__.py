"""mpq-serving: per-layer and per-expert mixed-precision quantization for LLM serving."""
