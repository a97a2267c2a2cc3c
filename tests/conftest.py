"""Shared fixtures."""
from __future__ import annotations

import pytest

from _tiny import TINY


@pytest.fixture
def tiny_overrides():
    return list(TINY)
