import json

import pytest
import torch

import nmq
from nmq.bench.common import BenchError
from nmq.bench.e2e.configs import CONFIGS, parse_configs
from nmq.bench.e2e.models import fpga_estimate
from nmq.bench.e2e.worker import Spec, serve
from nmq.cli.main import main
from nmq.compress.prune import is_nm_sparse
from nmq.format.pattern import Pattern
from nmq.models.synthetic import llama_model, random_nmq_tensor
from nmq.shapes import SHAPES


@pytest.mark.parametrize("pattern,bits,symmetric", [("2:4", 4, True), ("4:8", 4, False), ("dense", 8, True), ("3:7", 3, True)])
def test_random_tensors_are_valid(pattern, bits, symmetric):
    p = Pattern.parse(pattern)
    t = random_nmq_tensor(24, 300, p, bits, 7 * 16 if p.m == 7 else 64, symmetric, "rank", torch.Generator().manual_seed(0))
    t.validate()
    dense = t.to_dense()
    assert is_nm_sparse(dense, p) and dense.abs().sum() > 0
    assert 0.005 < float(dense[dense != 0].std()) < 0.05


def test_synthetic_model_has_no_dense_copy_of_compressed_layers():
    model = llama_model(SHAPES["tiny"], nmq.Recipe(pattern="2:4", group_size=128), seed=1)
    assert not any(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if "layers." in n)
    assert isinstance(model.lm_head, torch.nn.Linear)
    with torch.no_grad():
        out = model.generate(torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 5)


def talk(*requests) -> tuple[int, list[dict]]:
    """A worker's exit status and answers to ``requests``, served in this process."""
    answers: list[dict] = []
    lines = [r if isinstance(r, str) else json.dumps(r) for r in requests]
    return serve(iter(line + "\n" for line in lines), answers.append), answers


def build_request(config="nmq-4:8-int4", **spec) -> dict:
    fields = {"model": "tiny", "prompt_tokens": 4, "new_tokens": 3, "backend": "reference", "threads": None,
              "path": "w4a8"}
    return Spec(**(fields | spec)).request(config)


def test_e2e_record():
    code, answers = talk(build_request(), {"op": "round"}, {"op": "finish"})
    assert code == 0 and answers[:2] == [{"ready": True}, {"done": True}]
    r = answers[2]["record"]
    assert {"config", "ms_per_token", "tokens_per_s", "prefill_ms", "peak_rss_gb", "backend"} <= set(r)
    assert r["backend"] == "reference" and len(r["decode_ms"]) == 2 and r["tokens_per_s"] > 0
    assert r["rounds"] == 1 and r["path"] == "w4a8" and r["threads"] >= 1


@pytest.mark.parametrize("requests,words", [
    (["not json"], ["'not json'", "op build"]),
    ([[1, 2]], ["op build"]),
    ([{"op": "round"}], ["op build"]),
    ([{"op": "build", "config": "nmq-2:4-int4", "model": "tiny"}], ["missing", "prompt_tokens"]),
    ([dict(build_request(), colour="red")], ["unknown ['colour']"]),
    ([build_request("fpga-model-2:4-int4")], ["cannot run in a worker", "torch-bf16"]),
    ([dict(build_request(), new_tokens="3")], ["--new-tokens"]),
    ([build_request(), {"op": "finish"}], ["op warmup or round"]),
    ([build_request(), build_request()], ["op warmup or round"]),
])
def test_worker_refuses_a_bad_request_with_one_line(requests, words):
    code, answers = talk(*requests)
    assert code == 2 and "error" in answers[-1] and all("error" not in a for a in answers[:-1])
    assert "\n" not in answers[-1]["error"] and all(w in answers[-1]["error"] for w in words)


def test_worker_ends_quietly_with_its_input():
    assert talk() == (0, [])


