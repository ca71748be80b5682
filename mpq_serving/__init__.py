"""mpq-serving: per-layer and per-expert mixed-precision quantization for LLM serving."""

__all__ = ["load_model"]


def load_model(*args, **kwargs):
    """See `mpq_serving.loaders.hf_model.load_model`: a transformers model with mixed-precision modules."""
    from .loaders.hf_model import load_model as _load_model

    return _load_model(*args, **kwargs)
