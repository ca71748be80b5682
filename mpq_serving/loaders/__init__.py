"""Loading: checkpoints read lazily, plan sources located, modules streamed, packed folders written."""

from .checkpoint import Checkpoint
from .true_mixed import TrueMixedPrecisionLoader

__all__ = ["Checkpoint", "TrueMixedPrecisionLoader"]
