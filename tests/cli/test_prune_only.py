"""``nmq compress ... --bits 16``: pruned checkpoints whose kept values are 16-bit floats."""

import json
import math

import pytest
import torch

import nmq
from nmq.cli.main import main
from nmq.format.load import load_file
from tests.cli.test_cli import one_line_error, run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("b16") / "tiny"
    assert main(["compress", "tiny-llama", "-o", str(out), "--bits", "16", "--quiet"]) == 0
    return out


def test_inspect_shows_16_bit_values_at_8_75_bits_per_weight(capsys, checkpoint):
    code, stdout, _ = run(capsys, "inspect", str(checkpoint), "--json")
    assert code == 0
    s = json.loads(stdout)
    layers = [t for t in s["tensors"] if t["kind"] == "nmq"]
    assert len(layers) == 28
    # tiny-llama is float32: float16 values (more mantissa than bfloat16; these weights are in its range)
    assert all(t["bits"] == 16 and t["value_dtype"] == "float16" and t["group_size"] == -1 for t in layers)
    c = s["compressed"]
    assert c["bits_per_weight"] == 8.75 and set(c["fields"]) == {"values", "meta", "padding"}
    assert c["fields"]["values"]["bits_per_weight"] == 8.0 and c["fields"]["meta"]["bits_per_weight"] == 0.75
    assert s["recipe"]["bits"] == 16 and s["recipe"]["group_size"] == -1
    code, table, _ = run(capsys, "inspect", str(checkpoint))
    assert code == 0 and "2:4 float16" in table and "recipe: 2:4 16-bit floats (prune only)" in table


def test_eval_runs_the_pruned_model(capsys, checkpoint):
    code, stdout, _ = run(capsys, "eval", str(checkpoint), "--perplexity", "--max-tokens", "2000", "--json", "--quiet")
    assert code == 0
    r = json.loads(stdout)
    assert r["tokens"] == 1999 and math.isfinite(r["perplexity"])
    # the same as the model pruned in Python (quantize=False), within the fp16 rounding of its fp32 weights
    from nmq.calibration.data import heldout_path
    from nmq.runtime.evaluate import perplexity

    pruned = nmq.compress_model(nmq.builtin_model(), nmq.Recipe(bits=16), progress=False, quantize=False)
    ids = torch.tensor(list(heldout_path().read_bytes()[:2000]))
    assert r["perplexity"] == pytest.approx(perplexity(pruned, ids, progress=False).perplexity, rel=1e-3)
    dense = json.loads(run(capsys, "eval", "tiny-llama", "--perplexity", "--max-tokens", "2000", "--json")[1])
    assert r["perplexity"] > dense["perplexity"]  # pruning costs something


def test_generate_runs_it_on_the_lean_decoder(capsys, checkpoint):
    code, stdout, _ = run(capsys, "generate", str(checkpoint), "--prompt", "def ", "--max-new-tokens", "6", "--json")
    r = json.loads(stdout)
    assert code == 0 and r["new_tokens"] == 6 and r["decoder"] == "lean" and r["backend"] == "auto"
    model = nmq.load_model(checkpoint)
    greedy = model.generate(torch.tensor([list(b"def ")]), max_new_tokens=6, do_sample=False)[0, 4:].tolist()
    assert r["token_ids"] == greedy
    if "cpu" in nmq.backends.available():
        one_line_error(*run(capsys, "generate", str(checkpoint), "--backend", "cpu"),
                       ["backend 'cpu' cannot run this weight", "16-bit float values", "'reference'"])
    one_line_error(*run(capsys, "generate", str(checkpoint), "--path", "w4a8", "--max-new-tokens", "1"),
                   ["w4a8", "integer weight codes", "w4a16"])


@pytest.mark.parametrize("extra,words", [
    (["--method", "gptq"], ["'gptq' quantizes", "bits 16", "accepted", "magnitude, wanda, sparsegpt"]),
    (["--method", "rtn"], ["'rtn' quantizes", "magnitude, wanda, sparsegpt"]),
    (["--asymmetric"], ["bits 16", "zero points", "symmetric"]),
])
def test_quantizing_settings_with_bits_16_are_one_line(capsys, tmp_path, extra, words):
    out = tmp_path / "never"
    one_line_error(*run(capsys, "compress", "tiny-llama", "-o", str(out), "--bits", "16", *extra), words)
    assert not out.exists()


def test_help_lists_16(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    assert "16: prune only, kept values stored as 16-bit floats" in " ".join(capsys.readouterr().out.split())


def test_a_bfloat16_directory_streams_to_bfloat16_values(capsys, tmp_path):
    """Streamed, tensor by tensor (magnitude) and block by block (sparsegpt): the in-memory run's bytes."""
    nmq.builtin_model().to(torch.bfloat16).save_pretrained(str(tmp_path / "src"))
    for method in ("magnitude", "sparsegpt"):
        common = ["--bits", "16", "--method", method, "--samples", "4", "--seq-len", "64", "--quiet"]
        assert run(capsys, "compress", str(tmp_path / "src"), "-o", str(tmp_path / f"s-{method}"), *common)[0] == 0
        assert run(capsys, "compress", str(tmp_path / "src"), "-o", str(tmp_path / f"m-{method}"), *common,
                   "--in-memory")[0] == 0
        a, b = (load_file(tmp_path / f"{d}-{method}" / "model.nmq.safetensors") for d in ("s", "m"))
        assert sorted(a.compressed) == sorted(b.compressed)
        assert all(a.compressed[n].identical(t) and t.value_dtype == torch.bfloat16 for n, t in b.compressed.items())


def test_a_bare_bfloat16_weight_keeps_bfloat16_values(capsys, tmp_path):
    from safetensors.torch import save_file

    w = torch.randn(32, 64).bfloat16()
    save_file({"w": w}, str(tmp_path / "w.safetensors"))
    assert run(capsys, "compress", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "o.safetensors"),
               "--bits", "16")[0] == 0
    t = load_file(tmp_path / "o.safetensors").compressed["w"]
    assert t.value_dtype == torch.bfloat16 and torch.equal(t.to_dense(torch.bfloat16)[t.to_dense() != 0],
                                                           w[t.to_dense() != 0])
