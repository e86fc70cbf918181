"""GGUF sources: the built-in SmolLM2-135M-Instruct (a real pretrained model shipped as a Q4_1 GGUF file)."""

import copy

import pytest
import torch

import nmq
from nmq.errors import ModelError
from nmq.models.checkpoint import load_model, save_checkpoint
from nmq.models.sources import load_source
from nmq.runtime.text import HFTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def smollm2():
    model, path = load_source("smollm2-135m", progress=False)
    return model, path


def test_the_builtin_gguf_model_loads_with_its_tokenizer(smollm2):
    model, path = smollm2
    assert path.suffix == ".gguf"
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
