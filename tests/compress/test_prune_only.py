"""Recipes without quantization (bits 16): prune, keep the values as 16-bit floats."""

import copy
import re

import pytest
import torch

import nmq
from nmq.calibration.data import Calibration, calibration_tokens
from nmq.compress.methods import compress_layer, get_method, prune_only_names
from nmq.compress.obs import hessian
from nmq.errors import QuantError, RecipeError
from nmq.format.pattern import Pattern
from nmq.runtime.linear import NMQLinear


def test_a_bits_16_recipe_has_no_quantization():
    r = nmq.Recipe(bits=16, method="sparsegpt")
    assert r.quant is None and r.group_size == -1 and r.symmetric
    # nothing is grouped without quantization: whatever group size came (the CLI's default 128) is held as -1
    assert nmq.Recipe(bits=16, group_size=128) == nmq.Recipe(bits=16, group_size=-1)
    assert nmq.Recipe.from_dict(r.to_dict()) == r and r.to_dict()["bits"] == 16
    assert prune_only_names() == ("magnitude", "wanda", "sparsegpt")


@pytest.mark.parametrize("method", ["gptq", "rtn", "wanda+gptq", "magnitude+gptq", "sparsegpt+joint", "wanda+rtn"])
def test_quantizing_methods_are_refused_without_quantization(method):
    accepted = "accepted with bits 16: magnitude, wanda, sparsegpt$"
    with pytest.raises(RecipeError, match=f"method '{re.escape(method)}' quantizes.*{accepted}"):
        nmq.Recipe(bits=16, method=method)


def test_other_widths_and_asymmetry_are_refused_naming_16():
    with pytest.raises(QuantError, match=r"bits=5 .*accepted: 2, 3, 4, 8 \(integer codes\) or 16 \(prune only"):
        nmq.Recipe(bits=5)
    with pytest.raises(QuantError, match="no zero points"):
        nmq.Recipe(bits=16, symmetric=False)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compress_weight_stores_the_pruned_weight(method, dtype):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(512, 96, generator=g), torch.randn(24, 94, generator=g).to(dtype)
    t = nmq.compress_weight(w, pattern="2:4", bits=16, method=method, inputs=x[:, :94])
    kp = t.padded_in
    padded = torch.nn.functional.pad(w.float(), (0, kp - 94))
    h = hessian(torch.nn.functional.pad(x[:, :94], (0, kp - 94)))
    ref = compress_layer(padded, Pattern(2, 4), None, get_method(method), h).weight[:, :94]
    assert t.value_dtype == (torch.bfloat16 if dtype == torch.bfloat16 else torch.float16)
    assert torch.equal(t.to_dense(t.value_dtype), ref.to(t.value_dtype))


@pytest.fixture(scope="module")
def tokens():
    return calibration_tokens(Calibration(samples=8, seq_len=64, seed=3))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compress_model_stores_what_pruning_without_quantization_gives(tokens, method, dtype):
    dense = nmq.builtin_model().to(dtype)
    recipe = nmq.Recipe(bits=16, method=method)
    stored = nmq.compress_model(copy.deepcopy(dense), recipe, tokens, progress=False)
    pruned = nmq.compress_model(copy.deepcopy(dense), recipe, tokens, progress=False, quantize=False)
    layers = {n: m for n, m in stored.named_modules() if isinstance(m, NMQLinear)}
    assert len(layers) == 28 and type(stored.lm_head) is torch.nn.Linear
    for name, layer in layers.items():
        t = layer.nmq_weight
        assert t.bits == 16 and t.value_dtype == (torch.bfloat16 if dtype == torch.bfloat16 else torch.float16)
        assert torch.equal(t.to_dense(t.value_dtype), pruned.get_submodule(name).weight.detach().to(t.value_dtype))
    # the stored model runs (auto picks the reference backend for float values) and computes the pruned one
    ids = tokens[:1, :32]
    with torch.no_grad():
        a, b = stored(ids).logits.float(), pruned(ids).logits.float()
    # bf16: the same weights, but nn.Linear's bf16 matmuls do not all round as fp32 accumulation does (2e-3 here);
    # fp32: the weights rounded to fp16 (1e-4 here)
    assert float((a - b).norm() / b.norm()) < (1e-2 if dtype == torch.bfloat16 else 1e-3)


def test_a_bits_16_checkpoint_saves_and_loads(tokens, tmp_path):
    from nmq.models.checkpoint import load_model, save_checkpoint

    model = nmq.compress_model(nmq.builtin_model(), nmq.Recipe(bits=16, method="sparsegpt"), tokens, progress=False)
    save_checkpoint(model, tmp_path / "ck")
    back = load_model(tmp_path / "ck")
    for name, layer in model.named_modules():
        if isinstance(layer, NMQLinear):
            assert back.get_submodule(name).nmq_weight.identical(layer.nmq_weight)
    assert back.nmq_recipe == model.nmq_recipe
    ids = tokens[:1, :32]
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
