"""Streamed compression (one tensor in memory) writes what the in-memory path writes."""

import json

import pytest
import torch
import transformers as T

import nmq
from nmq.calibration.stream import compress_streaming, stream_blocker
from nmq.errors import ModelError
from nmq.format.load import load_file
from nmq.models.checkpoint import read_record
from nmq.models.sources import load_source

COMMON = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)
CASES = {
    "llama-bf16-tied-sharded": (T.LlamaConfig, T.LlamaForCausalLM, {"tie_word_embeddings": True}, torch.bfloat16),
    "qwen2-fp16-biases": (T.Qwen2Config, T.Qwen2ForCausalLM, {}, torch.float16),
    "phi3-fp32-fused": (T.Phi3Config, T.Phi3ForCausalLM, {"pad_token_id": None}, torch.float32),
}


def write_source(case, path):
    config_cls, model_cls, extra, dtype = CASES[case]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_cls(config_cls(**COMMON, **extra)).to(dtype)
    model.save_pretrained(str(path), max_shard_size="60KB")
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_checkpoint_equals_the_in_memory_one(case, tmp_path, monkeypatch):
    from nmq.calibration import stream

    monkeypatch.setattr(stream, "ROWS_PER_CHUNK", 48)  # layers compressed in row chunks, the last one short
    src = write_source(case, tmp_path / "src")
    recipe = nmq.Recipe(pattern="2:4", group_size=64, symmetric=case != "phi3-fp32-fused")
    assert stream_blocker(src, recipe) is None
    streamed = compress_streaming(src, tmp_path / "streamed", recipe, dense_dtype=torch.bfloat16, progress=False)
    model, _ = load_source(str(src), progress=False)
    in_memory = nmq.save_checkpoint(nmq.compress_model(model, recipe, progress=False), tmp_path / "mem",
                                    source_dir=src, source=str(src), dense_dtype=torch.bfloat16)
    a, b = load_file(streamed / "model.nmq.safetensors"), load_file(in_memory / "model.nmq.safetensors")
    assert sorted(a.compressed) == sorted(b.compressed) and a.compressed
    assert all(a.compressed[n].identical(b.compressed[n]) for n in a.compressed)
    assert a.dense.keys() == b.dense.keys()
    assert all(a.dense[n].dtype == b.dense[n].dtype and torch.equal(a.dense[n], b.dense[n]) for n in a.dense)
    assert read_record(streamed) == read_record(in_memory)
    config = [json.loads((d / "config.json").read_text()) for d in (streamed, in_memory)]
    assert config[0]["dtype"] == config[1]["dtype"]
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.equal(nmq.load_model(streamed, backend="reference")(ids).logits,
                           nmq.load_model(in_memory, backend="reference")(ids).logits)


TOKENS = torch.randint(0, 320, (6, 32), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("case", "method"), [("llama-bf16-tied-sharded", "sparsegpt"), ("qwen2-fp16-biases", "wanda"),
                                              ("phi3-fp32-fused", "gptq")])
def test_calibrated_streaming_block_by_block_equals_the_in_memory_run(case, method, tmp_path):
    src = write_source(case, tmp_path / "src")
    recipe = nmq.Recipe(pattern="4:4" if method == "gptq" else "2:4", group_size=64, method=method)
    streamed = compress_streaming(src, tmp_path / "streamed", recipe, dense_dtype=torch.bfloat16, progress=False,
                                  calibration=TOKENS, batch=4)
    model, _ = load_source(str(src), progress=False)
    in_memory = nmq.save_checkpoint(nmq.compress_model(model, recipe, TOKENS, progress=False, batch=4),
                                    tmp_path / "mem", source_dir=src, source=str(src), dense_dtype=torch.bfloat16)
    a, b = load_file(streamed / "model.nmq.safetensors"), load_file(in_memory / "model.nmq.safetensors")
    assert sorted(a.compressed) == sorted(b.compressed) and len(a.compressed) >= 8
    assert all(a.compressed[n].identical(b.compressed[n]) for n in a.compressed)
    assert a.dense.keys() == b.dense.keys()
    assert all(a.dense[n].dtype == b.dense[n].dtype and torch.equal(a.dense[n], b.dense[n]) for n in a.dense)
    assert read_record(streamed) == read_record(in_memory)


