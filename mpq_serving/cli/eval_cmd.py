"""`mpq eval ...`: perplexity of a model, a packed folder, or a model under a plan."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import MPQError
from .common import fail, resolve_model

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)


@app.command("ppl")
def ppl(
    model: str = typer.Argument(..., help="Model folder, packed folder, or demo name (smollm2, smollm2-moe)."),
    plan: Path | None = typer.Option(None, "--plan", help="Apply this plan to MODEL (quantizing where it has no source)."),
    text: str = typer.Option("wiki_eval", "--text", help="Text file, or a shipped text name (wiki_eval, wiki_calib)."),
    seq_len: int = typer.Option(512, "--seq-len", min=8),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="Evaluate only the first N tokens."),
) -> None:
    """Perplexity with a progress bar; prints average bits and weight memory; last line `ppl: <number>`."""
    from transformers import AutoTokenizer

    from ..eval.memory import weight_memory
    from ..eval.perplexity import perplexity
    from ..eval.text import load_text
    from ..loaders.hf_model import load_model

    folder = resolve_model(model)
    try:
        loaded = load_model(plan, folder) if plan else load_model(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        corpus = load_text(text)
    except (MPQError, OSError) as e:
        fail(str(e))
    mem = weight_memory(loaded)
    result = perplexity(loaded, tokenizer, corpus, seq_len=seq_len, max_tokens=max_tokens)
    console.print(f"tokens: {result.n_tokens}  seq_len: {seq_len}")
    console.print(f"avg_bits: {mem.avg_bits:.4f}  (linear weights, scales and zeros included)")
    console.print(f"weight_memory: {mem.total_bytes / 2**20:.1f} MiB")
    console.print(f"ppl: {result.ppl:.4f}")
