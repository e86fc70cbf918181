"""GGUF sources: the built-in SmolLM2-135M-Instruct (a real pretrained model shipped as a Q4_1 GGUF file)."""

import copy
import os

import pytest
import torch

import nmq
from nmq.errors import ModelError
from nmq.models.checkpoint import load_model, save_checkpoint
from nmq.models.export_gguf import export_gguf
from nmq.models.gguf import STAMP_FILE, converted_directory, load_gguf
from nmq.models.sources import load_source
from nmq.runtime.text import HFTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def smollm2():
    model, path = load_source("smollm2-135m", progress=False)
    return model, path


def test_the_builtin_gguf_model_loads_with_its_tokenizer(smollm2):
    model, path = smollm2
    # converted once into the cache (conftest points NMQ_CACHE_DIR at this run's own directory)
    assert path.is_dir() and (path / STAMP_FILE).is_file() and (path / "chat_template.jinja").is_file()
    c = model.config
    assert (type(model).__name__, c.hidden_size, c.num_hidden_layers, c.vocab_size) == ("LlamaForCausalLM", 576, 30, 49152)
    tok = load_tokenizer(path, c.vocab_size)
    assert isinstance(tok, HFTokenizer) and tok.decode(tok.encode("def main():")) == "def main():"
    chat = tok.decode(tok.chat_ids("Hi"))  # the user's turn, then the assistant's, opened
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), chat


def test_a_compressed_gguf_model_round_trips_with_its_tokenizer(smollm2, tmp_path):
    model, path = smollm2
    recipe = nmq.Recipe(pattern="2:4", group_size=64, targets=r"layers\.(0|1)\.")
    compressed = nmq.compress_model(copy.deepcopy(model), recipe, progress=False)
    out = save_checkpoint(compressed, tmp_path / "ck", source_dir=path, source="smollm2-135m")
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    loaded = load_model(out, backend="reference")
    ids = torch.tensor([HFTokenizer(out).encode("The capital of France is")])
    with torch.no_grad():
        want = compressed(ids).logits
        got = loaded(ids).logits
    assert float((got - want).norm() / want.norm()) < 1e-4
    assert HFTokenizer(out).tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False) == \
        HFTokenizer(path).tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)


def test_a_missing_gguf_file_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not found; accepted: a .gguf file or one of smollm2-135m"):
        load_source(str(tmp_path / "nope.gguf"))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ModelError, match="not a complete GGUF file"):
        load_source(str(tmp_path / "bad.gguf"), progress=False)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A small LLaMA GGUF file (nmq's byte-level built-in, exported as llama.cpp runs it)."""
    tmp = tmp_path_factory.mktemp("tiny-gguf")
    ck = save_checkpoint(nmq.compress_model(nmq.builtin_model(), progress=False), tmp / "ck")
    export_gguf(ck, tmp / "tiny.gguf")
    return tmp / "tiny.gguf"


def test_a_converted_gguf_file_loads_as_the_same_model(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("NMQ_CACHE_DIR", str(tmp_path / "cache"))
    want = load_gguf(tiny_gguf, progress=False)
    got, where = load_source(str(tiny_gguf), progress=False)
    assert where.parent == tmp_path / "cache" / "gguf"
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(got.named_buffers(), want.named_buffers()))
    ids = torch.arange(40).view(1, -1) % 256
    with torch.no_grad():
        assert torch.equal(got(ids).logits, want(ids).logits)
    again, where2 = load_source(str(tiny_gguf), progress=False)  # read from the cache, not converted again
    assert where2 == where and torch.equal(again(ids).logits, want(ids).logits)
    bf16, _ = load_source(str(tiny_gguf), progress=False, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


def test_a_changed_gguf_file_is_converted_again_and_the_cache_can_be_off(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("NMQ_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "m.gguf"
    src.write_bytes(tiny_gguf.read_bytes())
    first = converted_directory(src, progress=False)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # same bytes, touched
    second = converted_directory(src, progress=False)
    assert first != second and second.is_dir()
    monkeypatch.setenv("NMQ_CACHE_DIR", "")
    assert converted_directory(src, progress=False) is None
    _, where = load_source(str(src), progress=False)
    assert where == src  # read from the file itself
