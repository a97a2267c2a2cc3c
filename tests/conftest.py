"""Shared fixtures."""
from __future__ import annotations

import os

# OpenMP's default spin-waiting makes small torch ops many times slower whenever another
# process is busy on this 2-core machine; must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# `make test` runs the suite on pytest-xdist workers, one per core: each worker (and every run it starts)
# computes on one thread, so the workers do not oversubscribe the cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402

from _tiny import TINY  # noqa: E402


@pytest.fixture
def tiny_overrides():
    return list(TINY)
