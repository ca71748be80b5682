"""`mpq quantize`: calibrate and quantize a model under a plan (RTN, GPTQ, AWQ; SmoothQuant, SparseGPT)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import MPQError
from .common import OVERWRITE, fail, resolve_model


def quantize(
    model: str = typer.Argument(..., help="bf16 / fp16 model folder, or a demo name (smollm2, smollm2-moe)."),
    plan: Path = typer.Option(..., "--plan", help="Plan file (.json or .yaml): the format of every weight."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder."),
    method: str = typer.Option("gptq", "--method", help="rtn | gptq | awq."),
    calib: str = typer.Option("wiki_calib", "--calib", help="Calibration text file, or a shipped text name."),
    nsamples: int = typer.Option(128, "--nsamples", min=1, help="Calibration windows."),
    seq_len: int = typer.Option(512, "--seq-len", min=2, help="Tokens per calibration window."),
    damp: float = typer.Option(0.01, "--damp", help="GPTQ / SparseGPT damping, a fraction of mean(diag H)."),
    act_order: bool = typer.Option(False, "--act-order", help="GPTQ act-order (desc_act, g_idx) for gptq_int4 weights."),
    static_groups: bool = typer.Option(False, "--static-groups", help="With --act-order: contiguous groups, no g_idx (loads in vLLM 0.32, which refuses desc_act)."),
    smooth_alpha: float | None = typer.Option(None, "--smooth-alpha", help="SmoothQuant alpha for activation-quantized (aq) layers."),
    sparsity: float = typer.Option(0.0, "--sparsity", help="SparseGPT unstructured sparsity, e.g. 0.5."),
    sparsity_pattern: str | None = typer.Option(None, "--sparsity-pattern", help="N:M structured sparsity, e.g. 2:4."),
    layout: str = typer.Option("mpq", "--layout", help="mpq (packed mixed) | gptq | awq (plain checkpoints stock engines load)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration window positions."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Quantize MODEL layer by layer under PLAN and write OUTPUT (records how each layer was made)."""
    from ..outputs import check_output_folder
    from ..plan import load_plan
    from ..quantize import QuantizeConfig, quantize_model, write_checkpoint
    from ..quantize.writer import checkpoint_kind

    folder = resolve_model(model)
    try:
        loaded_plan = load_plan(plan)
        config = QuantizeConfig(method=method, nsamples=nsamples, seq_len=seq_len, calib=calib, damp=damp,
                                act_order=act_order, static_groups=static_groups, smooth_alpha=smooth_alpha, sparsity=sparsity,
                                sparsity_pattern=sparsity_pattern, seed=seed)
        check_output_folder(output, checkpoint_kind(layout), overwrite=overwrite, inputs=[folder])  # before minutes of calibration
        result = quantize_model(folder, loaded_plan, config)
        out = write_checkpoint(result, loaded_plan, output, layout=layout, overwrite=overwrite)
    except MPQError as e:
        fail(str(e))
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    methods: dict[str, int] = {}
    for record in result.records.values():
        methods[record.get("method", "?")] = methods.get(record.get("method", "?"), 0) + 1
    console = Console(highlight=False)
    console.print(f"layers by method: {', '.join(f'{k} {v}' for k, v in sorted(methods.items()))}")
    console.print(f"wrote {out} ({layout} layout, {size / 2**20:.1f} MiB of safetensors)")
