import json
import struct

import pytest
import torch

import nmq
from nmq.errors import FormatError
from nmq.format import file as serialize
from nmq.format.load import load_file


@pytest.fixture
def small_file(tmp_path):
    t = nmq.compress_weight(torch.randn(3, 40), pattern="2:4", bits=4, group_size=8, symmetric=False)
    path = tmp_path / "w.safetensors"
    t.save(path)
    return t, path


def test_every_single_bit_flip_is_detected(small_file, tmp_path):
    t, path = small_file
    data = path.read_bytes()
    flipped = tmp_path / "flipped.safetensors"
    undetected = []
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        flipped.write_bytes(bytes(damaged))
        try:
            back = nmq.load_tensor(flipped)
        except FormatError:
            continue
        if not back.identical(t):
            undetected.append(bit)
    assert undetected == []


@pytest.mark.parametrize("keep", [0, 4, 8, 20, 100, -1, -17])
def test_truncated_files_are_refused(small_file, tmp_path, keep):
    _, path = small_file
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep])
    with pytest.raises(FormatError, match="cut.safetensors"):
        nmq.load_tensor(cut)


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    desc = json.loads(header["__metadata__"]["nmq"])
    edit(desc)
    import zlib

    text = json.dumps(desc, separators=(",", ":"), sort_keys=True)
    header["__metadata__"] = {"nmq": text, "nmq_crc32": str(zlib.crc32(text.encode()))}
    raw = json.dumps(header).encode()
    raw += b" " * ((-len(raw)) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_newer_format_version_is_refused(small_file):
    _, path = small_file
    _rewrite_header(path, lambda d: d.update(version=2))
    with pytest.raises(FormatError, match="format version 2.*up to 1"):
        nmq.load_tensor(path)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d["compressed"]["weight"].update(bits=5), "'header'.*bits=5"),
        (lambda d: d["compressed"]["weight"].update(pattern="9:4"), "'pattern'"),
        (lambda d: d["compressed"]["weight"].update(shape=[3, 41]), "'values' has shape|'padded_in'"),
        (lambda d: d["compressed"]["weight"].update(symmetric=True), "'zeros'|not described"),
        (lambda d: d["compressed"]["weight"].pop("group_size"), "'group_size' is missing"),
        (lambda d: d.update(format="other"), "'format'"),
    ],
)
def test_inconsistent_headers_name_the_field(small_file, edit, match):
    _, path = small_file
    _rewrite_header(path, edit)
    with pytest.raises(FormatError, match=match):
        nmq.load_tensor(path)


def test_plain_safetensors_file_is_not_an_nmq_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FormatError, match="not an nmq file"):
        nmq.load_tensor(tmp_path / "plain.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        nmq.load_tensor(tmp_path / "nope.safetensors")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from nmq.format import file

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(file.shutil, "copyfileobj", boom)  # the header is written, the tensors' bytes fail
    t = nmq.compress_weight(torch.randn(4, 16), group_size=16)
    with pytest.raises(OSError):
        t.save(tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(RuntimeError), file.TensorFileWriter(tmp_path / "w.safetensors") as w:  # fails midway
        w.add_compressed("a", t)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_the_writer_matches_safetensors_own_reader(tmp_path):
    """Every dtype, an empty field, a scalar: safetensors reads back what the streaming writer wrote."""
    from safetensors.torch import load_file

    from nmq.format.file import TensorFileWriter

    tensors = {"f32": torch.randn(3, 5), "bf16": torch.randn(7).bfloat16(), "f16": torch.randn(2, 2).half(),
               "i64": torch.arange(4), "u8": torch.arange(9, dtype=torch.uint8).reshape(3, 3),
               "empty": torch.zeros(4, 0, dtype=torch.uint8), "scalar": torch.tensor(2.5)}
    with TensorFileWriter(tmp_path / "x.safetensors") as w:
        for name, value in tensors.items():
            w.add_dense(name, value)
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())


def test_mixed_file_round_trip(tmp_path):
    t = nmq.compress_weight(torch.randn(8, 32), pattern="4:8", group_size=32)
    dense = {"norm.weight": torch.randn(32), "emb": torch.randn(4, 8).bfloat16()}
    serialize.save_file(tmp_path / "m.safetensors", {"layer": t}, dense)
    back = load_file(tmp_path / "m.safetensors")
    assert back.compressed["layer"].identical(t)
    assert all(torch.equal(back.dense[k], v) for k, v in dense.items())
    with pytest.raises(FormatError, match="exactly one"):
        serialize.save_file(tmp_path / "two.safetensors", {"a": t, "b": t}, {})
        nmq.load_tensor(tmp_path / "two.safetensors")
