"""The Python layouts (nmq.backends.cpu.layout) against the C++ structs and constants of kernels.h."""

from __future__ import annotations

import ctypes
import dataclasses

import pytest
import torch

import nmq
from nmq.backends.cpu import ext, layout

pytestmark = pytest.mark.skipif(ext.native is None, reason=f"cpu backend unavailable: {ext.IMPORT_ERROR}")

MIRRORS = [layout.FastParams, layout.GenericParams]
CTYPES = {"int": ctypes.c_int32, "bool": ctypes.c_bool}


def _ctypes_mirror(cls):
    """The dataclass laid out as C lays out its fields."""
    return type(cls.__name__, (ctypes.Structure,),
                {"_fields_": [(f.name, CTYPES[f.type]) for f in dataclasses.fields(cls)]})


@pytest.mark.parametrize("cls", MIRRORS, ids=lambda c: c.__name__)
def test_dataclass_mirrors_the_cpp_struct(cls):
    native = getattr(ext.native, cls.__name__)
    names = [f.name for f in dataclasses.fields(cls)]
    assert list(native.offsets) == names  # bound in declaration order, every one
    mirror = _ctypes_mirror(cls)
    assert ctypes.sizeof(mirror) == native.sizeof
    assert {n: getattr(mirror, n).offset for n in names} == native.offsets


def test_constants_agree():
    c = ext.native.layout_constants
    for name in ("KIND_24", "KIND_48", "KIND_14", "KIND_DENSE", "ROWS", "PAIR_K", "QUAD24", "META_DENSE",
                 "META_INDEX", "META_RANK"):
        assert getattr(layout, name) == c[name], name
    assert {k: (c["vbytes"][k], c["mbytes"][k]) for k in c["vbytes"]} == layout.GEOMETRY


@pytest.mark.parametrize("pattern,bits,group,symmetric", [
    ("2:4", 4, 128, True), ("4:8", 4, 64, False), ("1:4", 4, -1, True), ("dense", 4, 32, False),
    ("2:8", 4, 64, True), ("3:8", 8, 32, False), ("2:4", 4, 36, True),
])
def test_params_round_trip_through_the_extension(pattern, bits, group, symmetric):
    t = nmq.compress_weight(torch.randn(37, 300), pattern=pattern, bits=bits, group_size=group, symmetric=symmetric)
    params, _ = layout.prepack(t)
    assert isinstance(params, layout.FastParams) == bool(layout.fast_kind(t))
    native = layout.to_native(params)
    back = type(params)(**{f.name: getattr(native, f.name) for f in dataclasses.fields(params)})
    assert back == params


def test_the_extension_refuses_what_its_structs_lack_or_bound():
    t = nmq.compress_weight(torch.randn(32, 256), pattern="4:8", group_size=128)
    params, bufs = layout.prepack(t)
    with pytest.raises(AttributeError):
        ext.native.FastParams().nonsense = 1
    with pytest.raises(TypeError):
        layout.to_native(dataclasses.replace(params, out=2**31))
    for bad in ({"vbytes": params.vbytes + 1}, {"kind": 7}, {"in_features": params.kk + 1}):
        with pytest.raises(ValueError, match="fast layout"):
            ext.native.FastWeight(*bufs, layout.to_native(dataclasses.replace(params, **bad)))
    g = nmq.compress_weight(torch.randn(16, 96), pattern="3:8", group_size=32)
    gparams, gbufs = layout.prepack(g)
    for bad in ({"m": 17}, {"bits": 9}, {"meta_kind": 3}, {"n": gparams.m + 1}):
        with pytest.raises(ValueError, match="generic layout"):
            ext.native.GenericWeight(*gbufs, layout.to_native(dataclasses.replace(gparams, **bad)))
