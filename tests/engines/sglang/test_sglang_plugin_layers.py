"""The plugin inside SGLang's real layer classes, in-process: QKVParallelLinear, MergedColumnParallelLinear,
RowParallelLinear and FusedMoE, loaded through their own weight loaders as SGLang's model loader does,
and compared with each format's float reference.  Two gloo ranks (TP 2 = EP 2): each keeps only its
local experts, and its tensor-parallel slice of packed gate/up (column) and o_proj (row) weights."""

from __future__ import annotations

import random

import pytest
import torch

from mpq_serving.errors import CheckpointError
from mpq_serving.formats import QuantSpec, get_format
from mpq_serving.loaders.source_config import spec_to_dict
from servers import free_port

HIDDEN, HEAD, HEADS, KV_HEADS, INTER = 128, 32, 4, 2, 64
FP8 = QuantSpec("fp8", granularity="channel")
SPECS = {
    "model.layers.0.self_attn.q_proj": (FP8, (HEADS * HEAD, HIDDEN)),
    "model.layers.0.self_attn.k_proj": (QuantSpec("bf16"), (KV_HEADS * HEAD, HIDDEN)),
    "model.layers.0.self_attn.v_proj": (QuantSpec("mxfp4"), (KV_HEADS * HEAD, HIDDEN)),
    "model.layers.0.self_attn.o_proj": (QuantSpec("int8"), (HIDDEN, HEADS * HEAD)),
    "model.layers.0.mlp.gate_proj": (QuantSpec("gptq_int4", group_size=64), (INTER, HIDDEN)),
    "model.layers.0.mlp.up_proj": (QuantSpec("awq_int4", group_size=64), (INTER, HIDDEN)),
    "model.layers.0.mlp.down_proj": (QuantSpec("bf16"), (HIDDEN, INTER)),
}
EXPERT_SPECS = [FP8, QuantSpec("mxfp4"), QuantSpec("gptq_int4", group_size=64), QuantSpec("int8")]  # expert e


def _expert_modules() -> dict:
    mods = {}
    for e, spec in enumerate(EXPERT_SPECS):
        for proj, shape in (("gate_proj", (INTER, HIDDEN)), ("up_proj", (INTER, HIDDEN)), ("down_proj", (HIDDEN, INTER))):
            mods[f"model.layers.0.mlp.experts.{e}.{proj}"] = (spec, shape)
    return mods


def _checkpoint(specs: dict, seed: int = 0) -> tuple[dict, dict]:
    """Quantized tensors per module (as a packed checkpoint stores them) and its quantization_config."""
    g = torch.Generator().manual_seed(seed)
    tensors, modules = {}, {}
    for name, (spec, shape) in specs.items():
        fmt = get_format(spec.format)
        q = fmt.quantize(torch.randn(shape, generator=g) * 0.05, spec, name=name)
        tensors[name] = q
        modules[name] = {**spec_to_dict(q.spec), "shape": list(shape)}
    return tensors, {"quant_method": "mpq", "format_version": 1, "modules": modules}


def _reference(q, x: torch.Tensor) -> torch.Tensor:
    return x.float() @ get_format(q.format).dequantize(q).t()


@pytest.fixture(scope="module")
def sglang_dist():
    from sglang.test.layer_ut_utils import init_single_process_dist

    init_single_process_dist(master_port=free_port())


def _config(qc: dict):
    from mpq_serving.integrations.sglang.config import MpqConfig

    return MpqConfig.from_config(qc)


def _load(layer, tensors: dict, parts: list[tuple[str, object]]) -> None:
    """What SGLang's model loader does: each checkpoint tensor to `param.weight_loader(param, t[, shard])`."""
    items = [(suffix, t, shard) for name, shard in parts for suffix, t in tensors[name].tensors.items()]
    random.Random(0).shuffle(items)  # checkpoint order is arbitrary
    params = dict(layer.named_parameters())
    for suffix, t, shard in items:
        param = params[suffix]
        param.weight_loader(param, t) if shard is None else param.weight_loader(param, t, shard)
    layer.quant_method.process_weights_after_loading(layer)


