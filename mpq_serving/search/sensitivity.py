"""How much each weight, alone in each candidate format, raises the calibration text's loss.

Two quantities per (weight, format), in nats per calibration position, with only that weight quantized:
`kl`, the KL divergence from the bf16 model's next-token distribution to the quantized model's, and
`linear`, what the change of the text's own loss (its cross-entropy: what perplexity measures) adds
to it. The budget search minimizes either (`--objective`):

- `nll` (default) = kl + linear: the expected change of the text's loss. KL alone counts every move
  of the distribution as harm, also moves among tokens the text never uses; the first-order term
  tells which errors the text's own tokens feel. Measured on SmolLM2 (wiki_eval, 8192 tokens, 64
  calibration windows): at 4.31 avg bits the nll optimum has PPL 25.87 where the kl optimum has 28.93
  (and uniform awq_int4 27.28); at 4.50, 25.11 vs 26.03; at 5.99, 22.77 vs 23.09 (kl with 16 windows
  there; at 4.31 its PPL is the same with 16 and 64). The first-order
  term is a sum over calibration tokens and noisy (the model is near a minimum of its training loss,
  so its mean is small), hence the 64 windows by default: with 16 the optimum's predicted loss came
  out negative, a sign the solver was picking noise.
- `kl`: the safe second-order quantity: zero with a zero gradient at the bf16 weights, positive for
  every perturbation.

Two ways to get them (`--sensitivity`):

- `measured`: one forward pass per (weight, format): exact, and the yardstick for the estimate, but
  4 formats x 210 SmolLM2 weights is ~800 passes, far too slow on a CPU (and 720 experts more).
- `fisher` (the default): one forward and two backward passes per batch over the calibration tokens,
  then one `ΔW H ΔWᵀ` product per (weight, format).
  KL ≈ ½ Δyᵀ F Δy, with Δy = x ΔWᵀ the change of the layer's output and F the Fisher information of the
  model's distribution w.r.t. that output, estimated as g gᵀ where g is the gradient of
  log p(ŷ) for labels ŷ sampled from the bf16 model itself (so E[g gᵀ] is the Fisher, not the
  "empirical Fisher" of the text's labels). Keeping F's diagonal (BRECQ's Fisher-weighted output
  error) gives ½ Σ_t Σ_j g_tj² (x_t·Δw_j)²; factoring g_tj² ≈ u_t v_j / S through its token and
  channel marginals (u_t = Σ_j g_tj², v_j = Σ_t g_tj², S = Σ u) turns it into statistics of fixed size
  per weight: cost = ½ Σ_j (v_j / S) Δw_jᵀ H̃ Δw_j with H̃ = Σ_t u_t x_t x_tᵀ, a GPTQ-like Hessian whose
  tokens are weighted by how much the output distribution depends on them. The first-order term is
  −⟨∇_W log p(text), ΔW⟩ from the second backward pass (the text's own next tokens as labels). Every
  format of a weight is then scored from the same statistics. `benchmarks/search_compare.py proxy`
  checks the estimates against measured values.

Experts: an expert's statistics come only from the tokens the router sends to it, and its output
gradient carries the routing weight, so an expert's cost is its usage frequency times its per-token
cost (the usage, routed tokens / calibration tokens, is recorded per expert). An expert the router
never picked on the calibration data costs 0: the data give no reason to keep it precise.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import MPQError
from ..formats import QuantSpec, get_format
from ..plan import Plan, SpecFields
from ..plan.model_weights import LinearWeight, linear_weights
from .common import candidate_spec, fits

METHODS = ("fisher", "measured")
OBJECTIVES = ("nll", "kl")
FIXED = ("lm_head", "router")  # protected categories: kept bf16, not scored
CACHE_VERSION = 2


@dataclass
class SensitivityTable:
    """Per weight and candidate format (formats that do not fit are absent), in nats per calibration
    position: `kl`, the KL divergence from the bf16 model, and `linear`, what the change of the text's
    loss adds to it (its first-order term for `fisher`, measured loss change − KL for `measured`)."""

    key: dict[str, Any]
    kl: dict[str, dict[str, float]]
    linear: dict[str, dict[str, float]]
    usage: dict[str, float] = field(default_factory=dict)  # expert weight -> routed tokens / tokens
    seconds: float = 0.0

    def cost(self, weight: str, fmt: str, objective: str) -> float:
        """The predicted loss of putting `weight` in `fmt`: `kl`, or `nll` (= kl + linear)."""
        return self.kl[weight][fmt] + (self.linear[weight][fmt] if objective == "nll" else 0.0)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": CACHE_VERSION, "key": self.key, "seconds": round(self.seconds, 2),
                "usage": self.usage, "kl": self.kl, "linear": self.linear}
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> SensitivityTable | None:
        """The table in `path`, or None when absent or written by another version (then recomputed)."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        if data.get("version") != CACHE_VERSION:
            return None
        return cls(data["key"], data["kl"], data["linear"], data.get("usage", {}), data.get("seconds", 0.0))


