"""compress -> save -> load_model for each architecture family the sources cover, on small random-weight configs."""

import copy

import pytest
import torch
import transformers as T

import nmq
from nmq.models.checkpoint import load_model, read_record

COMMON = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)
ARCHITECTURES = {
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, {}),
    "mistral": (T.MistralConfig, T.MistralForCausalLM, {}),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {}),  # q/k/v biases
    "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, {"head_dim": 32}),  # q/k norms
    "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, {"head_dim": 32}),  # scaled embedding (a non-persistent buffer)
    "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM, {"head_dim": 32}),
    "phi3": (T.Phi3Config, T.Phi3ForCausalLM, {"pad_token_id": None}),  # fused qkv and gate_up projections
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_survives_the_checkpoint(arch, tmp_path):
    config_cls, model_cls, extra = ARCHITECTURES[arch]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_cls(config_cls(**COMMON, **extra)).eval()
    compressed = nmq.compress_model(copy.deepcopy(model), nmq.Recipe(pattern="2:4", group_size=64), progress=False)
    layers = sum(isinstance(m, nmq.NMQLinear) for m in compressed.modules())
    assert layers == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 1  # all but lm_head
    out = nmq.save_checkpoint(compressed, tmp_path / "ck")
    loaded = load_model(out, backend="reference")
    assert not [n for n, p in list(loaded.named_parameters()) + list(loaded.named_buffers()) if p.is_meta]
    for name, b in model.named_buffers():  # persistent or not, every buffer comes back with its value
        assert torch.equal(loaded.get_buffer(name).float(), b.float()), name
    ids = torch.randint(0, COMMON["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = compressed(ids).logits, loaded(ids).logits
    assert float((got - want).norm() / want.norm()) < 1e-5
    if arch.startswith("gemma"):
        assert read_record(out)["buffers"] == ["model.embed_tokens.embed_scale"]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_decodes_the_tokens_of_its_own_generate(arch, tmp_path):
    """nmq's generation (the lean decoder where it covers the family, else the model's own generate with the
    compressed layers) gives the greedy tokens transformers' generate gives on the reloaded checkpoint."""
    from nmq.runtime.generate import generate_ids

    config_cls, model_cls, extra = ARCHITECTURES[arch]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_cls(config_cls(**COMMON, **extra)).eval()
    compressed = nmq.compress_model(model, nmq.Recipe(pattern="2:4", group_size=64), progress=False)
    loaded = load_model(nmq.save_checkpoint(compressed, tmp_path / "ck"), backend="reference")
    ids = torch.randint(0, COMMON["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(2))
    loaded.generation_config.eos_token_id = None  # exactly 12 tokens from both, none banned
    ours = generate_ids(loaded, ids, 12)
    with torch.no_grad():
        theirs = loaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                 pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert ours.token_ids == theirs
    assert ours.decoder == ("lean" if arch in ("llama", "mistral", "qwen2", "qwen3") else "hf")


def test_a_sliding_window_shorter_than_the_run_goes_to_the_models_own_generate():
    from nmq.runtime.decoder import supports

    config_cls, model_cls, extra = ARCHITECTURES["mistral"]
    model = model_cls(config_cls(**COMMON, **extra, sliding_window=16)).eval()
    assert supports(model, 16) and not supports(model, 17)
    assert supports(ARCHITECTURES["qwen2"][1](T.Qwen2Config(**COMMON, sliding_window=16)).eval(), 64)  # not in use
