"""The prepared SmolLM2 folder: standard names, reloads with plain transformers, same model as the gguf."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from mpq_serving.models import smollm2
from mpq_serving.models.hf_folder import safetensors_names

pytestmark = pytest.mark.slow


def test_folder_has_standard_llama_names(smollm2_dir):
    assert safetensors_names(smollm2_dir) == smollm2.expected_tensor_names(30)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config


def test_reload_matches_gguf_logits(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # The folder holds the gguf's dequantized weights rounded to bf16: the gguf model rounded the same way
    # must give bit-identical logits.
    reference = smollm2.load_gguf_model(torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_tokenizer_chat_template_and_generation_config(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = "In 1539, the term anarchism appeared; 3.14 ≈ π.\n\nNew paragraph."
    assert tokenizer(text)["input_ids"] == smollm2.load_gguf_tokenizer()(text)["input_ids"]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert GenerationConfig.from_pretrained(smollm2_dir).eos_token_id == tokenizer.eos_token_id == 2


def test_prepare_is_idempotent(smollm2_dir):
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert smollm2.prepare_smollm2(smollm2_dir, progress=False) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before
