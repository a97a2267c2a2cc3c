"""colsim.simulate.keep_freed_memory: freed activation memory is reused instead of faulted in again."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from colsim.simulate import keep_freed_memory
took = keep_freed_memory()
assert keep_freed_memory() == took  # idempotent
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
seen = []
for _ in range(6):  # a 'step': two 64 MiB activations (above glibc's largest mmap threshold), then freed
    f0 = faults(); x = torch.ones(64 << 18); y = x * 2; seen.append(faults() - f0); del x, y
print(int(took), min(seen[2:]))
"""
PAGES = 2 * (64 << 20) // os.sysconf("SC_PAGE_SIZE")


def _run(keep: bool) -> tuple[int, int]:
    env = {**os.environ, "COLSIM_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    took, faults = out.stdout.split()
    return int(took), int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_activations_are_reused_not_faulted_in_again():
    took, faults = _run(keep=True)
    if not took:
        pytest.skip("not glibc: mallopt unavailable")
    assert faults < 0.1 * PAGES  # steady state: the pages of the previous 'step' are reused
    took_off, faults_off = _run(keep=False)
    assert took_off == 0  # COLSIM_KEEP_FREED_MEMORY=0 opts out
    assert faults_off > 0.9 * PAGES  # default glibc: every step maps and faults in fresh pages
