import dataclasses

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import nmq
from nmq.compress.prune import is_nm_sparse, magnitude_mask
from nmq.errors import FormatError, NMQError, QuantError, WeightError
from nmq.format.pattern import Pattern
from tests import spec_decoder
from tests.conftest import ALL_PATTERNS


@st.composite
def configs(draw, max_out=6, max_k=80):
    n, m = draw(st.sampled_from(ALL_PATTERNS))
    mult = draw(st.sampled_from([1, 2, 3, 8, -1]))
    return dict(
        pattern=f"{n}:{m}",
        bits=draw(st.sampled_from([2, 3, 4, 8])),
        group_size=-1 if mult == -1 else m * mult,
        symmetric=draw(st.booleans()),
        metadata=draw(st.sampled_from(["index", "rank"])),
        out=draw(st.integers(1, max_out)),
        k=draw(st.integers(1, max_k)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make(cfg):
    gen = torch.Generator().manual_seed(cfg["seed"])
    w = torch.randn(cfg["out"], cfg["k"], generator=gen) * 0.05
    kw = {k: cfg[k] for k in ("pattern", "bits", "group_size", "symmetric", "metadata")}
    return w, nmq.compress_weight(w, **kw)


@given(configs())
def test_compressed_weight_is_nm_sparse_close_and_matches_the_spec(cfg):
    w, t = make(cfg)
    p = Pattern.parse(cfg["pattern"])
    dense = t.to_dense()
    assert dense.shape == w.shape
    assert is_nm_sparse(dense, p)
    # independent bit-level reading of the raw fields gives the same weight
    assert torch.equal(dense, torch.tensor(spec_decoder.decode(t), dtype=torch.float32))
    # nonzeros only where magnitude pruning keeps, each within half a quantization step
    kp = t.padded_in
    mask = magnitude_mask(torch.nn.functional.pad(w, (0, kp - w.shape[1])), p)[:, : w.shape[1]]
    assert not (dense[~mask] != 0).any()
    step = t.scales.float().repeat_interleave(t.group, dim=1)[:, : w.shape[1]]
    assert ((dense - w * mask).abs() <= step * 0.51 + 1e-7).all()


@given(cfg=configs())
def test_round_trip_through_disk_is_exact(tmp_path_factory, cfg):
    _, t = make(cfg)
    path = tmp_path_factory.mktemp("rt") / "w.safetensors"
    t.save(path)
    back = nmq.load_tensor(path)
    assert back.identical(t)
    assert torch.equal(back.to_dense(), t.to_dense())


@given(configs())
def test_metadata_encodings_convert_both_ways_exactly(cfg):
    _, t = make(cfg)
    other = "index" if t.metadata == "rank" else "rank"
    there = t.with_metadata(other)
    assert torch.equal(there.to_dense(), t.to_dense())
    assert there.with_metadata(t.metadata).identical(t)


@given(configs())
def test_symmetric_compression_is_idempotent(cfg):
    cfg = dict(cfg, symmetric=True)
    _, t = make(cfg)
    # Promised while fp16 has steps fine enough at the scale (nmq.compress.quant): scales of at least (2 qmax + 1) * 2**-24.
    qmax = 2 ** (cfg["bits"] - 1) - 1
    scales = t.scales.float()
    assume(bool(((scales == 0) | (scales >= (2 * qmax + 1) * 2.0**-24)).all()))
    again = nmq.compress_weight(t.to_dense(), **{k: cfg[k] for k in ("pattern", "bits", "group_size", "symmetric", "metadata")})
    assert torch.equal(again.to_dense(), t.to_dense())


@given(configs())
def test_storage_fields_add_up_to_the_stored_bytes(cfg):
    _, t = make(cfg)
    s = t.storage()
    assert s.bits == t.nbytes * 8
    assert s.fields["padding"] >= 0
    assert s.weights == t.shape[0] * t.shape[1]


@pytest.mark.parametrize("metadata,bpw,ratio", [("index", 3.125, 5.12), ("rank", 2.875, 5.565)])
def test_llama_sized_weight_storage(metadata, bpw, ratio, tmp_path):
    w = torch.randn(4096, 4096)
    t = nmq.compress_weight(w, pattern="2:4", bits=4, group_size=128, symmetric=True, metadata=metadata)
    s = t.storage()
    assert s.bits_per_weight == bpw and s.fields["padding"] == 0
    assert s.ratio_vs_fp16 == pytest.approx(ratio, abs=1e-3)
    t.save(tmp_path / "w.safetensors")
    from nmq.models.summary import summarize

    assert summarize(tmp_path / "w.safetensors")["compressed"]["bits_per_weight"] == bpw


def test_padding_is_recorded_and_counted():
    t = nmq.compress_weight(torch.randn(4, 300), pattern="2:4", group_size=128)
    assert t.padded_in == 384 and t.shape == (4, 300)
    assert t.storage().fields["padding"] > 0
    assert t.header()["padded_in"] == 384


def test_sparse_groups_keep_n_entries_with_zeros():
    w = torch.zeros(1, 8)
    w[0, 5] = 7.0  # scale exactly 1
    t = nmq.compress_weight(w, pattern="2:4", group_size=8)
    assert t.group_positions().tolist() == [[[0, 1], [0, 1]]]
    assert torch.equal(t.to_dense(), w)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(pattern="5:4"), Exception, "N=5 is out of range"),
        (dict(pattern="2:17"), Exception, "M=17 is out of range"),
        (dict(pattern="4:8", group_size=100), QuantError, "not a multiple of M=8"),
        (dict(bits=5), QuantError, "bits=5"),
        (dict(metadata="bitmap"), Exception, "accepted: index, rank"),
        (dict(method="sorcery"), NMQError, "accepted: magnitude"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        nmq.compress_weight(torch.randn(4, 16), **kwargs)


@pytest.mark.parametrize(
    "w,match",
    [
        (torch.randn(16), "1 dimension"),
        (torch.randn(2, 4, 16), "3 dimension"),
        (torch.tensor([[1.0, float("nan"), 0.0, 1.0]]), "NaN/Inf"),
        (torch.tensor([[1.0, float("inf"), 0.0, 1.0]]), "NaN/Inf"),
        (torch.ones(2, 4, dtype=torch.int32), "floating-point"),
        ([[1.0, 2.0]], "accepted: a 2-D torch tensor"),
    ],
)
def test_bad_weights(w, match):
    with pytest.raises(WeightError, match=match):
        nmq.compress_weight(w, group_size=4)


def test_numpy_and_bf16_weights_are_accepted():
    import numpy as np

    a = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    t1 = nmq.compress_weight(a, group_size=64)
    t2 = nmq.compress_weight(torch.from_numpy(a).bfloat16(), group_size=64)
    assert t1.shape == t2.shape == (8, 64)


def test_validate_names_the_field_at_fault():
    t = nmq.compress_weight(torch.randn(4, 64), pattern="2:4", group_size=64, metadata="index")
    bad = dataclasses.replace(t, meta=torch.full_like(t.meta, 0b01_00_01_00))  # positions (0,1),(0,1) ok
    bad.validate()
    bad = dataclasses.replace(t, meta=torch.full_like(t.meta, 0b00_01_00_01))  # (1,0) not ascending
    with pytest.raises(FormatError, match="'meta'.*ascending"):
        bad.validate()
    bad = dataclasses.replace(t, scales=t.scales.clone().fill_(float("nan")))
    with pytest.raises(FormatError, match="'scales'"):
        bad.validate()
    bad = dataclasses.replace(t, values=t.values[:, :-1])
    with pytest.raises(FormatError, match="'values' has shape"):
        bad.validate()
    r = t.with_metadata("rank")
    bad = dataclasses.replace(r, meta=torch.full_like(r.meta, 0xFF))  # rank 7 > 5
    with pytest.raises(FormatError, match="rank outside 0..5"):
        bad.validate()


@pytest.mark.parametrize("chunk_rows", [0, 3])
def test_validation_is_remembered_until_a_field_changes(chunk_rows):
    t = nmq.compress_weight(torch.randn(8, 64), pattern="2:4", group_size=64)
    t.validate(chunk_rows=chunk_rows)
    t.validate(chunk_rows=chunk_rows)  # remembered: the fields are the ones checked
    t.meta[5, 0] = 0xFF  # an in-place write bumps the field's version: checked again, caught
    with pytest.raises(FormatError, match="rank outside"):
        t.validate(chunk_rows=chunk_rows)
    t.meta = t.meta.clone().fill_(0)  # a new field: checked again, passes
    t.validate(chunk_rows=chunk_rows)
