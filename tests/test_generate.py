import pytest
import torch

import nmq
from nmq.backends import available
from nmq.generate import generate_text
from nmq.text import ByteTokenizer


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
