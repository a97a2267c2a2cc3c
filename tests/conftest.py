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


# The longest modules first. Under `make test` (pytest-xdist, --dist loadfile --no-loadscope-reorder: without that
# flag xdist hands out the files with the most tests first) a test file is one unit of work, handed to the workers
# in collection order; a long file collected last runs alone at the end (CI took 36-53 min
# that way). Started first, it overlaps with the rest. The ESPP science check alone takes about 5 minutes on 2
# cores (2026-12-07); the others are the slow-marked files, longest expected first.
_LONGEST_FIRST = ("tests/rules/test_espp_science.py", "tests/rules/test_trained_vs_untrained.py",
                  "tests/rules/test_forgetting.py", "tests/test_fault_tolerance.py", "tests/test_sweep.py",
                  "tests/test_default_run.py", "tests/test_doc_snippets.py", "tests/rules/test_ngateon_science.py",
                  "tests/rules/test_positive_controls.py")


def pytest_collection_modifyitems(config, items):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rank = {name: k for k, name in enumerate(_LONGEST_FIRST)}

    def key(item):
        try:
            rel = Path(str(item.fspath)).resolve().relative_to(root).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(rel, len(rank))

    items.sort(key=key)  # stable: each file keeps its own order