def test_a_calibrated_run_interrupted_mid_block_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    from nmq.calibration import run as calibration_run

    src = write_source("llama-bf16-tied-sharded", tmp_path / "src")
    recipe = nmq.Recipe(pattern="2:4", group_size=64, method="sparsegpt")
    whole = compress_streaming(src, tmp_path / "whole", recipe, progress=False, calibration=TOKENS, batch=4)
    calls, real = [], calibration_run._compress_group

    def dies_in_the_second_block(*args):
        calls.append(1)
        if len(calls) == 6:  # block 1's second group (4 groups a block)
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(calibration_run, "_compress_group", dies_in_the_second_block)
    with pytest.raises(KeyboardInterrupt):
        compress_streaming(src, tmp_path / "ck", recipe, progress=False, calibration=TOKENS, batch=4)
    monkeypatch.undo()
    partial = tmp_path / "ck.partial"
    assert json.loads((partial / "journal.json").read_text())["blocks"] == 1 and not (partial / "nmq.json").exists()
    with pytest.raises(ModelError, match="--resume: the interrupted run has calibration"):
        compress_streaming(src, tmp_path / "ck", recipe, progress=False, calibration=TOKENS[:4], batch=4, resume=True)
    out = compress_streaming(src, tmp_path / "ck", recipe, progress=False, calibration=TOKENS, batch=4, resume=True)
    for fname in ("model.nmq.safetensors", "nmq.json", "config.json"):
        assert (out / fname).read_bytes() == (whole / fname).read_bytes(), fname
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.iterdir())


def test_what_cannot_stream_says_why(tmp_path):
    src = write_source("llama-bf16-tied-sharded", tmp_path / "src")
    assert stream_blocker(src, nmq.Recipe(method="sparsegpt")) is None  # block by block
    assert "shares its weight" in stream_blocker(src, nmq.Recipe(ignore=()))  # a tied lm_head compressed too
    config = T.Gemma2Config(**COMMON, head_dim=32)
    T.Gemma2ForCausalLM(config).save_pretrained(str(tmp_path / "gemma"))
    assert "embed_scale" in stream_blocker(tmp_path / "gemma", nmq.Recipe())
    with pytest.raises(ModelError, match="cannot be compressed streamed"):
        compress_streaming(tmp_path / "gemma", tmp_path / "out", nmq.Recipe(), progress=False)
    assert not (tmp_path / "out").exists()


def test_the_summary_of_a_header_equals_the_validated_one(tmp_path):
    from nmq.models.summary import summarize

    ck = nmq.save_checkpoint(nmq.compress_model(nmq.builtin_model(), nmq.Recipe(symmetric=False), progress=False),
                             tmp_path / "ck")
    assert summarize(ck, validate=False) == summarize(ck)


def test_an_interrupted_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    from nmq.calibration import stream

    src = write_source("llama-bf16-tied-sharded", tmp_path / "src")
    recipe = nmq.Recipe(pattern="2:4", group_size=64)
    whole = compress_streaming(src, tmp_path / "whole", recipe, progress=False)
    calls, real = [], stream.compress_rows

    def dies_at_the_fifth_layer(w, r):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(w, r)

    monkeypatch.setattr(stream, "compress_rows", dies_at_the_fifth_layer)
    with pytest.raises(KeyboardInterrupt):
        compress_streaming(src, tmp_path / "ck", recipe, progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "ck").exists() and not (tmp_path / "ck.partial" / "nmq.json").exists()
    with pytest.raises(ModelError, match="pass --resume to continue it"):
        compress_streaming(src, tmp_path / "ck", recipe, progress=False)
    with pytest.raises(ModelError, match="--resume: the interrupted run has recipe"):
        compress_streaming(src, tmp_path / "ck", nmq.Recipe(pattern="4:8", group_size=64), progress=False, resume=True)
    out = compress_streaming(src, tmp_path / "ck", recipe, progress=False, resume=True)
    assert not (tmp_path / "ck.partial").exists()
    for fname in ("model.nmq.safetensors", "nmq.json", "config.json"):
        assert (out / fname).read_bytes() == (whole / fname).read_bytes(), fname
