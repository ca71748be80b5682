"""`mpq bench serve` against our own HF OpenAI server, for real over HTTP with streaming.

Once against a running server (`--url`, a tiny random Llama served in-process), and once letting the
benchmark start `mpq serve` on SmolLM2 itself as a child process, which it must stop afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from typer.testing import CliRunner

from mpq_serving.cli.main import app
from mpq_serving.server.runner import serve_in_background

pytestmark = pytest.mark.slow

MAX_TOKENS = 6


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[str]:
    """A 2-layer random Llama with a byte-level BPE tokenizer trained here, served in a thread."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["Mixed precision serving benchmark text."] * 5, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with serve_in_background(LlamaForCausalLM(config).eval(), tok, "tiny-llama") as url:
        yield url


def check_levels(levels: list[dict], concurrencies: list[int], requests: int) -> None:
    assert [lv["concurrency"] for lv in levels] == concurrencies
    for lv in levels:
        n = max(requests, 2 * lv["concurrency"])
        assert lv["requests"] == n and lv["failed"] == 0, lv["first_error"]
        # ignore_eos: every answer is exactly MAX_TOKENS tokens, so throughput x wall time counts them all
        assert lv["output_tokens_per_s"] * lv["wall_s"] == pytest.approx(n * MAX_TOKENS)
        assert lv["requests_per_s"] * lv["wall_s"] == pytest.approx(n)
        assert 0 < lv["ttft_ms"]["p50"] <= lv["ttft_ms"]["p90"] <= lv["ttft_ms"]["p99"]
        assert 0 < lv["itl_ms"]["p50"] <= lv["itl_ms"]["p90"] <= lv["itl_ms"]["p99"]


def test_running_server_levels_table_json_and_plot(tiny_server, tmp_path):
    result = CliRunner().invoke(app, [
        "bench", "serve", "--engine", "hf", "--url", tiny_server, "--concurrency", "1,3", "--requests", "4",
        "--max-tokens", str(MAX_TOKENS), "--prompt-words", "12", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "serve_bench.json").read_text())
    check_levels(levels, [1, 3], 4)
    assert {lv["target"] for lv in levels} == {"tiny-llama"}  # a running server is labelled by its model
    assert (tmp_path / "serve_bench.png").stat().st_size > 10_000
    assert "TTFT p50/p90/p99 ms" in result.output


def test_benchmark_starts_mpq_serve_and_stops_it(smollm2_dir, tmp_path):
    result = CliRunner().invoke(app, [
        "bench", "serve", str(smollm2_dir), "--engine", "hf", "--concurrency", "2", "--requests", "2",
        "--max-tokens", str(MAX_TOKENS), "--prompt-words", "16", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "serve_bench.json").read_text())
    check_levels(levels, [2], 2)
    assert levels[0]["target"] == f"hf:{smollm2_dir.name}"
    log = next((tmp_path / "logs").glob("server-hf-*.log"))
    pid_lines = [line for line in log.read_text().splitlines() if "Started server process" in line]
    assert pid_lines, log.read_text()[-2000:]
    pid = int(pid_lines[0].split("[")[1].split("]")[0])
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
