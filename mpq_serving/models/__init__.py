"""Demo models: SmolLM2 from its shipped gguf (`smollm2.prepare_smollm2`), an MoE upcycled from a dense
model (`upcycle.upcycle`), tiny random models (`tiny.build_tiny`).

The builders import transformers (seconds), so this package does not import them: `mpq --help` stays fast.
"""

# Architectures `tiny.build_tiny` knows (tiny.TINY_CONFIGS has one config per name).
TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3-moe", "qwen2-moe")
