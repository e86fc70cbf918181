import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from nmq.cli.main import main


def run(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    rng = np.random.default_rng(0)
    np.save(d / "w4096.npy", rng.standard_normal((4096, 4096), dtype=np.float32))
    np.save(d / "small.npy", rng.standard_normal((64, 256), dtype=np.float32))
    np.save(d / "vec.npy", rng.standard_normal(256, dtype=np.float32))
    np.save(d / "cube.npy", rng.standard_normal((2, 64, 256), dtype=np.float32))
    nan = rng.standard_normal((64, 256), dtype=np.float32)
    nan[5, 7] = np.nan
    np.save(d / "nan.npy", nan)
    return d


@pytest.mark.parametrize("metadata,bpw,min_ratio", [("index", 3.125, 5.1), ("rank", 2.875, 5.5)])
def test_model_checkpoint_storage(capsys, tmp_path, metadata, bpw, min_ratio):
    out = tmp_path / "ck"
    code, stdout, _ = run(capsys, "compress", "tiny-llama", "-o", str(out), "--metadata", metadata, "--quiet")
    assert code == 0 and "wrote" in stdout
    code, stdout, _ = run(capsys, "inspect", str(out), "--json")
    s = json.loads(stdout)
    assert set(s) >= {"tensors", "compressed", "checkpoint"}
    c = s["compressed"]
    assert c["bits_per_weight"] <= bpw and c["ratio_vs_fp16"] >= min_ratio
    assert set(c["fields"]) >= {"values", "meta", "scales", "padding"}
    for key in ("bits_per_weight", "bytes", "ratio_vs_fp16", "ratio_vs_fp32", "fields"):
        assert key in s["checkpoint"]
    assert s["checkpoint"]["bits_per_weight"] > c["bits_per_weight"]  # embeddings and lm_head stay dense
    dtypes = {t["name"]: t["dtype"] for t in s["tensors"] if t["kind"] == "dense"}
    # An fp32 source's dense matrices are stored as bf16 by default, its vectors (norms) as they were.
    assert dtypes["lm_head.weight"] == dtypes["model.embed_tokens.weight"] == "bfloat16"
    assert dtypes["model.norm.weight"] == "float32"
    code, table, _ = run(capsys, "inspect", str(out))
    assert "bits/weight" in table and "lm_head.weight" in table


@pytest.mark.parametrize("metadata,bpw", [("index", 3.125), ("rank", 2.875)])
def test_bare_4096_weight_storage(capsys, tmp_path, weights, metadata, bpw):
    out = tmp_path / "w.safetensors"
    code, _, _ = run(capsys, "compress", str(weights / "w4096.npy"), "-o", str(out), "--metadata", metadata)
    assert code == 0
    code, stdout, _ = run(capsys, "inspect", str(out), "--json")
    assert json.loads(stdout)["compressed"]["bits_per_weight"] == bpw


def one_line_error(code, out, err, expected_words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmq: error: ")
    assert "Traceback" not in err
    for word in expected_words:
        assert word in lines[0]


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--pattern", "5:4"], ["N=5", "1 <= N <= M <= 16"]),
        (["--pattern", "2:32"], ["M=32", "1 <= N <= M <= 16"]),
        (["--pattern", "4:8", "--group-size", "100"], ["group size 100", "multiple of 8"]),
        (["--bits", "5"], ["bits=5", "accepted"]),
        (["--method", "sorcery"], ["sorcery", "accepted"]),
    ],
)
def test_bad_recipes(capsys, tmp_path, extra, words):
    out = tmp_path / "never"
    one_line_error(*run(capsys, "compress", "tiny-llama", "-o", str(out), *extra), words)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,words", [("nan.npy", ["NaN/Inf"]), ("vec.npy", ["1 dimension", "2-D"]),
                                        ("cube.npy", ["3 dimension", "2-D"])])
def test_bad_weights(capsys, tmp_path, weights, name, words):
    out = tmp_path / "out.safetensors"
    one_line_error(*run(capsys, "compress", str(weights / name), "-o", str(out)), words)
    assert list(tmp_path.iterdir()) == []


def test_nan_in_a_model_layer(capsys, tmp_path):
    import torch

    import nmq

    model = nmq.builtin_model()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 3] = float("nan")
    model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "ck"
    one_line_error(*run(capsys, "compress", str(tmp_path / "hf"), "-o", str(out), "--quiet"),
                   ["model.layers.1.mlp.up_proj", "NaN/Inf"])
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_existing_output_needs_overwrite(capsys, tmp_path, weights):
    out = tmp_path / "w.safetensors"
    assert run(capsys, "compress", str(weights / "small.npy"), "-o", str(out))[0] == 0
    before = out.read_bytes()
    one_line_error(*run(capsys, "compress", str(weights / "small.npy"), "-o", str(out), "--pattern", "4:8"),
                   ["exists", "--overwrite"])
    assert out.read_bytes() == before
    assert run(capsys, "compress", str(weights / "small.npy"), "-o", str(out), "--pattern", "4:8", "--overwrite")[0] == 0
    assert out.read_bytes() != before
    ck = tmp_path / "ck"
    ck.mkdir()
    one_line_error(*run(capsys, "compress", "tiny-llama", "-o", str(ck)), ["exists"])


