"""SmoothQuant scales, and the calibration pass the layer-wise searches (seeds 002, 003) share.

Both seeds judge a numeric format by each linear layer's own output error on calibration inputs
(layer-wise, as GPTQ and SmoothQuant do): every layer sees the unquantized model's activations, so
one forward pass over all calibration tokens hands every layer all of its inputs at once.
`CalibrationTaps` loads the model through `load_model` with an all-bf16 plan in float32, so each MoE
expert is a module of its own, and maps each module back to the checkpoint name a plan uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import MPQError
from ..formats import get_format
from ..layers.linear import MixedPrecisionLinear
from ..layers.moe import MixedPrecisionExperts
from ..loaders.hf_model import _EXPERT, _ROLE, _renamer, load_model
from ..plan import Plan, is_protected
from ..plan.model_weights import LinearWeight, linear_weights

Observer = Callable[[str, torch.Tensor], None]


def smooth_scales(x_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel s = max|X_j|^α / max|W_:,j|^(1-α) (clamped at 1e-5, as the paper's code).

    (X / s) (W · s)ᵀ = X Wᵀ exactly, while activation outlier channels are shrunk and the weight
    columns grown: α moves quantization difficulty from activations (α → 1) to weights (α → 0).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    if x_absmax.shape != (weight.shape[1],):
        raise ValueError(f"SmoothQuant: {x_absmax.shape[0]} activation maxima for a weight with "
                         f"{weight.shape[1]} input channels")
    w_absmax = weight.abs().amax(0).clamp_min(1e-5)
    return (x_absmax.clamp_min(1e-5).pow(alpha) / w_absmax.pow(1.0 - alpha)).clamp_min(1e-5)


def searched_weights(model_dir: str | Path) -> list[LinearWeight]:
    """The linear weights a search assigns: all but the protected ones (lm_head, routers), which stay bf16."""
    return [w for w in linear_weights(model_dir) if not is_protected(w.name)]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CalibrationTaps:
    """The float32 model with a hook on every searched weight that passes its input rows [n, in] on.

    `dense_experts=True` runs every expert on every token of its layer, with routing weight 0 where the
    router did not pick it (so the layer's output is unchanged): expert activations then share their
    tokens with every other layer, which statistics *between* layers (mutual information) need.
    """

    def __init__(self, model_dir: str | Path, weights: list[LinearWeight], device: torch.device | None = None,
                 dense_experts: bool = False):
        self.device = device or default_device()
        self.model = load_model(Plan(), model_dir, dtype=torch.float32, progress=False).to(self.device)
        rename = _renamer(self.model)
        self.modules: dict[str, MixedPrecisionLinear] = {}
        for w in weights:
            target = rename(w.name)
            m = _EXPERT.match(target)
            if m:  # MixedPrecisionExperts keeps its experts in `.experts`, with gate/up/down_proj
                target = f"{m['prefix']}.experts.{m['e']}.{_ROLE[m['proj']]}_proj"
            module = self.model.get_submodule(target)
            if not isinstance(module, MixedPrecisionLinear):
                raise MPQError(f"{w.name}: expected a linear layer at {target}, found {type(module).__name__}")
            self.modules[w.name] = module
        self.dense_experts = dense_experts

    def weight(self, name: str) -> torch.Tensor:
        """The unquantized weight [out, in] in float32."""
        module = self.modules[name]
        return get_format(module.spec.format).dequantize(module.qtensor).to(self.device)

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, observe: Observer, desc: str = "calibration", progress: bool = True) -> set[str]:
        """One forward pass over `tokens` [batch, seq]; returns the names observed (unrouted experts are not)."""
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ValueError(f"calibration tokens must be [nsamples, seq_len >= 2], got shape {tuple(tokens.shape)}")
        seen: set[str] = set()
        handles = []
        bar = tqdm(total=len(self.modules), desc=desc, unit="layer", disable=not progress)

        def hook(name: str):
            def fn(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float32)
                if x.shape[0]:
                    observe(name, x)
                    if name not in seen:
                        seen.add(name)
                        bar.update()
            return fn

        try:
            handles = [m.register_forward_pre_hook(hook(n)) for n, m in self.modules.items()]
            if self.dense_experts:
                handles += [m.register_forward_pre_hook(_route_to_all_experts)
                            for m in self.model.modules() if isinstance(m, MixedPrecisionExperts)]
            self.model.base_model(input_ids=tokens.to(self.device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
            bar.close()
        return seen


def _route_to_all_experts(module: MixedPrecisionExperts, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Every token to every expert, weight 0 where the router did not pick the expert."""
    hidden, top_k_index, top_k_weights = args
    n, experts = hidden.shape[0], module.num_experts
    dense = torch.zeros(n, experts, dtype=top_k_weights.dtype, device=hidden.device)
    dense.scatter_(1, top_k_index, top_k_weights)
    return hidden, torch.arange(experts, device=hidden.device).expand(n, experts), dense
