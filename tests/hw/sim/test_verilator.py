"""End to end through Verilator: emitted Verilog, the generated harness, bit-exact with the reference."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

import nmq
from nmq.backends.reference import partial_sums, w4a8_matmul
from nmq.hw.config import AcceleratorConfig, HardwareError
from nmq.hw.estimate.cycle_model import layer_cycles
from nmq.hw.sim.driver import simulate_layer

PATTERNS = ["1:4", "2:4", "4:8", "2:8", "1:8", "8:8"]


def test_emitted_verilog_lints_clean(small_design):
    d, info = small_design
    assert info["lint"]["clean"] is True, info["lint"]["messages"]
    assert (d / "config.json").is_file() and (d / "README.md").is_file()
    assert AcceleratorConfig.load(d) == AcceleratorConfig(rows=4, cols=4, max_m=8, weight_bits=8, act_buffer_depth=64)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_random_layers_bit_exact(small_design, pattern, bits):
    d, _ = small_design
    g = torch.Generator().manual_seed(1000 * bits + PATTERNS.index(pattern))
    # 19 rows and 6 tokens: neither is a whole number of tiles; K = 256 with groups of 64.
    t = nmq.compress_weight(torch.randn(19, 250, generator=g), pattern=pattern, bits=bits, group_size=64,
                            symmetric=bits == 4)
    x = torch.randn(6, 250, generator=g) * 2
    run = simulate_layer(d, t, x)
    ref, _ = partial_sums(x, t)
    assert ref.abs().max() > 0
    assert run.bit_exact is True
    assert torch.equal(run.partial_sums, ref)
    # The host-side scaling reproduces the reference W4A8 output.
    torch.testing.assert_close(run.outputs(t), w4a8_matmul(x, t), rtol=1e-6, atol=1e-6)
    assert run.cycles == run.model_cycles


@pytest.mark.parametrize("recipe", [["--pattern", "2:4"], ["--pattern", "4:8", "--bits", "8", "--asymmetric",
                                                         "--metadata", "index", "--group-size", "64"]])
def test_checkpoint_layers_bit_exact(small_design, tmp_path, recipe):
    """Layers of a checkpoint written by `nmq compress`: the real on-disk path, both metadata encodings."""
    d, _ = small_design
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-m", "nmq", "compress", "tiny-llama", "-o", str(ckpt), *recipe, "--quiet"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    from nmq.cli.hw import load_layer

    g = torch.Generator().manual_seed(len(recipe))
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.3.mlp.down_proj"):
        t = load_layer(str(ckpt), name)
        x = torch.randn(5, t.in_features, generator=g)
        run = simulate_layer(d, t, x)
        assert run.bit_exact is True, name
        assert run.cycles == run.model_cycles


def test_cli_simulate_json(small_design):
    d, _ = small_design
    proc = subprocess.run([sys.executable, "-m", "nmq", "hw", "simulate", str(d), "--shape", "40x96",
                           "--pattern", "2:8", "--bits", "8", "--group-size", "32", "--batch", "3", "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert {"cycles", "model_cycles", "bit_exact", "seconds", "pattern", "shape", "batch"} <= set(r)
    assert r["bit_exact"] is True and r["shape"] == [40, 96] and r["batch"] == 3 and r["pattern"] == "2:8"
    assert abs(r["model_cycles"] - r["cycles"]) <= 0.02 * r["cycles"]


def test_sparsity_cuts_rtl_cycles(small_design):
    d, _ = small_design
    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(32, 512, generator=g), torch.randn(4, 512, generator=g)
    cycles = {p: simulate_layer(d, nmq.compress_weight(w, pattern=p, bits=4, group_size=128), x).cycles
              for p in ("4:4", "2:4", "1:4")}
    assert cycles["2:4"] <= 0.55 * cycles["4:4"]
    assert cycles["1:4"] <= 0.30 * cycles["4:4"]


def test_pattern_wider_than_the_array_is_refused(small_design):
    d, _ = small_design
    t = nmq.compress_weight(torch.randn(4, 64), pattern="2:16", bits=4, group_size=64)
    with pytest.raises(HardwareError, match="max M"):
        simulate_layer(d, t, torch.randn(1, 64))


@pytest.mark.slow
def test_llama_sized_layer(llama_design):
    """4096 x 4096: bit-exact, zero skipping pays, the cycle model holds, 2:4 simulates well inside 120 s."""
    d, _ = llama_design
    g = torch.Generator().manual_seed(42)
    w = torch.randn(4096, 4096, generator=g)
    cycles = {}
    for pattern in ("4:4", "2:4", "1:4", "4:8"):
        t = nmq.compress_weight(w, pattern=pattern, bits=4, group_size=128)
        for batch in (1, 16):
            t0 = time.perf_counter()
            run = simulate_layer(d, t, torch.randn(batch, 4096, generator=g))
            wall = time.perf_counter() - t0
            assert run.bit_exact is True, (pattern, batch)
            assert abs(run.model_cycles - run.cycles) <= 0.02 * run.cycles
            assert layer_cycles(AcceleratorConfig(rows=16, cols=16), 4096, 4096, batch, t.pattern.n, t.pattern.m,
                                128).compute_cycles == run.model_cycles
            if pattern == "2:4":
                assert wall <= 120
            cycles[pattern, batch] = run.cycles
    for batch in (1, 16):
        assert cycles["2:4", batch] <= 0.55 * cycles["4:4", batch]
        assert cycles["4:8", batch] <= 0.55 * cycles["4:4", batch]
        assert cycles["1:4", batch] <= 0.30 * cycles["4:4", batch]