def test_damaged_checkpoints(capsys, tmp_path, weights):
    good = tmp_path / "w.safetensors"
    run(capsys, "compress", str(weights / "small.npy"), "-o", str(good))
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(*run(capsys, "inspect", str(tmp_path / "cut.safetensors")), ["cut.safetensors"])
    flipped = bytearray(data)
    flipped[len(data) - 50] ^= 4
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    one_line_error(*run(capsys, "inspect", str(tmp_path / "flip.safetensors")), ["flip.safetensors", "checksum"])
    one_line_error(*run(capsys, "inspect", str(tmp_path / "absent")), ["no such file"])


def test_newer_version_checkpoint(capsys, tmp_path, weights):
    from tests.format.test_file import _rewrite_header

    path = tmp_path / "w.safetensors"
    run(capsys, "compress", str(weights / "small.npy"), "-o", str(path))
    _rewrite_header(path, lambda d: d.update(version=7))
    one_line_error(*run(capsys, "inspect", str(path)), ["version 7", "upgrade"])


@pytest.mark.parametrize("command", ["compress", "inspect", "demo", "eval", "bench", "generate", "export"])
def test_help_has_examples(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out


def test_demo_from_the_entry_point_is_quick_and_passes():
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items()}
    proc = subprocess.run([sys.executable, "-m", "nmq", "demo", "--json", "--quiet"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["check_passed"] and result["logits_rel_err_vs_dequantized"] <= 1e-4
    assert result["storage"]["compressed"]["bits_per_weight"] == 2.875
    assert time.perf_counter() - start < 60


def test_calibrated_compress_then_eval(capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 40)
    out = tmp_path / "ck"
    code, _, err = run(capsys, "compress", "tiny-llama", "-o", str(out), "--method", "sparsegpt", "--pattern", "4:8",
                       "--samples", "4", "--seq-len", "64", "--calibration", str(text), "--quiet")
    assert code == 0, err
    code, stdout, _ = run(capsys, "eval", str(out), "--perplexity", str(text), "--window", "128", "--stride", "64", "--json")
    r = json.loads(stdout)
    assert code == 0 and r["tokens"] == len(text.read_bytes()) - 1 and 1 < r["perplexity"] < 256
    code, stdout, _ = run(capsys, "eval", "tiny-llama", "--perplexity", str(text), "--window", "128", "--stride", "64", "--json")
    dense = json.loads(stdout)["perplexity"]
    assert dense < r["perplexity"] * 1.5  # a 4:8 model stays in the same range as the dense one
    code, stdout, _ = run(capsys, "eval", "tiny-llama", "--perplexity", str(text), "--max-tokens", "300", "--json")
    assert code == 0 and json.loads(stdout)["tokens"] == 299
    one_line_error(*run(capsys, "eval", "tiny-llama", "--perplexity", str(text), "--max-tokens", "-1"),
                   ["--max-tokens", "accepted"])


def test_bench_accuracy_records(capsys):
    code, stdout, _ = run(capsys, "bench", "accuracy", "--rows", "dense,int4-rtn,2:4-wanda", "--eval-bytes", "3000",
                          "--samples", "2", "--seq-len", "64", "--json", "--quiet")
    assert code == 0
    records = json.loads(stdout)
    assert [r["row"] for r in records] == ["dense", "int4-rtn", "2:4-wanda"]
    for r in records:
        assert set(r) >= {"row", "perplexity", "recipe", "calibration", "seconds"}
    assert records[2]["calibration"]["samples"] == 2 and records[0]["calibration"] is None
    one_line_error(*run(capsys, "bench", "accuracy", "--rows", "nope"), ["nope", "accepted"])


def test_calibrated_method_on_a_bare_weight_is_refused(capsys, tmp_path, weights):
    one_line_error(*run(capsys, "compress", str(weights / "small.npy"), "-o", str(tmp_path / "x.safetensors"),
                        "--method", "wanda"), ["needs a model"])
    assert list(tmp_path.iterdir()) == []


def test_generate_streams_and_reports_timing(capsys, tmp_path):
    out = tmp_path / "ck"
    assert run(capsys, "compress", "tiny-llama", "-o", str(out), "--quiet")[0] == 0
    code, stdout, _ = run(capsys, "generate", str(out), "--prompt", "def ", "--max-new-tokens", "12",
                          "--backend", "reference", "--json")
    r = json.loads(stdout)
    assert code == 0 and r["new_tokens"] == 12 and r["prefill_ms"] > 0 and r["tokens_per_s"] > 0
    import torch

    import nmq

    model = nmq.load_model(out, backend="reference")
    ids = torch.tensor([list(b"def ")])
    greedy = model.generate(ids, max_new_tokens=12, do_sample=False)[0, 4:].tolist()
    assert r["token_ids"] == greedy
    code, stdout, err = run(capsys, "generate", "tiny-llama", "--prompt", "x = ", "--max-new-tokens", "5")
    assert code == 0 and stdout.startswith("x = ") and "tokens/s" in err
    one_line_error(*run(capsys, "generate", str(out), "--backend", "tpu"), ["tpu", "accepted"])


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory):
    """A truncated GGUF, a GGUF of a family nmq does not run, a sharded directory without one shard."""
    import gguf
    import transformers as T

    from nmq.models.gguf import builtin_gguf_path

    d = tmp_path_factory.mktemp("bad-sources")
    data = builtin_gguf_path("smollm2-135m").read_bytes()
    (d / "truncated.gguf").write_bytes(data[: len(data) // 2])
    w = gguf.GGUFWriter(str(d / "bloom.gguf"), "bloom")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    config = T.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    T.LlamaForCausalLM(config).save_pretrained(str(d / "sharded"), max_shard_size="100KB")
    (d / "sharded" / "model-00002-of-00005.safetensors").unlink()
    return d


@pytest.mark.parametrize("source,words", [
    ("truncated.gguf", ["not a complete GGUF file", "truncated"]),
    ("bloom.gguf", ["architecture 'bloom' is not supported", "accepted: llama"]),
    ("sharded", ["shard model-00002-of-00005.safetensors is missing"]),
])
def test_bad_model_sources(capsys, tmp_path, bad_sources, source, words):
    one_line_error(*run(capsys, "compress", str(bad_sources / source), "-o", str(tmp_path / "ck"), "--quiet"), words)
    assert not (tmp_path / "ck").exists()


def test_export_prints_its_storage_and_refuses_bad_input(capsys, tmp_path):
    ck = tmp_path / "ck"
    assert run(capsys, "compress", "tiny-llama", "-o", str(ck), "--quiet")[0] == 0
    code, stdout, _ = run(capsys, "export", str(ck), "-o", str(tmp_path / "ct"), "--json")
    r = json.loads(stdout)
    assert code == 0 and r["format"] == "pack-quantized" and r["bits_per_weight"] == 4.25
    code, stdout, _ = run(capsys, "export", str(ck), "-o", str(tmp_path / "ct2"))
    assert code == 0 and "4.250 bits/weight" in stdout and "written dense" in stdout
    one_line_error(*run(capsys, "export", str(ck), "-o", str(tmp_path / "ct")), ["exists", "--overwrite"])
    one_line_error(*run(capsys, "export", str(tmp_path), "-o", str(tmp_path / "ct3")), ["not an nmq checkpoint"])


def test_resume_without_an_interrupted_run_is_one_line(capsys, tmp_path):
    import transformers as T

    config = T.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2)
    T.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "src"))
    one_line_error(*run(capsys, "compress", str(tmp_path / "src"), "-o", str(tmp_path / "ck"), "--resume", "--quiet"),
                   ["--resume", "no interrupted run"])
    one_line_error(*run(capsys, "compress", "tiny-llama", "-o", str(tmp_path / "ck"), "--resume", "--quiet"),
                   ["cannot be compressed streamed"])


