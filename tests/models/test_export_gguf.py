"""GGUF exports decode to nmq's weights in the peers' own readers: the gguf package's reader and dequantizer, and
transformers' GGUF loader (which undoes llama.cpp's q/k row order itself) giving nmq's logits."""

import contextlib
import io
import json
import shutil

import gguf
import numpy as np
import pytest
import torch
import transformers as T
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st

import nmq
from nmq.cli.main import main
from nmq.errors import ModelError
from nmq.format.load import load_file
from nmq.models.checkpoint import read_record
from nmq.models.export import export_checkpoint
from nmq.models.export_gguf import export_gguf, pre_tokenizer_name
from nmq.models.gguf import builtin_gguf_path


def model_of(config_cls, model_cls, seed=0, **config):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config_cls(**config)).eval()
    with torch.no_grad():  # random biases and norms, so that a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1 + p)
    return model


def read_back(path):
    """Every tensor of a GGUF file as the gguf package dequantizes it, with its type: {name: (type, fp32 [rows, K])}."""
    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: (t.tensor_type, np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
                             .reshape(*reversed([int(d) for d in t.shape]))) for t in reader.tensors}


def hf_rows(w, n_head):
    """llama.cpp's q/k row order back to Hugging Face's (the inverse of its converter's permute)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected_type(t):
    """The GGUF type and exactness the export promises for an NMQTensor (module docstring of export_gguf)."""
    k = t.in_features
    if k % 32:
        return Q.F32, True
    if not (t.group % 32 == 0 or t.group >= k) or (t.bits == 8 and not t.symmetric):
        return Q.Q8_0, False
    fits4 = t.bits <= 4 if t.symmetric else t.bits <= 3
    return (Q.Q4_0 if fits4 else Q.Q8_0), True


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), symmetric=st.booleans(), group=st.sampled_from([16, 32, 48, 64, 128, -1]),
       pattern=st.sampled_from(["2:4", "4:8", "1:1", "3:4"]),
       shape=st.sampled_from([(64, 4, 2), (64, 4, 4), (96, 3, 1), (48, 2, 1), (64, 2, 1)]),
       intermediate=st.sampled_from([64, 80, 128]), bias=st.booleans(), tie=st.booleans(), head=st.booleans(),
       dense_dtype=st.sampled_from([None, torch.bfloat16, torch.float16]), seed=st.integers(0, 2**16))
def test_every_tensor_reads_back_as_nmqs_weight(tmp_path_factory, bits, symmetric, group, pattern, shape,
                                                 intermediate, bias, tie, head, dense_dtype, seed):
    hidden, heads, kv_heads = shape
    model = model_of(T.LlamaConfig, T.LlamaForCausalLM, seed, vocab_size=256, hidden_size=hidden,
                     intermediate_size=intermediate, num_hidden_layers=1, num_attention_heads=heads,
                     num_key_value_heads=kv_heads, max_position_embeddings=64, attention_bias=bias,
                     tie_word_embeddings=tie)
    recipe = nmq.Recipe(pattern=pattern, bits=bits, group_size=group, symmetric=symmetric,
                        ignore=() if head else nmq.Recipe().ignore)
    model = nmq.compress_model(model, recipe, progress=False)
    d = tmp_path_factory.mktemp("gguf")
    ck = nmq.save_checkpoint(model, d / "ck", dense_dtype=dense_dtype)
    r = export_gguf(ck, d / "m.gguf")
    reader, got = read_back(d / "m.gguf")
    assert str(reader.fields["general.architecture"].contents()) == "llama"

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 1)
    stored = load_file(ck / "model.nmq.safetensors")
    want = {f"{n}.weight": (t.to_dense(), *expected_type(t)) for n, t in stored.compressed.items()}
    dense = dict(stored.dense)
    for alias, source in read_record(ck)["tied"].items():
        if alias != "lm_head.weight" or not tie:
            dense[alias] = dense[source]
    for name, value in dense.items():
        kind = {torch.bfloat16: Q.BF16, torch.float16: Q.F16}.get(value.dtype, Q.F32) if value.dim() == 2 else Q.F32
        want[name] = (value.float(), kind, True)
    assert ("lm_head.weight" in want) == (head or not tie)
    assert set(got) == {names.get_name(n, try_suffixes=(".weight", ".bias")) for n in want}
    requantized = []
    for name, (value, qtype, exact) in want.items():
        kind, data = got[names.get_name(name, try_suffixes=(".weight", ".bias"))]
        if ".q_proj." in name or ".k_proj." in name:
            data = hf_rows(data, heads if ".q_proj." in name else kv_heads)
        value = value.numpy().reshape(data.shape)
        assert kind == qtype, name
        if exact:
            assert np.array_equal(data, value), name
        else:
            requantized.append(name.removesuffix(".weight"))
            # Q8_0's error: half its step d = absmax / 127, plus up to 127 times d's rounding to fp16
            blocks = np.abs(value).reshape(value.shape[0], -1, 32).max(-1, keepdims=True) / 127
            assert (np.abs(data - value).reshape(blocks.shape[0], -1, 32) <= blocks * 0.57 + 1e-12).all(), name
    assert sorted(r["requantized"]) == sorted(requantized)
    layers = [m for m in model.modules() if isinstance(m, nmq.NMQLinear)]
    assert r["layers"] == len(layers) and sum(r["types"].values()) == len(layers)
    assert r["sparse_weights_densified"] == (0 if pattern == "1:1" else sum(m.nmq_weight.out_features *
                                                                          m.nmq_weight.in_features for m in layers))


def test_pruned_only_layers_export_their_16_bit_values(tmp_path):
    model = model_of(T.LlamaConfig, T.LlamaForCausalLM, vocab_size=256, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = nmq.compress_model(model, nmq.Recipe(pattern="2:4", bits=16), progress=False)
    r = export_gguf(nmq.save_checkpoint(model, tmp_path / "ck"), tmp_path / "m.gguf")
    _, got = read_back(tmp_path / "m.gguf")
    assert r["types"] == {"f16": 7} and r["bits_per_weight"] == 16 and r["requantized"] == []
    kind, data = got["blk.0.ffn_down.weight"]
    assert kind == Q.F16 and np.array_equal(data, model.model.layers[0].mlp.down_proj.nmq_weight.to_dense().numpy())


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory):
    """SmolLM2's tokenizer files, as nmq writes them into a checkpoint of the built-in smollm2-135m."""
    from nmq.runtime.text import HFTokenizer

    try:
        path = builtin_gguf_path("smollm2-135m")
    except ModelError as exc:
        pytest.skip(str(exc))
    d = tmp_path_factory.mktemp("smollm2-tokenizer")
    with contextlib.redirect_stderr(io.StringIO()):
        HFTokenizer(path).tok.save_pretrained(str(d))
    return d, path


