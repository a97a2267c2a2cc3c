"""Fixtures of the model tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: run single-threaded. On a shared 2-core machine OpenMP's default active
    spin-wait makes every parallel op wait for a descheduled thread (runs 10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
