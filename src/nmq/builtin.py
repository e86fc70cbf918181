"""Built-in models, so the demo and the tests need no download.

``tiny-llama`` is a LLaMA-architecture causal LM over bytes (vocabulary 256:
token = one UTF-8 byte, so no tokenizer files are needed), hidden 256, MLP
768, 4 layers: every linear layer has K a multiple of 128. Its weights are
random (seeded); it exercises the whole pipeline but knows no language.

>>> model = builtin_model("tiny-llama")
>>> model.config.hidden_size, model.config.num_hidden_layers
(256, 4)
"""

from __future__ import annotations

import torch

from .errors import ModelError

BUILTIN_CONFIGS: dict[str, dict] = {
    "tiny-llama": {
        "vocab_size": 256,
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    },
}
DEFAULT_MODEL = "tiny-llama"


def builtin_model(name: str = DEFAULT_MODEL, seed: int = 0) -> torch.nn.Module:
    """A fresh fp32 LlamaForCausalLM built from the named config with seeded random weights."""
    if name not in BUILTIN_CONFIGS:
        raise ModelError(f"built-in model {name!r} is unknown; accepted: {', '.join(BUILTIN_CONFIGS)}")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**BUILTIN_CONFIGS[name])
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def encode_text(text: str) -> torch.Tensor:
    """Token ids ``[1, len]`` of ``text`` for a byte-level built-in model."""
    return torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)


def decode_bytes(ids: list[int]) -> str:
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