@dataclass(frozen=True)
class CalibrationSettings:
    """What a sensitivity table depends on besides the model and the formats."""

    method: str = "fisher"
    nsamples: int = 64
    seq_len: int = 256
    seed: int = 0
    text: str = "wiki_calib"
    group_size: int = 128  # preferred group of the grouped int4 formats (see candidate_spec)
    batch_size: int = 2
    device: str = "cpu"
    stats_gib: float | None = None  # memory for the Fisher statistics per set of passes (not part of the cache
    # key); None: half of what the machine has available now (`default_stats_gib`)

    def check(self) -> None:
        if self.method not in METHODS:
            raise MPQError(f"--sensitivity {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.nsamples < 1 or self.seq_len < 2:
            raise MPQError(f"need --nsamples >= 1 and --seq-len >= 2, got {self.nsamples} and {self.seq_len}")
        if self.device != "cpu" and not (self.device.startswith("cuda") and torch.cuda.is_available()):
            raise MPQError(f"--device {self.device!r}: use cpu, or cuda[:N] on a machine with a CUDA GPU")


def candidates(weight: LinearWeight, formats: Iterable[str], group_size: int) -> dict[str, QuantSpec]:
    """format -> spec for every candidate format that fits this weight's shape."""
    out = {}
    for fmt in formats:
        spec = candidate_spec(fmt, weight.shape[1], group_size)
        if fits(spec, weight.shape):
            out[fmt] = spec
    return out


def scored_weights(weights: list[LinearWeight]) -> list[LinearWeight]:
    """The weights a search decides: all but the protected ones (lm_head, routers), which stay bf16."""
    return [w for w in weights if w.category not in FIXED]


def cache_key(model_dir: Path, settings: CalibrationSettings) -> dict[str, Any]:
    """Identity of a table: the model's files (path, sizes, times) and the calibration settings."""
    files = sorted(model_dir.glob("*.safetensors"))
    fingerprint = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return {"model": str(model_dir.resolve()), "files": fingerprint, "method": settings.method,
            "nsamples": settings.nsamples, "seq_len": settings.seq_len, "seed": settings.seed,
            "text": settings.text, "group_size": settings.group_size}


def cache_path(folder: Path, model_dir: Path, settings: CalibrationSettings) -> Path:
    digest = hashlib.sha256(json.dumps(cache_key(model_dir, settings), sort_keys=True).encode()).hexdigest()[:10]
    return folder / f"{model_dir.name}.{settings.method}.{digest}.sensitivity.json"


class CalibrationModel:
    """The model in float32 with every linear weight (each expert's too) as a plain nn.Linear.

    Loaded through `load_model` with an all-bf16 plan, so MoE experts are separate modules, then each
    MixedPrecisionLinear is swapped for an nn.Linear holding the same weight: autograd and in-place
    weight swaps (for measured KL) then work on every architecture `load_model` supports.
    """

    def __init__(self, model_dir: Path, device: str = "cpu", progress: bool = True):
        from ..layers.linear import MixedPrecisionLinear
        from ..loaders.hf_model import load_model

        self.model = load_model(Plan(default=SpecFields(wq="bf16")), model_dir, dtype=torch.float32,
                                progress=progress)
        for path, module in list(self.model.named_modules()):
            if isinstance(module, MixedPrecisionLinear):
                linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
                linear.weight = nn.Parameter(get_format(module.spec.format).dequantize(module.qtensor),
                                             requires_grad=False)
                if module.bias is not None:
                    linear.bias = nn.Parameter(module.bias.float(), requires_grad=False)
                parent, _, leaf = path.rpartition(".")
                setattr(self.model.get_submodule(parent) if parent else self.model, leaf, linear)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.to(device)
        self.device = torch.device(device)
        self.weights = linear_weights(model_dir)
        self.modules = _modules_by_weight(self.model, [w.name for w in self.weights])

    def logits(self, ids: torch.Tensor, embeds: torch.Tensor | None = None) -> torch.Tensor:
        if embeds is None:
            embeds = self.model.get_input_embeddings()(ids.to(self.device))
        return self.model(inputs_embeds=embeds, use_cache=False).logits.float()


def _modules_by_weight(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Checkpoint weight name -> module of the loaded model, renamed as load_model renames them."""
    from ..loaders.hf_model import module_path

    return {name: model.get_submodule(module_path(model, name)) for name in names}


class _WeightStats:
    """Per weight, over the calibration tokens: H̃ = Σ u_t x_t x_tᵀ, v = Σ_t g_t², S = Σ u_t from sampled
    labels (the Fisher term), the gradient of log p(true next token) w.r.t. the weight (the first-order
    term of the loss change), and how many tokens reached the weight."""

    def __init__(self, in_features: int, out_features: int, device: torch.device):
        self.h = torch.zeros(in_features, in_features, device=device)
        self.v = torch.zeros(out_features, device=device)
        self.grad = torch.zeros(out_features, in_features, device=device)
        self.tokens = 0

    @torch.no_grad()
    def add_fisher(self, x: torch.Tensor, g: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        g2 = g.reshape(-1, g.shape[-1]).float().square()
        u = g2.sum(dim=1)
        self.h.addmm_((x * u[:, None]).t(), x)
        self.v += g2.sum(dim=0)
        self.tokens += x.shape[0]

    @torch.no_grad()
    def add_gradient(self, x: torch.Tensor, g: torch.Tensor) -> None:
        self.grad.addmm_(g.reshape(-1, g.shape[-1]).float().t(), x.reshape(-1, x.shape[-1]).float())

    def quadratic(self, delta: torch.Tensor) -> float:
        """½ Σ_j (v_j / S) Δw_jᵀ H̃ Δw_j: the KL estimate, in nats summed over the calibration tokens."""
        total = self.v.sum()
        if self.tokens == 0 or total <= 0:
            return 0.0
        per_row = ((delta @ self.h) * delta).sum(dim=1)
        return 0.5 * float((per_row * self.v).sum() / total)

    def linear(self, delta: torch.Tensor) -> float:
        """−⟨∇_W log p(text), ΔW⟩: the first-order change of the text's loss, summed over its tokens."""
        return -float((self.grad * delta).sum())


def default_stats_gib() -> float:
    """Half of the memory available now, at least 1 GiB. Each extra part costs a whole set of calibration
    passes (an upcycled SmolLM2-MoE: 6 parts at 1 GiB, ~30 min each on 2 cores, against one part at
    6 GiB), so the statistics take what memory there is."""
    import psutil

    return max(1.0, psutil.virtual_memory().available / 2**30 / 2)


def statistics_parts(weights: list[LinearWeight], gib: float) -> list[list[LinearWeight]]:
    """The weights split, in order, into parts whose statistics (H̃ in x in, the gradient out x in, float32)
    fit in `gib` GiB each: one set of calibration passes per part. An upcycled SmolLM2-MoE's 720 experts
    need ~5.4 GiB at once; the passes are deterministic (the sampled labels re-seeded each time), so
    the parts together give exactly the one-pass table."""
    limit = gib * 2**30
    parts: list[list[LinearWeight]] = [[]]
    size = 0.0
    for w in weights:
        need = 4.0 * (w.shape[1] * w.shape[1] + w.shape[0] * w.shape[1] + w.shape[0])
        if parts[-1] and size + need > limit:
            parts.append([])
            size = 0.0
        parts[-1].append(w)
        size += need
    return parts


def _batches(tokens: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(tokens.split(batch_size))


def collect_statistics(calib: CalibrationModel, weights: list[LinearWeight], tokens: torch.Tensor, batch_size: int,
                       seed: int, progress: bool = True) -> dict[str, _WeightStats]:
    """One forward and two backward passes per batch (labels sampled from the model, then the text's own
    next tokens), through the activations only (no weight gradients); statistics for every weight.
    Every position but the last (which has no next token in its window) counts."""
    stats = {w.name: _WeightStats(w.shape[1], w.shape[0], calib.device) for w in weights}
    mode = {"fisher": True}

    def hook_for(name: str):
        def forward_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach()
            output.register_hook(lambda g: stats[name].add_fisher(x, g) if mode["fisher"]
                                 else stats[name].add_gradient(x, g))
        return forward_hook

    handles = [calib.modules[w.name].register_forward_hook(hook_for(w.name)) for w in weights]
    generator = torch.Generator(device=calib.device).manual_seed(seed)
    try:
        for batch in tqdm(_batches(tokens, batch_size), desc="calibration passes", unit="batch",
                          disable=not progress):
            batch = batch.to(calib.device)
            embeds = calib.model.get_input_embeddings()(batch).requires_grad_(True)
            logp = torch.log_softmax(calib.logits(batch, embeds)[:, :-1], dim=-1)
            flat = logp.reshape(-1, logp.shape[-1])
            with torch.no_grad():
                sampled = torch.multinomial(flat.exp(), 1, generator=generator)
            mode["fisher"] = True
            torch.autograd.grad(flat.gather(1, sampled).sum(), embeds, retain_graph=True)
            mode["fisher"] = False
            torch.autograd.grad(flat.gather(1, batch[:, 1:].reshape(-1, 1)).sum(), embeds)
    finally:
        for h in handles:
            h.remove()
    return stats


def quantization_error(weight: torch.Tensor, spec: QuantSpec, name: str) -> torch.Tensor:
    """deq(Q(W)) − W for a float32 weight that holds bf16 values (quantized from bf16, as the loader does)."""
    fmt = get_format(spec.format)
    w16 = weight.detach().to("cpu", torch.bfloat16)
    return (fmt.dequantize(fmt.quantize(w16, spec, name=name)) - w16.float()).to(weight.device)


def reference_logprobs(calib: CalibrationModel, tokens: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The bf16 model's log-probabilities at every position that has a next token."""
    with torch.no_grad():
        return [torch.log_softmax(calib.logits(b)[:, :-1], dim=-1) for b in _batches(tokens, batch_size)]


def measured_change(calib: CalibrationModel, tokens: torch.Tensor, reference: list[torch.Tensor], batch_size: int,
                    changes: dict[str, QuantSpec]) -> tuple[float, float]:
    """(KL(bf16 ‖ quantized), increase of the text's loss), in nats per position, with the weights in
    `changes` quantized (then restored)."""
    saved = {}
    try:
        for name, spec in changes.items():
            weight = calib.modules[name].weight
            saved[name] = weight.data.clone()
            weight.data += quantization_error(weight.data, spec, name)
        kl, loss, count = 0.0, 0.0, 0
        with torch.no_grad():
            for batch, ref in zip(_batches(tokens, batch_size), reference, strict=True):
                logq = torch.log_softmax(calib.logits(batch)[:, :-1], dim=-1)
                kl += float((ref.exp() * (ref - logq)).sum())
                target = batch[:, 1:, None].to(calib.device)
                loss += float((ref.gather(-1, target) - logq.gather(-1, target)).sum())
                count += ref.shape[0] * ref.shape[1]
        return kl / count, loss / count
    finally:
        for name, data in saved.items():
            calib.modules[name].weight.data = data


def compute_sensitivities(model_dir: Path, formats: list[str], settings: CalibrationSettings, tokens: torch.Tensor,
                          progress: bool = True) -> SensitivityTable:
    """The table for every scored weight of `model_dir` and every format in `formats` that fits it."""
    settings.check()
    started = time.perf_counter()
    calib = CalibrationModel(model_dir, settings.device, progress)
    weights = scored_weights(calib.weights)
    per_weight = {w.name: candidates(w, formats, settings.group_size) for w in weights}
    positions = tokens.shape[0] * (tokens.shape[1] - 1)
    kl: dict[str, dict[str, float]] = {w.name: {} for w in weights}
    linear: dict[str, dict[str, float]] = {w.name: {} for w in weights}
    usage: dict[str, float] = {}
    if settings.method == "fisher":
        for part in statistics_parts(weights, settings.stats_gib or default_stats_gib()):
            stats = collect_statistics(calib, part, tokens, settings.batch_size, settings.seed, progress)
            for w in tqdm(part, desc="scoring formats", unit="weight", disable=not progress):
                weight = calib.modules[w.name].weight
                for fmt, spec in per_weight[w.name].items():
                    delta = quantization_error(weight, spec, w.name)
                    kl[w.name][fmt] = stats[w.name].quadratic(delta) / positions
                    linear[w.name][fmt] = stats[w.name].linear(delta) / positions
                if w.category == "expert":
                    usage[w.name] = stats[w.name].tokens / tokens.numel()
            del stats
    else:
        reference = reference_logprobs(calib, tokens, settings.batch_size)
        jobs = [(w.name, fmt, spec) for w in weights for fmt, spec in per_weight[w.name].items()]
        for name, fmt, spec in tqdm(jobs, desc="measuring", unit="candidate", disable=not progress):
            kl[name][fmt], loss = measured_change(calib, tokens, reference, settings.batch_size, {name: spec})
            linear[name][fmt] = loss - kl[name][fmt]
    key = {**cache_key(model_dir, settings), "formats": sorted(formats)}
    return SensitivityTable(key, kl, linear, usage, time.perf_counter() - started)


def load_or_compute(model_dir: Path, formats: list[str], settings: CalibrationSettings, cache: Path | None,
                    tokenizer=None, progress: bool = True) -> tuple[SensitivityTable, bool]:
    """The cached table when it covers `formats` and was made with these settings, else a fresh one
    (over the cached formats too, so the cache only grows); True when it came from the cache."""
    from .common import calibration_tokens

    key = cache_key(model_dir, settings)
    cached = SensitivityTable.load(cache) if cache is not None else None
    if cached is not None and {k: v for k, v in cached.key.items() if k != "formats"} == json.loads(json.dumps(key)):
        if set(formats) <= set(cached.key.get("formats", [])):
            return cached, True
        formats = sorted(set(formats) | set(cached.key.get("formats", [])))
    if tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError) as e:
            raise MPQError(f"{model_dir}: no tokenizer to cut calibration text with ({e})") from None
    tokens = calibration_tokens(tokenizer, settings.nsamples, settings.seq_len, settings.text, settings.seed)
    table = compute_sensitivities(model_dir, formats, settings, tokens, progress)
    if cache is not None:
        table.save(cache)
    return table, False
