"""bits 16: pruned weights whose kept values are stored as 16-bit floats (docs/format.md)."""

import dataclasses
import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nmq
from nmq.compress.prune import is_nm_sparse, magnitude_mask
from nmq.errors import FormatError, QuantError
from nmq.format.file import HEADER_FIELDS
from nmq.format.load import load_file
from nmq.format.pattern import Pattern
from tests import spec_decoder
from tests.conftest import ALL_PATTERNS

OLD_FILE = Path(__file__).parent / "data" / "format1.safetensors"  # written by nmq before value_dtype existed


@st.composite
def float_configs(draw):
    n, m = draw(st.sampled_from(ALL_PATTERNS))
    return {
        "pattern": f"{n}:{m}",
        "dtype": draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32])),
        "metadata": draw(st.sampled_from(["index", "rank"])),
        "out": draw(st.integers(1, 6)),
        "k": draw(st.integers(1, 80)),  # odd widths: K padded to whole M-groups
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def pruned(w: torch.Tensor, pattern: str) -> torch.Tensor:
    """``w`` magnitude-pruned to ``pattern``, in its own dtype."""
    p = Pattern.parse(pattern)
    k = w.shape[1]
    kp = -(-k // p.m) * p.m
    return w * magnitude_mask(torch.nn.functional.pad(w.float(), (0, kp - k)), p)[:, :k]


@given(cfg=float_configs())
def test_float_values_round_trip_through_disk_and_are_the_pruned_weight(tmp_path_factory, cfg):
    gen = torch.Generator().manual_seed(cfg["seed"])
    w = (torch.randn(cfg["out"], cfg["k"], generator=gen) * 0.05).to(cfg["dtype"])
    t = nmq.compress_weight(w, pattern=cfg["pattern"], bits=16, metadata=cfg["metadata"])
    # bfloat16 stays bfloat16; float16 and float32 weights are stored as float16 (in range here)
    want = torch.bfloat16 if cfg["dtype"] == torch.bfloat16 else torch.float16
    assert t.bits == 16 and t.value_dtype == want and t.group_size == -1 and t.symmetric and t.zeros is None
    assert t.scales.shape == (cfg["out"], 0) and t.groups == 0
    expected = pruned(w, cfg["pattern"]).to(want)
    assert torch.equal(t.to_dense(want), expected)
    assert torch.equal(t.to_dense(), expected.float())
    assert is_nm_sparse(t.to_dense(), Pattern.parse(cfg["pattern"]))
    # an independent reading of the raw fields gives the same weight
    assert torch.equal(t.to_dense(), torch.tensor(spec_decoder.decode(t), dtype=torch.float32))
    path = tmp_path_factory.mktemp("f16") / "w.safetensors"
    t.save(path)
    back = nmq.load_tensor(path)
    assert back.identical(t) and back.value_dtype == want
    assert torch.equal(back.to_dense(want), expected)
    other = "index" if t.metadata == "rank" else "rank"
    assert t.with_metadata(other).with_metadata(t.metadata).identical(t)
    assert torch.equal(t.slice_rows(0, 1).to_dense(), t.to_dense()[:1])


@pytest.mark.parametrize("pattern,metadata,bpw", [("2:4", "rank", 8.75), ("2:4", "index", 9.0),
                                                  ("4:8", "rank", 8.875), ("4:4", "rank", 16.0)])
@pytest.mark.parametrize("k", [256, 260, 36])
def test_storage_counts_16_bits_per_kept_value_plus_metadata(pattern, metadata, bpw, k):
    t = nmq.compress_weight(torch.randn(8, k), pattern=pattern, bits=16, metadata=metadata)
    s = t.storage()
    assert "scales" not in s.fields and "zeros" not in s.fields
    if k % t.pattern.m == 0:  # no padded M-group: values and metadata are the figure, padding the rows' last bytes
        assert (s.fields["values"] + s.fields.get("meta", 0)) / s.weights == bpw
    if k % 32 == 0:
        assert s.bits_per_weight == bpw and s.fields["padding"] == 0
    assert s.bits == t.nbytes * 8  # every stored bit counted


def test_storage_of_a_2to4_weight_is_8_75_bits_per_weight_at_any_width_multiple_of_4():
    for k in (4, 12, 100, 132):
        s = nmq.compress_weight(torch.randn(3, k), bits=16).storage()
        assert (s.fields["values"] + s.fields["meta"]) / s.weights == 8.75
        assert s.fields["padding"] == s.bits - 8.75 * s.weights < 8 * 3  # only the metadata rows' last bytes


def test_values_beyond_float16_range_are_refused_unless_the_weight_is_bfloat16():
    w = torch.randn(4, 16)
    w[1, 3] = 1e6
    with pytest.raises(QuantError, match="magnitude 1e\\+06 overflows float16.*--dtype bfloat16"):
        nmq.compress_weight(w, bits=16)
    t = nmq.compress_weight(w.bfloat16(), bits=16)
    assert t.value_dtype == torch.bfloat16 and torch.equal(t.to_dense(torch.bfloat16), pruned(w.bfloat16(), "2:4"))
    w[1, 3] = 65504  # float16's largest
    assert nmq.compress_weight(w, bits=16).to_dense()[1, 3] == 65504


def test_integer_accessors_refuse_float_values():
    t = nmq.compress_weight(torch.randn(4, 16), bits=16)
    for call in (t.codes, t.zero_codes, lambda: t.quant_spec):
        with pytest.raises(FormatError, match="holds float16 values, not integer codes"):
            call()
    assert repr(t) == "NMQTensor(shape=(4, 16), pattern=2:4, bits=16, value_dtype=float16, metadata=rank)"


def test_a_tensor_rebuilt_without_its_value_dtype_is_refused_at_once():
    t = nmq.compress_weight(torch.randn(4, 16), bits=16)
    with pytest.raises(FormatError, match="bits=16 with value_dtype=None"):
        dataclasses.replace(t, value_dtype=None)
    i = nmq.compress_weight(torch.randn(4, 16), group_size=16)
    with pytest.raises(FormatError, match="bits=4 with value_dtype=torch.float16"):
        dataclasses.replace(i, value_dtype=torch.float16)


def test_validate_names_what_is_wrong_with_float_values():
    t = nmq.compress_weight(torch.randn(4, 16), bits=16)
    t.validate()
    nan = dataclasses.replace(t, values=t.values.clone())
    nan.values[2, :2] = torch.tensor([0x00, 0x7E], dtype=torch.uint8)  # 0x7E00: a float16 NaN
    with pytest.raises(FormatError, match="'values' holds a NaN or infinite float16 value"):
        nan.validate()
    with pytest.raises(FormatError, match="'scales' has shape"):
        dataclasses.replace(t, scales=torch.zeros(4, 1, dtype=torch.float16)).validate()
    with pytest.raises(FormatError, match="group_size -1, symmetric"):
        dataclasses.replace(t, group_size=16).validate()


def _rewrite(path: Path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    desc = json.loads(header["__metadata__"]["nmq"])
    edit(desc["compressed"]["weight"])
    text = json.dumps(desc, separators=(",", ":"), sort_keys=True)
    header["__metadata__"] = {"nmq": text, "nmq_crc32": str(zlib.crc32(text.encode()))}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.mark.parametrize("edit,match", [
    (lambda e: e.pop("value_dtype"), "'value_dtype' is None with bits 16; expected 'float16' or 'bfloat16'"),
    (lambda e: e.update(value_dtype="float32"), "'value_dtype' is 'float32'"),
    (lambda e: e.update(bits=8), "'value_dtype' is 'bfloat16' with bits 8; expected absent"),
])
def test_file_headers_with_a_wrong_value_dtype_name_the_field(tmp_path, edit, match):
    path = tmp_path / "w.safetensors"
    nmq.compress_weight(torch.randn(4, 16, dtype=torch.bfloat16), bits=16).save(path)
    _rewrite(path, edit)
    with pytest.raises(FormatError, match=match):
        nmq.load_tensor(path)


def test_files_written_before_float_values_still_load():
    f = load_file(OLD_FILE)
    assert sorted(f.compressed) == ["int3", "int4"]
    for name, t in f.compressed.items():
        assert not t.is_float and set(t.header()) == set(HEADER_FIELDS)
        assert torch.equal(t.to_dense(), f.dense[f"{name}.expected"])
    # and integer tensors are still described exactly as then: no new field in their header
    assert set(nmq.compress_weight(torch.randn(4, 16)).header()) == set(HEADER_FIELDS)
