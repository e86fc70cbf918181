import copy
import json
import os
import stat

import pytest
import torch

import nmq
from nmq.errors import FormatError, ModelError, RecipeError
from nmq.models.builtin import encode_text
from nmq.models.sources import load_source


@pytest.fixture(scope="module")
def dense():
    return nmq.builtin_model()


@pytest.fixture(scope="module")
def compressed(dense):
    return nmq.compress_model(copy.deepcopy(dense), nmq.Recipe(), progress=False)


@pytest.fixture(scope="module")
def ckpt(compressed, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    nmq.save_checkpoint(compressed, out, source="tiny-llama")
    return out


IDS = encode_text("int main(void) { return 0; }")


def test_compress_model_replaces_the_linear_layers_only(compressed):
    kinds = {n: type(m).__name__ for n, m in compressed.named_modules()}
    assert sum(k == "NMQLinear" for k in kinds.values()) == 4 * 7
    assert kinds["lm_head"] == "Linear" and kinds["model.embed_tokens"] == "Embedding"


def test_compressed_model_equals_dense_model_with_dequantized_weights(dense, compressed):
    twin = copy.deepcopy(dense)
    for name, m in compressed.named_modules():
        if isinstance(m, nmq.NMQLinear):
            twin.get_submodule(name).weight.data = m.nmq_weight.to_dense()
    # The reference backend computes x @ dequant(W).T, the very operation of the twin; other backends agree
    # within the numerics contract (relative Frobenius error 1e-3), checked in their own tests.
    layers = [m for m in compressed.modules() if isinstance(m, nmq.NMQLinear)]
    backends = [m.backend for m in layers]
    for m in layers:
        m.set_backend("reference")
    try:
        with torch.no_grad():
            a, b = compressed(IDS).logits, twin(IDS).logits
    finally:
        for m, name in zip(layers, backends):
            m.set_backend(name)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoint_loads_back_and_generates_the_same(compressed, ckpt):
    loaded = nmq.load_model(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.nmq.safetensors", "nmq.json"]
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, compressed(IDS).logits)
        g1 = loaded.generate(IDS[:, :5], max_new_tokens=8, do_sample=False)
        g2 = compressed.generate(IDS[:, :5], max_new_tokens=8, do_sample=False)
    assert torch.equal(g1, g2) and g1.shape == (1, 13)
    assert loaded.nmq_recipe == nmq.Recipe()
    assert not any(p.is_meta for p in loaded.parameters())


def test_w4a8_path_runs_through_a_loaded_model(ckpt, compressed):
    loaded = nmq.load_model(ckpt, path="w4a8")
    with torch.no_grad():
        a, b = loaded(IDS).logits, compressed(IDS).logits
    assert float((a - b).norm() / b.norm()) < 0.05


def test_hugging_face_directory_source(dense, tmp_path):
    dense.save_pretrained(tmp_path / "hf")
    model, src = load_source(str(tmp_path / "hf"))
    assert src == tmp_path / "hf"
    a = nmq.compress_model(model, nmq.Recipe(pattern="4:8", group_size=64), progress=False)
    b = nmq.compress_model(copy.deepcopy(dense), nmq.Recipe(pattern="4:8", group_size=64), progress=False)
    with torch.no_grad():
        assert torch.equal(a(IDS).logits, b(IDS).logits)


def test_float16_checkpoints_load_as_bfloat16_unless_asked(dense, tmp_path, capsys):
    copy.deepcopy(dense).half().save_pretrained(tmp_path / "hf16")
    model, _ = load_source(str(tmp_path / "hf16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert "float16 weights loaded as bfloat16" in capsys.readouterr().err
    exact, _ = load_source(str(tmp_path / "hf16"), progress=False, dtype="float32")
    assert {p.dtype for p in exact.parameters()} == {torch.float32}
    assert torch.equal(exact.model.embed_tokens.weight, dense.model.embed_tokens.weight.half().float())
    with pytest.raises(nmq.NMQError, match="accepted: auto, float32, bfloat16, float16"):
        load_source(str(tmp_path / "hf16"), dtype="int8")
    wanda = nmq.compress_model(model, nmq.Recipe(method="wanda"), progress=False,
                               calibration=torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0)))
    assert sum(isinstance(m, nmq.NMQLinear) for m in wanda.modules()) == 28


def test_tied_embeddings_and_bias_survive(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                      attention_bias=True, mlp_bias=True)
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    c = nmq.compress_model(model, nmq.Recipe(pattern="2:4", group_size=64), progress=False)
    nmq.save_checkpoint(c, tmp_path / "tied")
    loaded = nmq.load_model(tmp_path / "tied")
    ids = torch.tensor([[1, 5, 9, 33]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, c(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert loaded.model.layers[0].self_attn.q_proj.bias is not None


def test_targets_and_ignore(dense):
    r = nmq.Recipe(targets=r"mlp\.", ignore=(r"down_proj",))
    c = nmq.compress_model(copy.deepcopy(dense), r, progress=False)
    names = {n for n, m in c.named_modules() if isinstance(m, nmq.NMQLinear)}
    assert names and all(".mlp." in n and "down_proj" not in n for n in names)
    with pytest.raises(ModelError, match="no linear layer matches"):
        nmq.compress_model(copy.deepcopy(dense), nmq.Recipe(targets="nothing-here"), progress=False)
    with pytest.raises(RecipeError, match="not a valid regular expression"):
        nmq.Recipe(targets="(")


def test_nmq_linear_is_a_drop_in_linear(rng):
    lin = torch.nn.Linear(96, 40, bias=True)
    layer = nmq.NMQLinear.from_linear(lin, pattern="1:4", bits=8, group_size=32, symmetric=False)
    x = torch.randn(3, 7, 96, generator=rng)
    expected = torch.nn.functional.linear(x, layer.nmq_weight.to_dense(), lin.bias)
    assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    assert "pattern=1:4" in repr(layer)


def test_bad_checkpoints(ckpt, tmp_path):
    with pytest.raises(FormatError, match="no nmq.json"):
        nmq.load_model(tmp_path)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    rec = json.loads((bad / "nmq.json").read_text())
    (bad / "nmq.json").write_text(json.dumps({**rec, "version": 9}))
    with pytest.raises(FormatError, match="versions up to 1"):
        nmq.load_model(bad)
    (bad / "nmq.json").write_text(json.dumps(rec))
    data = bytearray((bad / "model.nmq.safetensors").read_bytes())
    data[-100] ^= 0x10
    (bad / "model.nmq.safetensors").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum"):
        nmq.load_model(bad)


def test_unknown_sources():
    with pytest.raises(ModelError, match="neither a directory nor a built-in"):
        load_source("no-such-model")


def test_released_source_keeps_the_packed_form_only(rng, tmp_path):
    from nmq.errors import BackendError
    from nmq.models.synthetic import llama_model
    from nmq.shapes import SHAPES

    model = llama_model(SHAPES["tiny"], nmq.Recipe(pattern="2:4", group_size=128), backend="reference",
                        release_source=True)
    layer = model.model.layers[0].mlp.down_proj
    assert layer.nmq_weight is None and "pattern=2:4" in repr(layer)
    ids = torch.tensor([[1, 2, 3]])
    kept = llama_model(SHAPES["tiny"], nmq.Recipe(pattern="2:4", group_size=128), backend="reference")
    assert torch.equal(model(ids).logits, kept(ids).logits)  # same seed, same weights
    layer.set_backend("cpu")
    with pytest.raises(BackendError, match="release_source"):
        layer(torch.randn(1, layer.in_features))
    with pytest.raises(ModelError, match="release_source"):
        nmq.save_checkpoint(model, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_checkpoint_keeps_the_chat_template_and_follows_the_umask(compressed, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (src / "tokenizer_config.json").write_text("{}")
    old = os.umask(0o027)
    try:
        out = nmq.save_checkpoint(compressed, tmp_path / "ck", source_dir=src, source="tiny-llama")
    finally:
        os.umask(old)
    assert (out / "chat_template.jinja").read_text() == (src / "chat_template.jinja").read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "model.nmq.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "nmq.json").stat().st_mode) == 0o640
