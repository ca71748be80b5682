"""What the server tests serve: names and the tiny corpus the tokenizer is trained on."""

MODEL = "tiny-llama"
MAX_LEN = 128
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Mixed-precision quantization keeps the sensitive layers in higher precision.",
    "Héllo wörld, ça va? 日本語のテキスト 🙂",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
