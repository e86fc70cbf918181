"""Exports decode in the peers' own readers to nmq's weights: compressed-tensors' decompressor, and
transformers loading the exported directory through it."""

import json

import pytest
import torch
import transformers as T
from compressed_tensors.compressors.pack_quantized.base import (
    PackedQuantizationCompressor,
)
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
from hypothesis import given, settings
from hypothesis import strategies as st

import nmq
from nmq.errors import ModelError
from nmq.models.export import export_checkpoint, pack_quantized


@settings(max_examples=40, deadline=None)
@given(pattern=st.sampled_from(["2:4", "4:8", "1:4", "3:8", "1:1", "5:16"]), bits=st.sampled_from([2, 3, 4, 8]),
       group=st.sampled_from([16, 32, 48, 64, -1]), symmetric=st.booleans(), out=st.integers(1, 40),
       k=st.sampled_from([16, 48, 80, 96, 144]), seed=st.integers(0, 2**31 - 1))
def test_compressed_tensors_decompressor_gives_nmqs_weights(pattern, bits, group, symmetric, out, k, seed):
    m = int(pattern.split(":")[1])
    if group != -1 and group % m:
        group = m * 4
    w = torch.randn(out, k, generator=torch.Generator().manual_seed(seed))
    t = nmq.compress_weight(w, pattern=pattern, bits=bits, group_size=group, symmetric=symmetric)
    fields, g = pack_quantized(t)
    scheme = QuantizationScheme(targets=["Linear"], weights={
        "num_bits": bits, "type": "int", "symmetric": symmetric,
        "strategy": "channel" if g == -1 else "group", "group_size": None if g == -1 else g})
    got = PackedQuantizationCompressor.decompress(fields, scheme)["weight"]
    assert torch.equal(got.float(), t.to_dense())


def qwen2():
    config = T.Qwen2Config(vocab_size=320, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return T.Qwen2ForCausalLM(config).eval()  # q/k/v biases; 96 wide: group 64 exports as 32


@pytest.mark.parametrize("make,recipe", [
    (nmq.builtin_model, nmq.Recipe(pattern="2:4", group_size=128)),
    (qwen2, nmq.Recipe(pattern="4:8", group_size=64)),
], ids=["llama-2of4", "qwen2-4of8"])
def test_transformers_loads_the_export_to_the_same_logits(make, recipe, tmp_path):
    model = nmq.compress_model(make(), recipe, progress=False)
    ck = nmq.save_checkpoint(model, tmp_path / "ck", dense_dtype=torch.bfloat16)
    r = export_checkpoint(ck, tmp_path / "ct", "compressed-tensors")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    QuantizationConfig.model_validate(config["quantization_config"])  # the peer's own schema
    assert r["layers"] == sum(isinstance(x, nmq.NMQLinear) for x in model.modules()) and r["bits_per_weight"] > 4
    theirs = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ct"))
    ours = nmq.load_model(ck, backend="reference")
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(theirs(ids).logits, ours(ids).logits)


def test_asymmetric_layers_of_an_export_file_decompress_to_nmqs_weights(tmp_path):
    """Zero points packed along the output dimension, as vLLM reads them. (transformers with compressed-tensors
    0.20.1 allocates them unpacked when it builds the model, so it cannot load asymmetric exports itself.)"""
    from safetensors.torch import load_file

    model = nmq.compress_model(qwen2(), nmq.Recipe(pattern="4:8", group_size=64, symmetric=False), progress=False)
    ck = nmq.save_checkpoint(model, tmp_path / "ck")
    export_checkpoint(ck, tmp_path / "ct", "compressed-tensors")
    stored = load_file(str(tmp_path / "ct" / "model.safetensors"))
    groups = QuantizationConfig.model_validate(
        json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]).config_groups
    for name, layer in model.named_modules():
        if isinstance(layer, nmq.NMQLinear):
            scheme = next(g for g in groups.values() if f"re:^{name.replace('.', '[.]')}$" in g.targets)
            fields = {k.rpartition(".")[2]: v for k, v in stored.items() if k.rpartition(".")[0] == name}
            assert set(fields) - {"bias"} == {"weight_packed", "weight_scale", "weight_shape", "weight_zero_point"}
            got = PackedQuantizationCompressor.decompress(fields, scheme)["weight"]
            assert torch.equal(got.float(), layer.nmq_weight.to_dense()), name


def test_unknown_export_format_is_refused(tmp_path):
    ck = nmq.save_checkpoint(nmq.compress_model(nmq.builtin_model(), progress=False), tmp_path / "ck")
    with pytest.raises(ModelError, match="accepted: compressed-tensors"):
        export_checkpoint(ck, tmp_path / "x", "onnx")
    assert not (tmp_path / "x").exists()
