"""Amaranth-simulator tests of the RTL: the PE alone, then whole small arrays bit-exact with the reference."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

amaranth = pytest.importorskip("amaranth", reason="Amaranth HDL is not installed (pip install amaranth)")

from amaranth.sim import Simulator  # noqa: E402

import nmq  # noqa: E402
from nmq.backends.reference import partial_sums, quantized_activations
from nmq.hw.config import AcceleratorConfig, HardwareError
from nmq.hw.estimate.cycle_model import run_cycles
from nmq.hw.rtl.pe import PE_STAGES, ProcessingElement
from nmq.hw.sim.amaranth import run_streams
from nmq.hw.sim.streams import build_streams


@pytest.mark.parametrize("max_m", [4, 5, 8])
def test_pe_selects_by_position_and_dumps_per_group(max_m):
    """Random (value, position) steps: the PE's shadow holds sum(value * window[position]) of each group."""
    cfg = AcceleratorConfig(rows=1, cols=1, max_m=max_m, weight_bits=8)
    pe = ProcessingElement(cfg)
    rng = np.random.default_rng(max_m)
    groups = [[(int(rng.integers(-255, 256)), int(rng.integers(0, max_m)),
                [int(a) for a in rng.integers(-127, 128, max_m)]) for _ in range(int(rng.integers(1, 9)))]
              for _ in range(6)]
    expected = [sum(v * acts[p] for v, p, acts in g) for g in groups]
    got = []

    async def bench(ctx):
        for g in groups:
            for i, (v, p, acts) in enumerate(g):
                ctx.set(pe.w.val, v)
                ctx.set(pe.w.pos, p)
                ctx.set(pe.a_win, acts)
                ctx.set(pe.w.valid, 1)
                ctx.set(pe.w.last, i == len(g) - 1)
                await ctx.tick()
                # A bubble between steps must not change the sum.
                ctx.set(pe.w.valid, 0)
                ctx.set(pe.w.val, int(rng.integers(-255, 256)))
                await ctx.tick()
            # The sum lands PE_STAGES cycles after the last step entered, flagged by done.
            for _ in range(PE_STAGES - 2):
                assert not ctx.get(pe.done)
                await ctx.tick()
            assert ctx.get(pe.done)
            got.append(ctx.get(pe.shadow))
            assert ctx.get(pe.w_o.last) == 0

    sim = Simulator(pe)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == expected
    assert any(e != 0 for e in expected)


