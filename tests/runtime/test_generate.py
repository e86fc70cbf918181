import pytest
import torch

import nmq
from nmq.backends import available
from nmq.runtime.generate import generate_text
from nmq.runtime.text import ByteTokenizer


@pytest.mark.skipif("cpu" not in available(), reason="the cpu backend is not built")
def test_cpu_and_reference_backends_give_the_same_greedy_tokens(tmp_path):
    model = nmq.compress_model(nmq.builtin_model(), nmq.Recipe(pattern="2:4", group_size=128), progress=False)
    nmq.save_checkpoint(model, tmp_path / "ck")
    tokens = {}
    for backend in ("cpu", "reference"):
        loaded = nmq.load_model(tmp_path / "ck", backend=backend, path="w4a16")
        tokens[backend] = generate_text(loaded, ByteTokenizer(), "class Stack:\n    def ", max_new_tokens=32).token_ids
    assert len(tokens["cpu"]) == 32
    assert tokens["cpu"] == tokens["reference"]


def _random_llama(dtype, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_decoder_logits_match_the_models_forward(dtype):
    """Prefill, then single steps: the logits of the model's own full forward (GQA, fp32 and bf16)."""
    from nmq.runtime.decoder import LlamaDecoder

    model = _random_llama(dtype)
    ids = torch.randint(0, 300, (1, 11), generator=torch.Generator().manual_seed(1))
    dec = LlamaDecoder(model, 16)
    seen = ids
    logits = dec.step(ids)
    for nxt in (5, 299, 0):
        with torch.no_grad():
            ref = model(seen).logits[0, -1].float()
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert torch.allclose(logits, ref, atol=tol * float(ref.abs().max()), rtol=0), (dtype, seen.shape)
        seen = torch.cat([seen, torch.tensor([[nxt]])], 1)
        logits = dec.step(torch.tensor([[nxt]]))
    assert dec.length == 14
    with pytest.raises(ValueError, match="KV cache holds 16"):
        dec.step(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_lean_decoder_generates_what_generate_does(temperature):
    from nmq.runtime.generate import generate_ids

    model = _random_llama(torch.float32, seed=2)
    ids = torch.randint(0, 300, (1, 7), generator=torch.Generator().manual_seed(3))
    ours = generate_ids(model, ids, 20, temperature=temperature, seed=4)
    theirs = generate_ids(model, ids, 20, temperature=temperature, seed=4, decoder="hf")
    assert len(ours.token_ids) == 20 and len(ours.decode_ms) == 19
    assert ours.token_ids == theirs.token_ids
    assert len(set(ours.token_ids)) > 1  # not a degenerate repetition


def test_lean_decoder_runs_compressed_layers():
    """The same greedy tokens as generate with NMQLinear layers (reference backend) in place of the linears."""
    from nmq.runtime.generate import generate_ids

    model = nmq.compress_model(nmq.builtin_model(), nmq.Recipe(pattern="2:4", group_size=128), progress=False)
    ids = torch.tensor([list(b"def parse(self, text):\n        ")])
    ours = generate_ids(model, ids, 24)
    assert ours.token_ids == generate_ids(model, ids, 24, decoder="hf").token_ids


def test_unknown_decoder_is_refused():
    from nmq.runtime.generate import generate_ids

    with pytest.raises(ValueError, match="decoder must be"):
        generate_ids(nmq.builtin_model(), torch.tensor([[1, 2]]), 2, decoder="fast")