def smollm2_like(tok_dir, tmp_path, recipe=None):
    """A 2-layer random-weight LLaMA with SmolLM2's vocabulary, kv heads shared 3 to 1 as SmolLM2's, compressed
    and saved with SmolLM2's tokenizer files (96 wide: one group of 128 per row)."""
    model = model_of(T.LlamaConfig, T.LlamaForCausalLM, vocab_size=49152, hidden_size=96, intermediate_size=256,
                     num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=256,
                     rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = nmq.compress_model(model, recipe or nmq.Recipe(), progress=False)
    return nmq.save_checkpoint(model, tmp_path / "ck", source_dir=tok_dir, source="smollm2-135m")


@pytest.fixture(scope="module")
def smollm2_export(smollm2_tokenizer, tmp_path_factory):
    tok_dir, source = smollm2_tokenizer
    d = tmp_path_factory.mktemp("smollm2-export")
    ck = smollm2_like(tok_dir, d)
    return ck, export_checkpoint(ck, d / "m.gguf", "gguf"), d / "m.gguf", source


def logits_agree(ck, gguf_path, vocab):
    with contextlib.redirect_stderr(io.StringIO()):
        theirs = T.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                        dtype=torch.float32).eval()
    ours = nmq.load_model(ck, backend="reference")
    ids = torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = theirs(ids).logits, ours(ids).logits
    return float((a - b).norm() / b.norm())


def test_transformers_loads_the_export_to_nmqs_logits(smollm2_export):
    ck, r, path, _ = smollm2_export
    assert r["types"] == {"q4_0": 14} and r["bits_per_weight"] == 4.5 and r["requantized"] == []
    assert logits_agree(ck, path, 49152) < 1e-4


