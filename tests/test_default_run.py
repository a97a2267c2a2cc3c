"""The README's main job end to end (slow): `colsim run protocols/nonstationary.yaml --rule lpl`.

Checks what "done" means for a researcher: the run completes, the store opens with xarray,
and learning shows in the probes — the pooled probe accuracy after training is above the
step-0 evaluation of the same network.
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
    init_z, last_z = s["probe_acc_z"][0], s["probe_acc_z"][-1]
    assert last_z > init_z + 0.03, (init_z, last_z)
    print("wall_s", s["wall_s"], "probe_acc_z", s["probe_acc_z"], "probe_acc_agg", s["probe_acc_agg"])
