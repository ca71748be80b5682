"""Calibration quantizers: GPTQ, AWQ, SmoothQuant, SparseGPT, layer by layer, written in the tools' layouts."""

from .sequential import QuantizeConfig, QuantizedModel, quantize_model
from .writer import write_checkpoint

__all__ = ["QuantizeConfig", "QuantizedModel", "quantize_model", "write_checkpoint"]
