"""Block-wise recovery (nmq.calibration.recover): the loss falls, masks and formats stay, the trained block is
exactly what its re-encoded layers compute, and runs repeat."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nmq
from nmq.calibration import recover, run
from nmq.calibration.data import Calibration, calibration_tokens
from nmq.cli.main import main
from nmq.errors import RecipeError


@pytest.fixture(scope="module")
def tokens():
    return calibration_tokens(Calibration(samples=8, seq_len=64, seed=3))


def _compress(tokens, **kw):
    model = nmq.builtin_model()
    return nmq.compress_model(model, nmq.Recipe(pattern="2:4", method="sparsegpt", **kw), tokens, progress=False)


def _layers(model):
    return {n: m.nmq_weight for n, m in model.named_modules() if isinstance(m, nmq.NMQLinear)}


@pytest.fixture(scope="module")
def recovered(tokens):
    calls = []  # per block: (the layers it was given, the layers it returned, error before, after)
    real = run.recover_block

    def spy(block, layers, *args, **kwargs):
        given = {n: m.nmq_weight for n, m in layers.items()}
        out = real(block, layers, *args, **kwargs)
        calls.append((given, {n: m.nmq_weight for n, m in out[0].items()}, *out[2:]))
        return out

    run.recover_block = spy
    try:
        model = _compress(tokens, recover=3)
    finally:
        run.recover_block = real
    return model, calls


def test_recovery_lowers_the_blocks_output_error(recovered):
    _, calls = recovered
    errors = [c[2:] for c in calls]
    assert len(errors) == 4  # tiny-llama's blocks
    assert all(after <= before for before, after in errors), errors  # never worse: else the one-shot layers stay
    assert sum(a for _, a in errors) < 0.9 * sum(b for b, _ in errors), errors
    assert sum(a < 0.95 * b for b, a in errors) >= 2, errors


def test_recovery_keeps_masks_formats_and_code_ranges(recovered):
    model, calls = recovered
    changed = 0
    for start, tuned, before, after in calls:
        assert tuned.keys() == start.keys() and tuned
        for n, t in tuned.items():
            ref = start[n]
            assert (t.pattern, t.bits, t.group_size, t.symmetric, t.shape) == (
                ref.pattern, ref.bits, ref.group_size, ref.symmetric, ref.shape)
            assert torch.equal(t.group_positions(), ref.group_positions()), n
            codes = t.codes()
            assert int(codes.min()) >= 0 and int(codes.max()) <= 15
            assert t.storage().bits_per_weight == ref.storage().bits_per_weight
            changed += after < before and not torch.equal(t.values, ref.values)
    assert changed >= 7  # the layers of every block recovery improved had their codes moved
    # the model holds the returned layers
    last = calls[-1][1]
    layers = _layers(model)
    for n, t in last.items():
        assert layers[f"model.layers.3.{n}"] is t


def test_recovery_is_deterministic(recovered, tokens):
    model, _ = recovered
    again = _layers(_compress(tokens, recover=3))
    for n, t in _layers(model).items():
        assert torch.equal(t.values, again[n].values) and torch.equal(t.scales, again[n].scales), n


@settings(max_examples=25, deadline=None)
@given(pattern=st.sampled_from(["2:4", "4:8", "1:4", "4:4", "3:8"]), bits=st.sampled_from([2, 3, 4, 8, 16]),
       symmetric=st.booleans(), k=st.integers(8, 150), seed=st.integers(0, 2**31 - 1))
def test_the_trained_form_is_exactly_what_the_reencoded_layer_computes(pattern, bits, symmetric, k, seed):
    """After arbitrary training moves (values and scales perturbed), dense() equals encode().to_dense() bit for
    bit: the straight-through rounding of codes and of fp16 scales is the quantizer's own."""
    if bits == 16 and not symmetric:
        symmetric = True
    g = torch.Generator().manual_seed(seed)
    t = nmq.compress_weight(torch.randn(9, k, generator=g), pattern=pattern, bits=bits,
                            group_size=-1 if bits == 16 else 8 * (1 + k // 64), symmetric=symmetric)
    layer = recover._Layer(t)
    with torch.no_grad():
        layer.values.add_(torch.randn(layer.values.shape, generator=g) * layer.values.abs().mean())
        if layer.log_scales is not None:
            layer.log_scales.add_(torch.randn(layer.log_scales.shape, generator=g) * 0.3)
    recipe = nmq.Recipe(pattern=pattern, bits=bits, group_size=t.group_size, symmetric=symmetric)
    with torch.no_grad():
        assert torch.equal(layer.dense(), layer.encode(recipe).to_dense())


def test_recover_needs_a_calibrated_method_and_quantized_layers(tokens, capsys):
    with pytest.raises(RecipeError, match="accepted with recover: wanda, sparsegpt"):
        nmq.Recipe(method="magnitude", recover=2)
    with pytest.raises(RecipeError, match="0 \\(no recovery\\) to 100"):
        nmq.Recipe(method="sparsegpt", recover=-1)
    with pytest.raises(nmq.NMQError, match="quantize=True"):
        nmq.compress_model(nmq.builtin_model(), nmq.Recipe(method="sparsegpt", recover=1), tokens,
                           progress=False, quantize=False)
    r = nmq.Recipe(method="gptq", pattern="4:4", recover=4)
    assert nmq.Recipe.from_dict(r.to_dict()) == r and r.to_dict()["recover"] == 4
    assert main(["compress", "tiny-llama", "-o", "unused", "--recover", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nmq: error:") and "\n" not in err and "recover" in err