def _case(cfg, pattern, bits, group, symmetric, tokens, out=7, k=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = nmq.compress_weight(torch.randn(out, k, generator=g), pattern=pattern, bits=bits,
                            group_size=group, symmetric=symmetric)
    x = torch.randn(tokens, k, generator=g) * 3
    ref, _ = partial_sums(x, t)
    q, _ = quantized_activations(x, t)
    return t, ref, build_streams(t, q, cfg)


CASES = [
    # (rows, cols, max_m, weight_bits), pattern, bits, group, symmetric, tokens
    ((3, 2, 8, 4), "2:4", 4, 16, True, 3),
    ((2, 3, 8, 4), "1:4", 4, 8, True, 4),
    ((2, 2, 8, 8), "4:8", 8, 16, False, 2),
    ((3, 4, 8, 8), "2:8", 8, 32, True, 5),
    ((2, 4, 8, 4), "1:8", 4, 16, False, 6),     # 2-step groups: padded up to the 4 columns
    ((3, 2, 8, 8), "4:4", 8, 8, True, 2),       # dense
    ((2, 3, 8, 4), "dense", 4, 4, True, 3),     # 1:1
    ((4, 3, 5, 4), "3:5", 4, -1, False, 2),     # M not a power of two, one group per row
    ((2, 5, 16, 8), "2:16", 4, 32, True, 7),
]


@pytest.mark.parametrize("buffer", [0, 64])
@pytest.mark.parametrize("geom,pattern,bits,group,symmetric,tokens", CASES)
def test_array_bit_exact_with_reference(geom, pattern, bits, group, symmetric, tokens, buffer):
    r, c, max_m, wb = geom
    cfg = AcceleratorConfig(rows=r, cols=c, max_m=max_m, weight_bits=wb, act_buffer_depth=buffer)
    _, ref, s = _case(cfg, pattern, bits, group, symmetric, tokens, seed=zlib.crc32(pattern.encode()))
    assert ref.abs().max() > 0
    # K = 70 padded: at most 70 M-groups per pass, so a 64-window buffer holds most cases' passes.
    assert s.reuse == (buffer >= s.groups * s.windows)
    words, cycles = run_streams(cfg, s)
    assert torch.equal(s.unpack_results(words), ref)
    assert cycles == run_cycles(cfg, s.total_groups, s.windows * s.n)


@pytest.mark.parametrize("pattern,group,k", [("1:4", 4, 4), ("1:4", 8, 32), ("2:4", 16, 64), ("4:8", 8, 40)])
def test_activation_buffer_replays_a_token_tile(pattern, group, k):
    """Activations streamed once per token tile, replayed for every row tile, under back-pressure;
    N = 1 and one-window passes exercise the buffer's read-ahead."""
    cfg = AcceleratorConfig(rows=2, cols=2, max_m=8, weight_bits=4, act_buffer_depth=16)
    _, ref, s = _case(cfg, pattern, 4, group, False, 3, out=7, k=k, seed=k)
    assert s.reuse and s.row_tiles == 4
    assert len(s.acts) == s.token_tiles * s.groups * s.windows
    for stall in (0.0, 0.3):
        words, _ = run_streams(cfg, s, stall=stall, seed=k)
        assert torch.equal(s.unpack_results(words), ref)


def test_array_survives_random_backpressure():
    """Inputs withheld and results refused at random: same results, more cycles."""
    cfg = AcceleratorConfig(rows=3, cols=3, max_m=8, weight_bits=8)
    _, ref, s = _case(cfg, "2:8", 8, 16, False, 4, seed=5)
    words, cycles = run_streams(cfg, s, stall=0.35, seed=11)
    assert torch.equal(s.unpack_results(words), ref)
    assert cycles > run_cycles(cfg, s.total_groups, s.windows * s.n)


def test_one_design_runs_every_pattern():
    """N and M are runtime registers: one elaborated array, several patterns."""
    cfg = AcceleratorConfig(rows=2, cols=2, max_m=8, weight_bits=4)
    for pattern in ("1:4", "3:8", "8:8"):
        _, ref, s = _case(cfg, pattern, 4, 16, True, 2, out=3, k=32, seed=7)
        words, _ = run_streams(cfg, s)
        assert torch.equal(s.unpack_results(words), ref), pattern


def test_zero_skipping_costs_n_steps_per_group():
    cfg = AcceleratorConfig(rows=2, cols=2, max_m=8, weight_bits=4)
    cycles = {}
    for pattern in ("2:8", "8:8"):
        _, _, s = _case(cfg, pattern, 4, 64, True, 2, out=2, k=256, seed=3)
        cycles[pattern] = run_streams(cfg, s)[1]
    assert cycles["2:8"] < 0.3 * cycles["8:8"]


def test_bad_position_raises_the_error_flag():
    cfg = AcceleratorConfig(rows=2, cols=2, max_m=8, weight_bits=4)
    _, _, s = _case(cfg, "2:4", 4, 8, True, 2, out=2, k=16, seed=1)
    s.w_pos = s.w_pos.copy()
    s.w_pos[3, 1] = 5          # position 5 in a group of M = 4
    with pytest.raises(HardwareError, match="error flag"):
        run_streams(cfg, s)


def test_bad_runtime_registers_raise_the_error_flag():
    cfg = AcceleratorConfig(rows=2, cols=2, max_m=4, weight_bits=4)
    _, _, s = _case(cfg, "2:4", 4, 8, True, 2, out=2, k=16, seed=1)
    s.n = 3
    s.m = 2                    # N > M
    with pytest.raises(HardwareError, match="error flag"):
        run_streams(cfg, s)


def test_pass_longer_than_the_buffer_raises_the_error_flag():
    cfg = AcceleratorConfig(rows=2, cols=2, max_m=4, weight_bits=4, act_buffer_depth=2)
    _, _, s = _case(cfg, "2:4", 4, 8, True, 2, out=4, k=16, seed=1)
    assert not s.reuse             # 4 M-groups per pass do not fit 2 windows: the host streams every pass
    s.reuse = True                 # ...and the design refuses to be told otherwise
    with pytest.raises(HardwareError, match="error flag"):
        run_streams(cfg, s)
