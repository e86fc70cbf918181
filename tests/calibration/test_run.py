import copy
import math

import pytest
import torch

import nmq
from nmq.calibration.blocks import PreNormBlock, decoder_blocks, input_groups
from nmq.calibration.data import Calibration, calibration_tokens
from nmq.calibration.hessian import gram
from nmq.compress.prune import is_nm_sparse, wanda_mask
from nmq.errors import ModelError
from nmq.format.pattern import Pattern
from nmq.runtime.evaluate import perplexity


@pytest.fixture(scope="module")
def tokens():
    return calibration_tokens(Calibration(samples=8, seq_len=64, seed=3))


@pytest.fixture(scope="module")
def dense():
    return nmq.builtin_model()


def test_calibration_tokens_are_seeded_windows_of_text(tmp_path):
    a = calibration_tokens(Calibration(samples=4, seq_len=32, seed=1))
    b = calibration_tokens(Calibration(samples=4, seq_len=32, seed=1))
    c = calibration_tokens(Calibration(samples=4, seq_len=32, seed=2))
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)
    (tmp_path / "t.txt").write_text("hello calibration " * 20)
    d = calibration_tokens(Calibration(samples=2, seq_len=16, text=str(tmp_path / "t.txt")))
    assert bytes(d[0].tolist()).decode() in ("hello calibration " * 21)
    with pytest.raises(ModelError, match="not found"):
        calibration_tokens(Calibration(text=str(tmp_path / "missing.txt")))


def test_layers_are_grouped_by_shared_input_in_execution_order(dense, tokens):
    _, blocks = decoder_blocks(dense)
    names = {n: m for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)}
    emb = dense.model.embed_tokens(tokens[:2])
    pos = dense.model.rotary_emb(emb, torch.arange(64).unsqueeze(0))
    groups = input_groups(blocks[0], names, emb, {"position_embeddings": pos, "attention_mask": None})
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                      ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


