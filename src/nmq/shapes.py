"""Model shapes, written once: the LLaMA-style configurations that benchmarks, synthetic models and estimates build.

>>> [(name, out, k) for name, out, k in linear_shapes("llama-7b")][-1]
('down_proj', 4096, 11008)
>>> parse_shape("4096x11008")
(4096, 11008)
"""

from __future__ import annotations

from .errors import NMQError

# Hugging Face LlamaConfig fields.
SHAPES: dict[str, dict] = {
    "llama-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048),
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "llama-13b": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                      num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=2048),
    "tiny": dict(vocab_size=256, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512),
}


def linear_shapes(model: str) -> list[tuple[str, int, int]]:
    """``(name, out, in)`` of the seven linear layers of one decoder block of ``model``."""
    if model not in SHAPES:
        raise NMQError(f"model shape {model!r} is unknown; accepted: {', '.join(SHAPES)}")
    c = SHAPES[model]
    h, i = c["hidden_size"], c["intermediate_size"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    return [("q_proj", h, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, h),
            ("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]


def parse_shape(text: str, flag: str = "--shape", error: type[NMQError] = NMQError) -> tuple[int, int]:
    """``OUTxIN`` as two positive integers; ``error`` (naming ``flag``) otherwise."""
    try:
        out, k = (int(v) for v in text.lower().split("x"))
        if out < 1 or k < 1:
            raise ValueError
    except ValueError:
        raise error(f"{flag} {text!r}: accepted OUTxIN with two positive integers, e.g. 4096x4096") from None
    return out, k