def test_plugin_registers_mpq_in_sglang():
    from importlib.metadata import entry_points

    from sglang.srt.arg_groups.choices import QUANTIZATION_CHOICES
    from sglang.srt.layers import quantization

    from mpq_serving.integrations.sglang.config import MpqConfig
    from mpq_serving.integrations.sglang.plugin import register

    assert "mpq" in [ep.name for ep in entry_points(group="sglang.srt.plugins")]
    register()
    register()  # idempotent
    assert quantization.get_quantization_config("mpq") is MpqConfig  # on CPU: the CPU registry
    assert quantization.QUANTIZATION_METHODS["mpq"] is MpqConfig
    assert QUANTIZATION_CHOICES.count("mpq") == 1


def test_qkv_with_three_formats_loads_through_its_weight_loader(sglang_dist):
    from sglang.srt.layers.linear import QKVParallelLinear

    from mpq_serving.integrations.sglang.linear_method import MpqLinearMethod

    tensors, qc = _checkpoint(SPECS)
    layer = QKVParallelLinear(HIDDEN, HEAD, HEADS, KV_HEADS, bias=False, params_dtype=torch.bfloat16,
                              quant_config=_config(qc), prefix="model.layers.0.self_attn.qkv_proj")
    assert isinstance(layer.quant_method, MpqLinearMethod)
    names = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    _load(layer, tensors, list(zip(names, "qkv")))
    x = torch.randn(5, HIDDEN, dtype=torch.bfloat16)
    y = layer(x)[0] if isinstance(layer(x), tuple) else layer(x)
    expected = torch.cat([_reference(tensors[n], x) for n in names], dim=-1)
    torch.testing.assert_close(y.float(), expected, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("kind", ["merged_column", "row"])
def test_gate_up_and_row_parallel_layers(sglang_dist, kind):
    from sglang.srt.layers.linear import MergedColumnParallelLinear, RowParallelLinear

    tensors, qc = _checkpoint(SPECS)
    x = torch.randn(3, HIDDEN, dtype=torch.bfloat16)
    if kind == "merged_column":
        layer = MergedColumnParallelLinear(HIDDEN, [INTER, INTER], bias=False, params_dtype=torch.bfloat16,
                                           quant_config=_config(qc), prefix="model.layers.0.mlp.gate_up_proj")
        names = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
        _load(layer, tensors, list(zip(names, (0, 1))))
    else:
        layer = RowParallelLinear(HEADS * HEAD, HIDDEN, bias=False, params_dtype=torch.bfloat16,
                                  quant_config=_config(qc), prefix="model.layers.0.self_attn.o_proj")
        names = ["model.layers.0.self_attn.o_proj"]
        _load(layer, tensors, [(names[0], None)])
    out = layer(x)
    y = out[0] if isinstance(out, tuple) else out
    expected = torch.cat([_reference(tensors[n], x) for n in names], dim=-1)
    torch.testing.assert_close(y.float(), expected, atol=0.02, rtol=0.02)


def test_all_bf16_layer_gets_sglangs_own_method(sglang_dist):
    from sglang.srt.layers.linear import RowParallelLinear
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    _, qc = _checkpoint(SPECS)
    layer = RowParallelLinear(INTER, HIDDEN, bias=False, params_dtype=torch.bfloat16, quant_config=_config(qc),
                              prefix="model.layers.0.mlp.down_proj")
    assert isinstance(layer.quant_method, UnquantizedLinearMethod)


def test_wrong_shape_and_missing_tensors_are_named(sglang_dist):
    from sglang.srt.layers.linear import QKVParallelLinear

    tensors, qc = _checkpoint(SPECS)
    make = lambda: QKVParallelLinear(HIDDEN, HEAD, HEADS, KV_HEADS, bias=False,  # noqa: E731
                                     params_dtype=torch.bfloat16, quant_config=_config(qc),
                                     prefix="model.layers.0.self_attn.qkv_proj")
    layer = make()
    scale = layer.weight_scale
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight_scale: shape"):
        scale.weight_loader(scale, torch.ones(7, 1), "q")
    layer = make()
    v = tensors["model.layers.0.self_attn.v_proj"]
    params = dict(layer.named_parameters())
    for name, shard in (("model.layers.0.self_attn.q_proj", "q"), ("model.layers.0.self_attn.k_proj", "k")):
        for suffix, t in tensors[name].tensors.items():
            params[suffix].weight_loader(params[suffix], t, shard)
    params["weight_packed"].weight_loader(params["weight_packed"], v.tensors["weight_packed"], "v")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: model\.layers\.0\.self_attn\.v_proj\.weight_scale"):
        layer.quant_method.process_weights_after_loading(layer)


def _moe_layer(qc: dict):
    from sglang.srt.layers.moe.fused_moe_triton import FusedMoE

    return FusedMoE(num_experts=len(EXPERT_SPECS), top_k=2, hidden_size=HIDDEN, intermediate_size=INTER, layer_id=0,
                    params_dtype=torch.bfloat16, quant_config=_config(qc), prefix="model.layers.0.mlp.experts")


def _load_experts(layer, tensors: dict) -> None:
    """As SGLang's Qwen/Llama-MoE loaders do: FusedMoE.make_expert_params_mapping, then the param's loader."""
    from sglang.srt.layers.moe.fused_moe_triton import FusedMoE

    mapping = FusedMoE.make_expert_params_mapping(ckpt_gate_proj_name="gate_proj", ckpt_down_proj_name="down_proj",
                                                  ckpt_up_proj_name="up_proj", num_experts=len(EXPERT_SPECS))
    params = dict(layer.named_parameters())
    items = [(f"{m}.{s}", t) for m, q in tensors.items() for s, t in q.tensors.items()]
    random.Random(1).shuffle(items)
    for name, tensor in items:
        for param_name, weight_name, expert_id, shard_id in mapping:
            if weight_name in name:
                target = name.split("model.layers.0.mlp.experts.")[-1].replace(
                    weight_name.removeprefix("experts."), param_name.removeprefix("experts."))
                param = params[target]
                param.weight_loader(param, tensor, target, shard_id=shard_id, expert_id=expert_id)
                break
        else:
            raise AssertionError(f"no expert mapping for {name}")
    layer.quant_method.process_weights_after_loading(layer)


def _expert_reference(tensors: dict, e: int, x: torch.Tensor) -> torch.Tensor:
    p = f"model.layers.0.mlp.experts.{e}."
    h = torch.nn.functional.silu(_reference(tensors[p + "gate_proj"], x)) * _reference(tensors[p + "up_proj"], x)
    return _reference(tensors[p + "down_proj"], h)


def test_fused_moe_with_four_expert_formats(sglang_dist):
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    from mpq_serving.integrations.sglang.moe_method import MpqFusedMoEMethod

    tensors, qc = _checkpoint(_expert_modules())
    layer = _moe_layer(qc)
    assert isinstance(layer.quant_method, MpqFusedMoEMethod)
    _load_experts(layer, tensors)
    assert len(layer.mpq_experts.format_groups) == 4
    x = torch.randn(6, HIDDEN, dtype=torch.bfloat16)
    ids = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0], [0, 2], [1, 3]], dtype=torch.int32)
    w = torch.softmax(torch.randn(6, 2), dim=-1)
    out = layer.forward(x, StandardTopKOutput(topk_weights=w, topk_ids=ids, router_logits=torch.zeros(6, 4)))
    expected = torch.stack([sum(w[t, k] * _expert_reference(tensors, int(ids[t, k]), x[t:t + 1])[0]
                                for k in range(2)) for t in range(6)])
    torch.testing.assert_close(out.float(), expected, atol=0.02, rtol=0.05)