@pytest.mark.parametrize("method,pattern", [("sparsegpt", "2:4"), ("wanda+gptq", "4:8"), ("gptq", "dense")])
def test_sequential_compression_gives_working_valid_models(dense, tokens, method, pattern, tmp_path):
    recipe = nmq.Recipe(pattern=pattern, method=method, group_size=128)
    model = nmq.compress_model(copy.deepcopy(dense), recipe, tokens, batch=4, progress=False)
    layers = [m for m in model.modules() if isinstance(m, nmq.NMQLinear)]
    assert len(layers) == 28
    assert all(is_nm_sparse(m.nmq_weight.to_dense(), Pattern.parse(pattern)) for m in layers)
    nmq.save_checkpoint(model, tmp_path / "ck")
    loaded = nmq.load_model(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(loaded(tokens[:1]).logits, model(tokens[:1]).logits)
    again = nmq.compress_model(copy.deepcopy(dense), recipe, tokens, batch=4, progress=False)
    assert all(a.nmq_weight.identical(b.nmq_weight) for a, b in
               zip(layers, [m for m in again.modules() if isinstance(m, nmq.NMQLinear)]))


def test_gram_equals_x_transpose_x():
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(3, 50, 2100, generator=g).bfloat16() for _ in range(2)]
    x = torch.cat([c.reshape(-1, 2100) for c in chunks]).double()
    h = gram(iter(chunks), 2100)
    assert torch.equal(h, h.T) and torch.allclose(h.double(), x.T @ x, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_staged_llama_blocks_give_the_hooked_result(dense, tokens, monkeypatch, method):
    """Each layer of a LLaMA block runs once per sample, with the same inputs as re-running the block up to it."""
    used = []
    recognize = PreNormBlock.recognize
    monkeypatch.setattr(PreNormBlock, "recognize",
                        classmethod(lambda cls, *a: used.append(recognize(*a)) or used[-1]))
    recipe = nmq.Recipe(pattern="2:4", method=method, group_size=128, targets=r".*(k_proj|o_proj|up_proj)$")
    staged = nmq.compress_model(copy.deepcopy(dense), recipe, tokens, batch=4, progress=False)
    assert len(used) == 4 and all(used)
    monkeypatch.setattr(PreNormBlock, "recognize", classmethod(lambda cls, *a: None))
    hooked = nmq.compress_model(copy.deepcopy(dense), recipe, tokens, batch=4, progress=False)
    a = [m for m in staged.modules() if isinstance(m, nmq.NMQLinear)]
    b = [m for m in hooked.modules() if isinstance(m, nmq.NMQLinear)]
    assert len(a) == len(b) == 12 and all(x.nmq_weight.identical(y.nmq_weight) for x, y in zip(a, b))


def test_blocks_of_another_shape_are_run_by_hooks(tokens):
    """A block whose MLP adds its input back is not ``h + mlp(norm2(h))``: the staged runner declines it."""
    model = nmq.builtin_model(trained=False)
    block = decoder_blocks(model)[1][0]
    forward = block.mlp.forward
    block.mlp.forward = lambda x: forward(x) + x
    names = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    emb = model.model.embed_tokens(tokens[:2])
    kw = {"position_embeddings": model.model.rotary_emb(emb, torch.arange(64).unsqueeze(0)), "attention_mask": None}
    with torch.no_grad():
        assert PreNormBlock.recognize(block, names, [emb], [kw]) is None
        block.mlp.forward = forward
        assert PreNormBlock.recognize(block, names, [emb], [kw]) is not None


def test_prune_only_keeps_linear_layers(dense, tokens):
    model = nmq.compress_model(copy.deepcopy(dense), nmq.Recipe(method="wanda"), tokens, batch=8,
                                      progress=False, quantize=False)
    ups = [m for n, m in model.named_modules() if n.endswith("up_proj")]
    assert all(type(m) is torch.nn.Linear and is_nm_sparse(m.weight, Pattern(2, 4)) for m in ups)


def test_perplexity_matches_full_context_scoring(dense):
    ids = torch.randint(0, 256, (150,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = torch.log_softmax(dense(input_ids=ids[None]).logits[0, :-1].float(), -1)
    nll = -logp.gather(1, ids[1:, None]).mean()
    r = perplexity(dense, ids, window=150, stride=150)
    assert r.tokens == 149 and math.isclose(r.perplexity, math.exp(float(nll)), rel_tol=1e-5)
    strided = perplexity(dense, ids, window=64, stride=16, batch=3)
    other = perplexity(dense, ids, window=64, stride=16, batch=5)
    assert strided.tokens == other.tokens == 149 and math.isclose(strided.perplexity, other.perplexity, rel_tol=1e-6)
    with pytest.raises(ModelError, match="stride"):
        perplexity(dense, ids, window=10, stride=20)


def test_compress_model_runs_calibrated_methods(dense, tokens):
    model = nmq.compress_model(copy.deepcopy(dense), nmq.Recipe(method="wanda"), progress=False, calibration=tokens)
    assert sum(isinstance(m, nmq.NMQLinear) for m in model.modules()) == 28


def test_wanda_takes_a_blocks_statistics_from_one_run_of_it(dense, tokens):
    """Wanda's reference procedure: every layer of a block scored on the block's input as it arrives
    (earlier blocks pruned, this one not yet); the next block sees this one pruned."""
    pattern = Pattern(2, 4)
    expected = copy.deepcopy(dense)
    for bi, block in enumerate(decoder_blocks(expected)[1]):
        norms = {}
        hooks = [m.register_forward_pre_hook(lambda m, a, n=n: norms.__setitem__(
                     n, norms.get(n, 0) + a[0].double().reshape(-1, a[0].shape[-1]).pow(2).sum(0)))
                 for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for i in range(0, len(tokens), 4):
                expected(tokens[i:i + 4])
        for h in hooks:
            h.remove()
        for n, m in block.named_modules():
            if n in norms:
                m.weight.data *= wanda_mask(m.weight.data, norms[n].float(), pattern)
    got = nmq.compress_model(copy.deepcopy(dense), nmq.Recipe(method="wanda"), tokens, batch=4,
                                    progress=False, quantize=False)
    pairs = [(a.weight != 0, b.weight != 0) for (n, a), b in
             zip(((n, m) for n, m in expected.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n),
                 (m for n, m in got.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n))]
    assert len(pairs) == 28
    agree = sum(int((a == b).sum()) for a, b in pairs) / sum(a.numel() for a, _ in pairs)
    assert agree > 0.999  # equal up to near-ties (the statistics are summed in another order)
