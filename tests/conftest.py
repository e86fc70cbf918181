import os
import tempfile
import zlib

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" draws the same examples on every run, so a landing never depends on
# luck; "thorough" explores (NMQ_HYPOTHESIS_PROFILE=thorough).
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("NMQ_HYPOTHESIS_PROFILE", "ci"))

# Caches that commands write (measured FPGA clocks, ...) go to a directory of
# this run, never to the user's ~/.cache; subprocesses inherit it.
os.environ["NMQ_CACHE_DIR"] = tempfile.mkdtemp(prefix="nmq-test-cache-")

# Every (n, m) with m <= 16 is claimed; tests sweep this list.
ALL_PATTERNS = [(n, m) for m in range(1, 17) for n in range(1, m + 1)]


@pytest.fixture
def rng():
    """A fresh generator per test, seeded from the test's own name for reproducible failures."""
    # crc32, not hash(): str hashes change with every interpreter (PYTHONHASHSEED)
    name = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return gen


ISA_LEVELS = ("avx512", "avx2", "portable")


@pytest.fixture(params=ISA_LEVELS)
def level(request, monkeypatch):
    """Run the test with the CPU kernels forced to one ISA level (skipped where the CPU lacks it)."""
    cpu = pytest.importorskip("nmq.backends.cpu.matmul")
    have = cpu.isa_levels() if cpu.CpuBackend().unavailable_reason() is None else []
    if request.param not in have:
        pytest.skip(f"this CPU cannot run the {request.param} kernels (has: {', '.join(have)})")
    monkeypatch.setenv(cpu.ISA_ENV, request.param)
    yield request.param
    monkeypatch.delenv(cpu.ISA_ENV)
    cpu.get_isa()  # back to the best level
