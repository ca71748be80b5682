"""Loading: checkpoints read lazily, plan sources located, modules streamed, packed folders written.

`plan` reads checkpoints and `loaders` resolves plans, so the heavier names are imported on first use.
"""

from .checkpoint import Checkpoint

__all__ = ["Checkpoint", "TrueMixedPrecisionLoader", "load_model", "pack"]


def __getattr__(name: str):
    if name == "TrueMixedPrecisionLoader":
        from .true_mixed import TrueMixedPrecisionLoader

        return TrueMixedPrecisionLoader
    if name == "load_model":
        from .hf_model import load_model

        return load_model
    if name == "pack":
        from .pack import pack

        return pack
    raise AttributeError(name)