def _ep_rank(rank: int, port: int, results) -> None:
    """One expert-parallel rank of two: builds FusedMoE, loads all experts, reports what it kept."""
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "SGLANG_USE_CPU_ENGINE": "1"})
    from sglang.srt.distributed.parallel_state import init_distributed_environment, initialize_model_parallel
    from sglang.test.test_utils import publish_build_topology

    init_distributed_environment(world_size=2, rank=rank, local_rank=rank, backend="gloo")
    publish_build_topology(world_rank=rank, tp_size=2, ep_size=2, pp_size=1, device="cpu")
    initialize_model_parallel(backend="gloo")
    tensors, qc = _checkpoint(_expert_modules())
    layer = _moe_layer(qc)
    _load_experts(layer, tensors)
    x = torch.randn(4, HIDDEN, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(3))
    kept = []
    for local, expert in enumerate(layer.mpq_experts.experts):
        ids = torch.full((4, 1), local)
        y = layer.mpq_experts(x, ids, torch.ones(4, 1))
        ok = [torch.allclose(y.float(), _expert_reference(tensors, g, x), atol=0.02, rtol=0.05) for g in range(4)]
        kept.append((expert.gate_proj.spec.format, ok.index(True) if any(ok) else -1))
    results[rank] = kept
    results[f"tp{rank}"] = _tensor_parallel_linears(rank, x)