def test_config_table():
    assert [c.name for c in parse_configs(" nmq-2:4-int4, torch-fp32 ")] == ["nmq-2:4-int4", "torch-fp32"]
    assert {c.kind for c in CONFIGS.values()} == {"torch", "nmq", "fpga-model"}
    assert all((c.pattern is None) == (c.kind == "torch") and (c.dtype is None) != (c.kind == "torch")
               for c in CONFIGS.values())
    with pytest.raises(BenchError, match="unknown 'nmq-9:8-int4'; accepted: torch-bf16, torch-fp32, nmq-dense-int4"):
        parse_configs("nmq-2:4-int4,nmq-9:8-int4")
    with pytest.raises(BenchError, match="none given"):
        parse_configs(",")


@pytest.mark.parametrize("flag,value", [("--new-tokens", "1"), ("--prompt-tokens", "0"), ("--rounds", "0"),
                                        ("--threads", "0")])
def test_e2e_cli_rejects_bad_counts(capsys, flag, value):
    assert main(["bench", "e2e", "--model", "tiny", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {value}: accepted" in err and len(err.strip().splitlines()) == 1


def test_e2e_cli_rejects_unknown_configs(capsys):
    assert main(["bench", "e2e", "--configs", "nmq-9:8-int4"]) == 2
    assert "accepted" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [(["--layers", "2"], "--layers and --out are for --device cuda")] + (
    [] if torch.cuda.is_available() else [(["--device", "cuda"], "needs a CUDA device")]))
def test_e2e_gpu_options_fail_in_one_line(capsys, argv, words):
    assert main(["bench", "e2e", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err


def test_e2e_gpu_configs_are_checked_by_name():
    from nmq.bench.gpu_decode import GPU_CONFIGS, parse_gpu_configs

    assert [c.name for c in parse_gpu_configs(None)] == list(GPU_CONFIGS)
    assert parse_gpu_configs("nmq-2:4-int4")[0].backend == "triton"
    with pytest.raises(BenchError, match="accepted: torch-fp16"):
        parse_gpu_configs("nmq-2:4-int4,marlin")


def test_fpga_rows_come_from_the_cycle_model():
    dense = fpga_estimate(CONFIGS["fpga-model-dense-int4"], "llama-7b")
    sparse = fpga_estimate(CONFIGS["fpga-model-2:4-int4"], "llama-7b")
    assert sparse["backend"] == "fpga-cycle-model" and sparse["peak_rss_gb"] is None
    assert sparse["tokens_per_s"] > dense["tokens_per_s"] > 0
    assert sparse["cycles_per_token"] < dense["cycles_per_token"]


def test_e2e_nmq_configs_take_turns_in_their_own_processes(capsys):
    """Side by side: one process per configuration (own peak RSS), every round from each, in rotating order."""
    assert main(["bench", "e2e", "--model", "tiny", "--configs", "nmq-2:4-int4,nmq-dense-int4", "--backend",
                 "reference", "--rounds", "3", "--new-tokens", "3", "--prompt-tokens", "4", "--json", "--quiet"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["config"] for r in records] == ["nmq-2:4-int4", "nmq-dense-int4"]
    for r in records:
        assert r["interleaved"] and r["rounds"] == 3 and len(r["round_ms"]) == 3 and len(r["decode_ms"]) == 6
        assert r["backend"] == "reference" and r["tokens_per_s"] > 0 and r["peak_rss_gb"] > 0


def test_e2e_worker_failure_is_one_clear_line(capsys):
    assert main(["bench", "e2e", "--model", "tiny", "--configs", "nmq-2:4-int4,nmq-dense-int4", "--backend",
                 "nonesuch", "--rounds", "1", "--new-tokens", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "configuration nmq-2:4-int4 failed" in err and "nonesuch" in err and "Traceback" not in err


def test_e2e_sequential_runs_each_alone_in_the_order_given(capsys):
    assert main(["bench", "e2e", "--model", "tiny", "--configs", "fpga-model-4:8-int4,nmq-dense-int4", "--rounds", "2", "--new-tokens", "2", "--prompt-tokens", "2", "--sequential",
                 "--json", "--quiet"]) == 0
    fpga, dense = json.loads(capsys.readouterr().out)
    assert fpga["backend"] == "fpga-cycle-model" and "interleaved" not in fpga
    assert dense["config"] == "nmq-dense-int4" and not dense["interleaved"] and dense["round_ms"][1] > 0
