"""Perplexity on cases with a known answer, window bookkeeping, and the shipped texts."""

import math
from types import SimpleNamespace

import pytest
import torch

from mpq_serving.errors import MPQError
from mpq_serving.eval.perplexity import perplexity
from mpq_serving.eval.text import load_text

VOCAB = 50


class CharTokenizer:
    """One token per character (code point mod VOCAB): a text of n characters is n tokens."""

    def __call__(self, text, add_special_tokens=False, verbose=True):
        return {"input_ids": [ord(c) % VOCAB for c in text]}


class UniformLM(torch.nn.Module):
    """Equal logits for every token: the perplexity of any text is exactly the vocabulary size."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, input_ids, use_cache=False):
        self.calls.append(tuple(input_ids.shape))
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB, dtype=torch.bfloat16))


class OracleLM(torch.nn.Module):
    """Puts all its mass on the true next token of a known sequence: the perplexity is 1."""

    def __init__(self, ids: list[int]):
        super().__init__()
        self.ids = torch.tensor(ids)
        self.calls: list[torch.Tensor] = []

    def forward(self, input_ids, use_cache=False):
        logits = torch.full((*input_ids.shape, VOCAB), -1e4)
        for b, row in enumerate(input_ids):
            start = self._find(row)
            nxt = self.ids[start + 1 : start + 1 + len(row)]
            logits[b, torch.arange(len(nxt)), nxt] = 0.0
        return SimpleNamespace(logits=logits)

    def _find(self, row: torch.Tensor) -> int:
        n = len(row)
        for s in range(len(self.ids) - n + 1):
            if torch.equal(self.ids[s : s + n], row):
                return s
        raise AssertionError("window not in the text")


TEXT = "".join(chr(65 + (i * 7 + i // 13) % 26) for i in range(1000))


def test_uniform_logits_give_vocab_size():
    r = perplexity(UniformLM(), CharTokenizer(), TEXT, seq_len=64, progress=False)
    assert r.ppl == pytest.approx(VOCAB, rel=1e-6)
    assert r.nll == pytest.approx(math.log(VOCAB), rel=1e-6)


def test_non_overlapping_windows_score_all_but_each_first_token():
    model = UniformLM()
    r = perplexity(model, CharTokenizer(), TEXT, seq_len=64, progress=False)
    # 1000 tokens: 15 full windows of 64 and one of 40; each window's first token is context only.
    assert model.calls == [(1, 64)] * 15 + [(1, 40)]
    assert r.n_tokens == 1000 - 16


def test_stride_scores_every_token_once():
    ids = CharTokenizer()(TEXT)["input_ids"]
    r = perplexity(OracleLM(ids), CharTokenizer(), TEXT, seq_len=64, stride=16, progress=False)
    assert r.n_tokens == len(ids) - 1
    assert r.ppl == pytest.approx(1.0, abs=1e-6)


def test_batching_and_max_tokens():
    model = UniformLM()
    r = perplexity(model, CharTokenizer(), TEXT, seq_len=64, batch_size=4, max_tokens=300, progress=False)
    assert model.calls == [(4, 64), (1, 44)]  # windows of equal length share a batch
    assert r.n_tokens == 300 - 5


class BigramLM(torch.nn.Module):
    """Random next-token table: a deterministic, non-trivial scorer."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


def test_batch_size_does_not_change_the_result():
    model = BigramLM()
    one = perplexity(model, CharTokenizer(), TEXT, seq_len=100, batch_size=1, progress=False)
    many = perplexity(model, CharTokenizer(), TEXT, seq_len=100, batch_size=3, progress=False)
    assert one.n_tokens == many.n_tokens
    assert one.ppl == pytest.approx(many.ppl, rel=1e-6)


@pytest.mark.parametrize("kwargs", [{"seq_len": 1}, {"stride": 0}, {"stride": 65}, {"batch_size": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(MPQError):
        perplexity(UniformLM(), CharTokenizer(), TEXT, **{"seq_len": 64, **kwargs}, progress=False)


def test_too_short_text():
    with pytest.raises(MPQError, match="1 token"):
        perplexity(UniformLM(), CharTokenizer(), "x", progress=False)


def test_shipped_texts_are_real_and_disjoint():
    wiki_eval, calib = load_text(), load_text("wiki_calib")
    assert wiki_eval == load_text("wiki_eval")  # the default
    assert 200_000 < len(wiki_eval.encode()) < 300_000 and 100_000 < len(calib.encode()) < 150_000
    assert "Anarchism" in wiki_eval
    def long_lines(text: str) -> set[str]:
        return {line for line in text.splitlines() if len(line) > 80}

    assert not long_lines(wiki_eval) & long_lines(calib)
    for markup in ("[[", "]]", "{{", "}}", "<ref"):
        assert markup not in wiki_eval and markup not in calib


def test_load_text_from_file_and_unknown(tmp_path):
    (tmp_path / "t.txt").write_text("hello", encoding="utf-8")
    assert load_text(str(tmp_path / "t.txt")) == "hello"
    with pytest.raises(MPQError, match="no_such"):
        load_text("no_such")


@pytest.mark.slow
def test_smollm2_perplexity_on_wiki_is_sane(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    r = perplexity(model, tokenizer, load_text("wiki_eval"), seq_len=512, max_tokens=4096, progress=False)
    assert r.n_tokens == 4096 - 8
    assert 8 < r.ppl < 40  # full text at seq_len 512: 18.75 in bf16
