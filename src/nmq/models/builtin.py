"""Built-in models, so the demo and the tests need no download.

``tiny-llama`` is a LLaMA-architecture causal LM over bytes (vocabulary 256:
token = one UTF-8 byte, so no tokenizer files are needed), hidden 128, MLP
384, 4 layers: every linear layer has K a multiple of 128. It was trained by
``scripts/train_tiny_llama.py`` on the Python standard library's source; the
weights ship in ``nmq/data/tiny-llama.safetensors`` (fp16), and
``trained=False`` gives the same architecture with seeded random weights.

>>> model = builtin_model("tiny-llama")
>>> model.config.hidden_size, model.config.num_hidden_layers
(128, 4)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from ..errors import ModelError

BUILTIN_CONFIGS: dict[str, dict] = {
    "tiny-llama": {
        "vocab_size": 256,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    },
}
DEFAULT_MODEL = "tiny-llama"


def builtin_model(name: str = DEFAULT_MODEL, trained: bool = True, seed: int = 0) -> torch.nn.Module:
    """A fresh fp32 LlamaForCausalLM: the trained weights, or seeded random ones."""
    if name not in BUILTIN_CONFIGS:
        raise ModelError(f"built-in model {name!r} is unknown; accepted: {', '.join(BUILTIN_CONFIGS)}")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**BUILTIN_CONFIGS[name])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    weights = weights_path(name)
    if trained and weights.is_file():
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state, strict=True)
    elif trained:
        raise ModelError(f"the trained weights of {name!r} are missing ({weights}); reinstall nmq")
    return model.eval()


def weights_path(name: str) -> Path:
    return Path(str(resources.files("nmq") / "data" / f"{name}.safetensors"))


def encode_text(text: str) -> torch.Tensor:
    """Token ids ``[1, len]`` of ``text`` for a byte-level built-in model."""
    return torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)
