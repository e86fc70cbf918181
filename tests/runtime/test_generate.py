import pytest
import torch

import nmq
from nmq.backends import available
from nmq.runtime.generate import generate_text
from nmq.runtime.text import ByteTokenizer
from tests.runtime.test_decoder import random_llama


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


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_lean_decoder_generates_what_generate_does(temperature):
    from nmq.runtime.generate import generate_ids

    model = random_llama(torch.float32, seed=2)
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


@pytest.mark.parametrize("decoder", ["auto", "hf"])
def test_stop_at_eos_ends_the_reply_before_its_first_end_token(decoder):
    from nmq.runtime.generate import generate_ids

    model = random_llama(torch.float32, seed=2)
    ids = torch.randint(0, 300, (1, 7), generator=torch.Generator().manual_seed(3))
    free = generate_ids(model, ids, 20, decoder=decoder).token_ids
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])  # first seen at step i >= 3
    model.generation_config.eos_token_id = stop
    r = generate_ids(model, ids, 20, decoder=decoder, stop_at_eos=True)
    assert r.token_ids == free[: free.index(stop)]
    assert r.decoder == ("lean" if decoder == "auto" else "hf")
    assert len(generate_ids(model, ids, 20, decoder=decoder).token_ids) == 20  # without it, exactly 20


def test_chat_needs_a_chat_template():
    from nmq.errors import ModelError

    with pytest.raises(ModelError, match="no chat template"):
        generate_text(nmq.builtin_model(), ByteTokenizer(), "hi", max_new_tokens=2, chat=True)