def test_the_export_carries_smollm2s_own_gguf_vocabulary(smollm2_export):
    _, r, path, source = smollm2_export
    assert r["pre_tokenizer"] == "smollm"  # from the source GGUF: the tokenizer.json transformers rebuilt lost it
    ours, theirs = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(source))
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    assert "output.weight" not in {t.name for t in ours.tensors}  # tied: llama.cpp reads token_embd


def test_the_pre_tokenizer_is_recognized_from_tokenizer_json_without_the_source(smollm2_tokenizer, tmp_path):
    tok_dir, _ = smollm2_tokenizer
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    assert spec["pre_tokenizer"]["type"] == "ByteLevel"  # what transformers rebuilds from the GGUF
    d = tmp_path / "tok"
    shutil.copytree(tok_dir, d)
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [  # SmolLM2's own tokenizer.json
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    (d / "tokenizer.json").write_text(json.dumps(spec))
    model = model_of(T.LlamaConfig, T.LlamaForCausalLM, vocab_size=49152, hidden_size=64, intermediate_size=64,
                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    ck = nmq.save_checkpoint(nmq.compress_model(model, progress=False), tmp_path / "ck", source_dir=d, source=str(d))
    assert export_gguf(ck, tmp_path / "m.gguf")["pre_tokenizer"] == "smollm"
    shutil.copy2(tok_dir / "tokenizer.json", ck / "tokenizer.json")
    assert export_gguf(ck, tmp_path / "m2.gguf")["pre_tokenizer"] == "gpt-2"


LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@pytest.mark.parametrize("pre,name", [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated"},
                                            {"type": "ByteLevel", "use_regex": False}]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": LLAMA3.replace("{1,3}", "")}},
                                            {"type": "ByteLevel", "use_regex": False}]}, "qwen2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": " ?[a-z]+"}},
                                            {"type": "ByteLevel", "use_regex": False}]}, "default"),
    (None, "default"),
])
def test_pre_tokenizers_are_named_as_llama_cpp_names_them(pre, name):
    assert pre_tokenizer_name({"pre_tokenizer": pre}, {"source": None}, []) == name


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_transformers_loads_qwen_exports_to_nmqs_logits(arch, tmp_path):
    """Qwen2 (q/k/v biases) and Qwen3 (q/k norms; head_dim 128, the one transformers' GGUF loader assumes) are
    written in Hugging Face's row order, as llama.cpp's Qwen graphs want."""
    config_cls, model_cls = (T.Qwen2Config, T.Qwen2ForCausalLM) if arch == "qwen2" else \
        (T.Qwen3Config, T.Qwen3ForCausalLM)
    extra = {"head_dim": 128} if arch == "qwen3" else {}
    model = model_of(config_cls, model_cls, vocab_size=256, hidden_size=128, intermediate_size=256,
                     num_hidden_layers=2, num_attention_heads=2 if arch == "qwen2" else 1,
                     num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False, **extra)
    model = nmq.compress_model(model, nmq.Recipe(pattern="4:8", group_size=64), progress=False)
    ck = nmq.save_checkpoint(model, tmp_path / "ck")
    r = export_gguf(ck, tmp_path / "m.gguf")
    assert r["architecture"] == arch and r["types"] == {"q4_0": 14}
    assert logits_agree(ck, tmp_path / "m.gguf", 256) < 1e-4


def test_the_built_in_byte_model_gets_its_256_byte_tokens(tmp_path):
    ck = nmq.save_checkpoint(nmq.compress_model(nmq.builtin_model(), progress=False), tmp_path / "ck")
    r = export_gguf(ck, tmp_path / "tiny.gguf")
    assert r["bits_per_weight"] == 4.5 and r["types"] == {"q4_0": 28}
    assert logits_agree(ck, tmp_path / "tiny.gguf", 256) < 1e-4
    fields = gguf.GGUFReader(str(tmp_path / "tiny.gguf")).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert fields["tokenizer.ggml.model"].contents() == "llama" and len(tokens) == 256
    assert tokens[0x41] == "<0x41>" and tokens[0x20] == "\u2581" and fields["tokenizer.ggml.add_bos_token"].contents() is False


