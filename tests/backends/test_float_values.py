"""Weights of 16-bit float values (bits 16) on the backends: the reference backend runs them, ``auto`` picks it,
the kernel backends refuse them in one line."""

import pytest
import torch

import nmq
from nmq.backends import get_backend
from nmq.errors import BackendError
from nmq.runtime.linear import NMQLinear, fuse_linears

CPU_BUILT = "cpu" in nmq.backends.available()


@pytest.fixture
def floats():
    return nmq.compress_weight(torch.randn(40, 100, dtype=torch.bfloat16), pattern="4:8", bits=16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_runs_float_values(floats, dtype):
    x = torch.randn(3, 100).to(dtype)
    y = nmq.matmul(x, floats, backend="reference")
    assert y.dtype == torch.float32
    assert torch.allclose(y, x.float() @ floats.to_dense().T, rtol=1e-5, atol=1e-5)
    packed = get_backend("reference").prepack(floats)  # the dense form in the values' dtype, built once
    assert packed.dense.dtype == torch.bfloat16 and torch.equal(packed.dense, floats.to_dense(torch.bfloat16))
    assert torch.equal(get_backend("reference").matmul(x, packed), y)


def test_cusparselt_builds_its_dense_2to4_copy_from_float_values():
    from nmq.backends.cusparselt import CusparseltBackend, semi_structured_dense

    t = nmq.compress_weight(torch.randn(40, 100, dtype=torch.bfloat16), pattern="2:4", bits=16)
    assert CusparseltBackend().unsupported_reason(t) is None
    dense = semi_structured_dense(t, torch.bfloat16)
    assert dense.shape == (64, 128) and torch.equal(dense[:40, :100], t.to_dense(torch.bfloat16))
    assert "2:4 weights only" in CusparseltBackend().unsupported_reason(nmq.compress_weight(
        torch.randn(8, 64), pattern="4:8", bits=16))


def test_w4a8_needs_integer_codes(floats):
    with pytest.raises(BackendError, match="w4a8 path multiplies integer weight codes.*accepted: path w4a16"):
        nmq.matmul(torch.randn(2, 100), floats, backend="reference", path="w4a8")


def test_auto_passes_the_kernel_backends_over(floats):
    assert get_backend("auto", "cpu", 1, floats).name == "reference"
    integer = nmq.compress_weight(torch.randn(40, 100), pattern="4:8", group_size=8)
    assert get_backend("auto", "cpu", 1, integer).name == get_backend("auto", "cpu", 1).name
    layer = NMQLinear(floats)
    assert layer(torch.randn(2, 100)).shape == (2, 40) and layer._route["cpu"][0].name == "reference"


@pytest.mark.parametrize("name", ["cpu", "triton"])
def test_a_kernel_backend_asked_for_by_name_refuses_in_one_line(floats, name):
    backend = nmq.backends._REGISTRY[name]
    reason = backend.unsupported_reason(floats)
    assert reason and "16-bit float values (bfloat16)" in reason and "\n" not in reason
    if name not in nmq.backends.available():
        pytest.skip(f"backend {name} is not available here")
    with pytest.raises(BackendError, match=f"backend '{name}' cannot run this weight: .*'reference' \\(or auto\\)"):
        nmq.matmul(torch.randn(2, 100), floats, backend=name)
    with pytest.raises(BackendError, match="cannot run this weight"):
        backend.prepack(floats)
    layer = NMQLinear(floats)
    with pytest.raises(BackendError, match="cannot run this weight"):
        layer.set_backend(name)


def test_float_layers_are_not_stacked_and_keep_choosing_reference_once_released(floats):
    a, b = NMQLinear(floats), NMQLinear(floats)
    assert fuse_linears([a, b]) is None  # the reference backend does not stack rows
    if CPU_BUILT:  # an integer layer beside a float one: auto runs them on different backends
        integer = NMQLinear(nmq.compress_weight(torch.randn(40, 100), pattern="4:8", group_size=8))
        assert fuse_linears([integer, a]) is None
    x = torch.randn(1, 100)
    y = a(x)
    a.prepack()
    a.release_source()
    a._route.clear()
    assert torch.equal(a(x), y) and a._route["cpu"][0].name == "reference"
