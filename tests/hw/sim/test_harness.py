"""The Verilator harness: a .cpp shipped as package data, driven by named parameters."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import nmq
from nmq.backends.reference import partial_sums, quantized_activations
from nmq.hw.sim.harness import HARNESS, VerilatorSim, harness_source
from nmq.hw.sim.streams import build_streams

ROOT = Path(__file__).resolve().parents[3]


def test_harness_source_ships_with_the_package():
    import nmq.hw.sim

    assert (Path(nmq.hw.sim.__file__).parent / HARNESS).is_file()
    assert "int main" in harness_source()
    # scikit-build-core puts every file under src/nmq into the wheel except wheel.exclude.
    exclude = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]["wheel"]["exclude"]
    assert not [p for p in exclude if fnmatch.fnmatch(f"nmq/hw/sim/{HARNESS}", p)]


def _layer_files(d: Path, tmp_path: Path):
    """A small layer's word files and the named parameters that run it."""
    sim = VerilatorSim(d)
    t = nmq.compress_weight(torch.randn(6, 64, generator=torch.Generator().manual_seed(3)), pattern="2:4",
                            bits=4, group_size=32)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))
    q, _ = quantized_activations(x, t)
    s = build_streams(t, q, sim.cfg)
    params = {}
    for name, words in {"weights": s.weight_words(), "zeros": s.zero_words(), "acts": s.act_words(),
                        "regs": s.register_words()}.items():
        params[name] = tmp_path / f"{name}.bin"
        words.tofile(params[name])
    params.update({"weight-words": s.weight_words().shape[1], "zero-words": s.zero_words().shape[1],
                   "act-words": s.act_words().shape[1], "results": tmp_path / "r.bin",
                   "result-words": sim.cfg.rows, "max-cycles": 100_000})
    return sim.build(), s, partial_sums(x, t)[0], params


def _run(exe: Path, params: dict) -> subprocess.CompletedProcess:
    args = [a for k, v in params.items() for a in (f"--{k}", str(v))]
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)


def test_harness_takes_named_parameters_in_any_order(small_design, tmp_path):
    exe, s, ref, params = _layer_files(small_design[0], tmp_path)
    proc = _run(exe, dict(reversed(params.items())))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["done"] == 1 and report["error"] == 0 and report["consumed"] == report["offered"]
    words = np.fromfile(params["results"], dtype="<u4").reshape(-1, s.cfg.rows)
    assert torch.equal(s.unpack_results(words), ref)


@pytest.mark.parametrize("change,message", [
    ({"regs": None}, "missing --regs; every one of --weights, --weight-words"),
    ({"max-cycles": None}, "missing --max-cycles"),
    ({"rows": 4}, "unknown parameter --rows; accepted --weights"),
    ({"act-words": "eight"}, "--act-words expects a positive integer, got 'eight'"),
    ({"weight-words": 0}, "--weight-words expects a positive integer, got '0'"),
])
def test_harness_refuses_bad_parameters(small_design, tmp_path, change, message):
    exe, _, _, params = _layer_files(small_design[0], tmp_path)
    for key, value in change.items():
        if value is None:
            del params[key]
        else:
            params[key] = value
    proc = _run(exe, params)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("harness: ") and message in proc.stderr, proc.stderr


def test_harness_refuses_a_dangling_name(small_design, tmp_path):
    exe, _, _, params = _layer_files(small_design[0], tmp_path)
    proc = subprocess.run([str(exe), *[a for k, v in params.items() for a in (f"--{k}", str(v))], "--regs"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--regs has no value" in proc.stderr
