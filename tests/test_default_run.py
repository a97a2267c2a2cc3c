"""The README's main job end to end (slow): `colsim run protocols/nonstationary.yaml --rule lpl`.

Checks what "done" means for a researcher: the run completes, the store opens with xarray,
and learning shows in the probes: on the phases it was trained on, the network's z_AGG probe
accuracy is above the step-0 evaluation of the same network, and the pooled 10-way probes of
z_AGG and z end above their step-0 values.

Seed 0 on the reference machine: trained-phase gains +0.00 +0.13 +0.11 +0.16 +0.17 (the
digits-0/1 set starts at 0.99), pooled z_AGG 0.42 -> 0.63, pooled z 0.44 -> 0.57. The thresholds leave room for other CPUs' float
results (probe sets of 200 episodes: about +-0.04 per two-digit set).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_default_command_learns(tmp_path):
    exe = Path(sys.executable).parent / "colsim"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    res = subprocess.run([str(exe), "run", "protocols/nonstationary.yaml", "--rule", "lpl", "--quiet", "--out",
                          str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "colsim summary" in res.stdout
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 1000
    tree = xr.open_datatree(tmp_path / "run" / "store.zarr", engine="zarr")
    assert tree.attrs["status"] == "completed"
    A = s["accuracy_matrix"]  # (1 + phases, phases), row 0 = step 0
    gains = [A[k + 1][k] - A[0][k] for k in range(len(A[0]))]
    assert sum(gains) / len(gains) > 0.03, gains
    assert sum(g > 0 for g in gains) >= 4, gains
    assert s["probe_acc_agg"][-1] > s["probe_acc_agg"][0] + 0.1, s["probe_acc_agg"]
    assert s["probe_acc_z"][-1] > s["probe_acc_z"][0] + 0.05, s["probe_acc_z"]
    print("wall_s", s["wall_s"], "probe_acc_z", s["probe_acc_z"], "probe_acc_agg", s["probe_acc_agg"])