def _tensor_parallel_linears(rank: int, x: torch.Tensor) -> tuple[bool, bool]:
    """Under TP 2: gate/up (gptq / awq) keep this rank's rows; o_proj (int8) its columns, all-reduced."""
    from sglang.srt.layers.linear import MergedColumnParallelLinear, RowParallelLinear

    tensors, qc = _checkpoint(SPECS)
    gate_up = MergedColumnParallelLinear(HIDDEN, [INTER, INTER], bias=False, params_dtype=torch.bfloat16,
                                         quant_config=_config(qc), prefix="model.layers.0.mlp.gate_up_proj")
    names = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    _load(gate_up, tensors, list(zip(names, (0, 1))))
    half = INTER // 2
    expected = torch.cat([_reference(tensors[n], x)[:, rank * half:(rank + 1) * half] for n in names], dim=-1)
    y = gate_up(x)
    column_ok = torch.allclose((y[0] if isinstance(y, tuple) else y).float(), expected, atol=0.02, rtol=0.02)

    o_proj = RowParallelLinear(HEADS * HEAD, HIDDEN, bias=False, params_dtype=torch.bfloat16,
                               quant_config=_config(qc), prefix="model.layers.0.self_attn.o_proj")
    _load(o_proj, tensors, [("model.layers.0.self_attn.o_proj", None)])
    cols = HEADS * HEAD // 2
    y = o_proj(x[:, rank * cols:(rank + 1) * cols].contiguous())
    row_ok = torch.allclose((y[0] if isinstance(y, tuple) else y).float(),
                            _reference(tensors["model.layers.0.self_attn.o_proj"], x), atol=0.03, rtol=0.03)
    return column_ok, row_ok


def test_two_ranks_keep_their_experts_and_tensor_parallel_slices():
    import torch.multiprocessing as mp

    port = free_port()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_ep_rank, args=(port, results), nprocs=2, start_method="spawn", join=True)
        kept = dict(results)
    formats = [s.format for s in EXPERT_SPECS]
    assert kept[0] == [(formats[0], 0), (formats[1], 1)]
    assert kept[1] == [(formats[2], 2), (formats[3], 3)]
    assert kept["tp0"] == kept["tp1"] == (True, True)  # tensor parallel 2: column- and row-parallel slices


def test_quantized_lm_head_is_refused_naming_it(sglang_dist):
    """SGLang's lm_head is not a linear layer: a plan that quantizes it must fail, not load int8 as bf16."""
    from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead

    tensors, qc = _checkpoint({"lm_head": (QuantSpec("int8"), (256, HIDDEN))})
    with pytest.raises(ValueError, match=r"lm_head: the plan gives it int8"):
        ParallelLMHead(256, HIDDEN, params_dtype=torch.bfloat16, quant_config=_config(qc), prefix="lm_head")