@pytest.mark.parametrize("config,words", [
    ({"model_type": "gemma2"}, ["gemma2", "accepted: llama, mistral, qwen2, qwen3"]),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, ["llama3", "accepted"]),
    ({"hidden_act": "gelu"}, ["gelu", "silu"]),
])
def test_what_llama_cpp_would_run_differently_is_refused(tmp_path, config, words):
    ck = nmq.save_checkpoint(nmq.compress_model(nmq.builtin_model(trained=False), progress=False), tmp_path / "ck")
    c = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**c, **config}))
    with pytest.raises(ModelError) as exc:
        export_gguf(ck, tmp_path / "m.gguf")
    assert all(w in str(exc.value) for w in words) and "\n" not in str(exc.value)
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob(".m.gguf*"))


def run(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_to_gguf(capsys, tmp_path):
    ck = tmp_path / "ck"
    assert run(capsys, "compress", "tiny-llama", "-o", str(ck), "--quiet")[0] == 0
    code, out, _ = run(capsys, "export", str(ck), "-o", str(tmp_path / "x.gguf"), "--to", "gguf")
    assert code == 0 and "4.500 bits/weight" in out and "28 q4_0" in out and "written dense" in out
    assert len(out.strip().splitlines()) == 1 and (tmp_path / "x.gguf").is_file()
    code, out, err = run(capsys, "export", str(ck), "-o", str(tmp_path / "x.gguf"), "--to", "gguf")
    assert code == 2 and "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "export", str(ck), "-o", str(tmp_path / "x.gguf"), "--to", "gguf", "--overwrite",
                       "--json")
    assert code == 0 and json.loads(out)["format"] == "gguf"
    gemma = tmp_path / "gemma"
    shutil.copytree(ck, gemma)
    (gemma / "config.json").write_text(json.dumps({**json.loads((ck / "config.json").read_text()),
                                                   "model_type": "gemma2"}))
    code, out, err = run(capsys, "export", str(gemma), "-o", str(tmp_path / "g.gguf"), "--to", "gguf")
    assert code == 2 and "gemma2" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "g.gguf").exists()


def llama_cpp_logits(path, text, special=False):
    """llama.cpp's tokens of ``text`` (``special``: special tokens' texts read as those tokens, as Hugging Face's
    tokenizers do) and its logits on them (llama-cpp-python; skipped where it is missing)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    ids = llm.tokenize(text.encode(), add_bos=False, special=special)
    llm.eval(ids)
    return ids, np.array(llm.scores[: len(ids)]), llm


def relative_error(ck, ids, theirs):
    with torch.no_grad():
        ours = nmq.load_model(ck, backend="reference")(torch.tensor([ids])).logits[0].numpy()
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(ours))


def test_llama_cpp_runs_the_byte_model_on_its_bytes(tmp_path):
    """llama.cpp itself: its tokens are the text's bytes and its logits nmq's, within what its 8-bit activations
    for Q4_0 products cost (0.006; with the q/k rows left unpermuted, 0.26)."""
    ck = nmq.save_checkpoint(nmq.compress_model(nmq.builtin_model(), progress=False), tmp_path / "ck")
    export_gguf(ck, tmp_path / "tiny.gguf")
    text = "import os\ndef h\u00e9llo(x):\n\treturn x  # \u65e5\u672c\r\n"
    ids, logits, llm = llama_cpp_logits(tmp_path / "tiny.gguf", text)
    assert ids == list(text.encode()) and llm.detokenize(ids) == text.encode()
    assert relative_error(ck, ids, logits) < 0.03


def test_llama_cpp_runs_the_smollm2_export_with_its_tokenizer(smollm2_export, smollm2_tokenizer):
    """llama.cpp's BPE from the exported vocabulary gives the tokens SmolLM2's tokenizer gives."""
    from nmq.runtime.text import HFTokenizer

    ck, _, path, _ = smollm2_export
    text = "The capital of France is Paris, isn't it? <|im_start|>"  # no digits: SmolLM2's split them one by one
    ids, logits, _ = llama_cpp_logits(path, text, special=True)
    assert ids == HFTokenizer(smollm2_tokenizer[0]).tok(text, add_special_tokens=False)["input_ids"]
    assert relative_error(ck, ids, logits) < 0.03
