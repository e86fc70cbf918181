"""A clock store of the test's own: no test reads the user's ~/.cache or the measurements shipped with nmq."""

from __future__ import annotations

import pytest

from nmq.hw.estimate import clocks


@pytest.fixture
def clock_store(tmp_path, monkeypatch):
    """An empty user store under tmp_path (NMQ_CACHE_DIR) and an empty shipped store; yields the user store's path."""
    monkeypatch.setenv("NMQ_CACHE_DIR", str(tmp_path / "cache"))
    shipped = tmp_path / "shipped.json"
    shipped.write_text("{}\n")
    monkeypatch.setattr(clocks, "SHIPPED", shipped)
    return clocks.user_store()