def test_a_calibrated_compression_of_a_directory_streams_block_by_block(capsys, tmp_path):
    import nmq
    from nmq.format.load import load_file

    nmq.builtin_model().save_pretrained(str(tmp_path / "src"))  # byte-level: calibrates on the stdlib's text
    common = ["--method", "sparsegpt", "--samples", "4", "--seq-len", "64"]
    code, _, err = run(capsys, "compress", str(tmp_path / "src"), "-o", str(tmp_path / "streamed"), *common)
    assert code == 0 and "streamed, one block in memory at a time" in err
    assert run(capsys, "compress", str(tmp_path / "src"), "-o", str(tmp_path / "mem"), *common, "--in-memory",
               "--quiet")[0] == 0
    a, b = (load_file(tmp_path / d / "model.nmq.safetensors") for d in ("streamed", "mem"))
    assert sorted(a.compressed) == sorted(b.compressed) and all(a.compressed[n].identical(b.compressed[n]) for n in b.compressed)


def test_generate_says_so_when_the_model_ends_at_once(capsys, monkeypatch):
    # A model whose first token ends the sequence prints no text and has no step to time: say that, not "nan ms".
    from nmq.runtime import generate

    monkeypatch.setattr(generate, "generate_text", lambda *a, **k: generate.Generation("hi", "", [], 3, float("nan")))
    code, out, err = run(capsys, "generate", "tiny-llama", "--prompt", "hi", "--chat", "--quiet")
    assert code == 0 and out.strip() == ""
    assert "no new tokens: the model ended its answer at once (3 prompt tokens" in err and "nan" not in err
