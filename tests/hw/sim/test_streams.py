"""Host-side tiling: the beat streams carry exactly the reference's arithmetic, and pack as the ports expect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nmq
from nmq.backends.reference import partial_sums, quantized_activations
from nmq.hw.config import AcceleratorConfig, HardwareError
from nmq.hw.sim.streams import build_streams, pack_lanes


def test_pack_lanes_matches_the_port_layout():
    rng = np.random.default_rng(0)
    codes, pos = rng.integers(0, 16, (70000, 5)), rng.integers(0, 8, (70000, 5))
    words = pack_lanes([(codes, 4), (pos, 3)])
    assert words.shape == (70000, 2)
    for i in (0, 1, 65535, 65536, 69999):      # across the chunk boundary too
        want = sum((int(codes[i, r]) | int(pos[i, r]) << 4) << (7 * r) for r in range(5))
        assert int.from_bytes(words[i].tobytes(), "little") == want


def _software_array(s):
    """What the array computes from the streams, step by step, in numpy."""
    cfg = s.cfg
    R, C = cfg.rows, cfg.cols
    steps_per_group = s.windows * s.n
    code = s.w_code.reshape(s.total_groups, s.windows, s.n, R).astype(np.int64)
    pos = s.w_pos.reshape(s.total_groups, s.windows, s.n, R)
    zero = s.zeros.reshape(s.total_groups, 1, 1, R).astype(np.int64)
    acts = s.acts.reshape(s.total_groups, s.windows, C, cfg.max_m).astype(np.int64)
    assert steps_per_group * s.total_groups == len(s.w_code)
    # act[g, w, c, pos[g, w, k, r]] for every row r and column c
    a = np.take_along_axis(acts[:, :, None, :, :].repeat(s.n, 2)[:, :, :, None, :, :].repeat(R, 3),
                           pos[..., None, None].repeat(C, 4), axis=5)[..., 0]
    p = ((code - zero)[..., None] * a).sum(axis=(1, 2))          # [groups, R, C]
    return p.transpose(0, 2, 1).reshape(-1, R).astype(np.int32).view(np.uint32)


@pytest.mark.parametrize("pattern,bits,group,symmetric", [("2:4", 4, 128, True), ("1:8", 8, 64, False),
                                                         ("3:5", 4, -1, False), ("16:16", 8, 32, True)])
def test_streams_reproduce_partial_sums(pattern, bits, group, symmetric):
    cfg = AcceleratorConfig(rows=8, cols=3, max_m=16, weight_bits=8)
    g = torch.Generator().manual_seed(bits)
    t = nmq.compress_weight(torch.randn(45, 300, generator=g), pattern=pattern, bits=bits, group_size=group,
                            symmetric=symmetric)
    x = torch.randn(7, 300, generator=g)
    q, _ = quantized_activations(x, t)
    s = build_streams(t, q, cfg)
    ref, _ = partial_sums(x, t)
    assert (s.row_tiles, s.token_tiles) == (6, 3)
    assert torch.equal(s.unpack_results(_software_array(s)), ref)


def test_streams_refuse_what_the_array_cannot_run():
    t = nmq.compress_weight(torch.randn(4, 64), pattern="2:16", bits=8, group_size=64)
    q, _ = quantized_activations(torch.randn(1, 64), t)
    with pytest.raises(HardwareError, match="max M 8"):
        build_streams(t, q, AcceleratorConfig(max_m=8, weight_bits=8))
    with pytest.raises(HardwareError, match="weight width 4"):
        build_streams(t, q, AcceleratorConfig(max_m=16, weight_bits=4))


def test_register_words_follow_the_rtl_struct():
    """The host packs ``ctl_regs`` without Amaranth; the bits are those of the RTL's data layout."""
    pytest.importorskip("amaranth", reason="Amaranth HDL is not installed")
    from nmq.hw.rtl.layouts import registers

    cfg = AcceleratorConfig(rows=2, cols=3, max_m=16, weight_bits=4, act_buffer_depth=8)
    t = nmq.compress_weight(torch.randn(5, 64), pattern="3:16", bits=4, group_size=32)
    q, _ = quantized_activations(torch.randn(2, 64), t)
    s = build_streams(t, q, cfg)
    assert s.reuse and s.registers() == {"n": 3, "m": 16, "windows": 2, "groups": 3 * 2, "row_tiles": 3,
                                         "pass_windows": 4}
    want = registers(cfg).const(s.registers()).as_value().value
    assert int.from_bytes(s.register_words().tobytes(), "little") == want
    s.groups = 1 << 31          # 3 row tiles of 2**31 groups: past the 32-bit register
    with pytest.raises(HardwareError, match="groups=.*32 bits"):
        s.register_words()
