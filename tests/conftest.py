"""Shared fixtures."""
from __future__ import annotations

import os

# OpenMP's default spin-waiting makes small torch ops many times slower whenever another
# process is busy on this 2-core machine; must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from _tiny import TINY  # noqa: E402


@pytest.fixture
def tiny_overrides():
    return list(TINY)
