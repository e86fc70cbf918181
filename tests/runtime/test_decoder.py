import pytest
import torch

import nmq
from nmq.backends import available
from nmq.runtime.decoder import LlamaDecoder

needs_cpu = pytest.mark.skipif("cpu" not in available(), reason="the cpu backend is not built")


def random_llama(dtype, seed=0, **config):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, **config)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.mark.parametrize("step_ops", ["auto", "torch"])
@pytest.mark.parametrize("dtype,act", [(torch.float32, "silu"), (torch.bfloat16, "silu"), (torch.float32, "gelu")])
def test_lean_decoder_logits_match_the_models_forward(dtype, act, step_ops):
    """Prefill, then single steps: the logits of the model's own full forward (GQA, fp32 and bf16, an MLP
    the C++ ops do not run)."""
    model = random_llama(dtype, hidden_act=act)
    ids = torch.randint(0, 300, (1, 11), generator=torch.Generator().manual_seed(1))
    dec = LlamaDecoder(model, 16, step_ops=step_ops)
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


def _compressed_on_cpu():
    model = nmq.compress_model(nmq.builtin_model(), nmq.Recipe(pattern="2:4", group_size=128), progress=False)
    for m in model.modules():
        if isinstance(m, nmq.NMQLinear):
            m.set_backend("cpu")
    return model


@needs_cpu
@pytest.mark.parametrize("case", ["fp32", "bf16", "2:4 stacked"])
def test_both_step_ops_give_the_same_steps(case):
    """The one layer loop over the C++ ops and over PyTorch's: the same logits and KV cache at every decode
    step (to fp32 or bf16 roundings), from the separate projections of dense layers or the stacked q|k|v and
    gate|up of compressed ones."""
    model = _compressed_on_cpu() if case == "2:4 stacked" else random_llama(
        torch.bfloat16 if case == "bf16" else torch.float32)
    vocab = model.config.vocab_size
    cpp, ref = LlamaDecoder(model, 24), LlamaDecoder(model, 24, step_ops="torch")
    assert cpp.decode_ops is not cpp.prefill_ops and ref.decode_ops is ref.prefill_ops
    if case == "2:4 stacked":
        assert all(f is not None and f.current() for f in cpp.qkv + cpp.gate_up)
    ids = torch.randint(0, vocab, (1, 7), generator=torch.Generator().manual_seed(2))
    tol = 2e-2 if case == "bf16" else 1e-5
    assert torch.equal(cpp.step(ids), ref.step(ids))  # prefill runs on PyTorch's ops in both
    for nxt in torch.randint(0, vocab, (10,), generator=torch.Generator().manual_seed(3)).tolist():
        a, b = cpp.step(torch.tensor([[nxt]])), ref.step(torch.tensor([[nxt]]))
        assert torch.allclose(a, b, atol=tol * float(b.abs().max()), rtol=0), nxt
        for x, y in ((cpp.k, ref.k), (cpp.v, ref.v)):
            assert torch.allclose(x.float(), y.float(), atol=tol * float(y.abs().max()), rtol=0)
    assert cpp.length == ref.length == 17


def test_unknown_step_ops_are_refused():
    with pytest.raises(ValueError, match="step_ops must be one of auto, torch"):
        LlamaDecoder(nmq.builtin_model(), 8, step_ops="cuda")
