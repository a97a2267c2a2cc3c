"""Stateful rules resume exactly from a phase checkpoint (`colsim run --resume`): rule state
(replay buffer and RNG, SI/EWC importances, availabilities) and rule-owned parameters
(layerwise's predictors) round-trip through the checkpoint."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from _tiny import TINY
from colsim.cli import app

runner = CliRunner()
SETS = [a for s in TINY + ["protocol.evaluation.probe_samples=10", "protocol.evaluation.views=2"] for a in ("--set", s)]


@pytest.mark.parametrize("spec", ["layerwise+ewc", "backprop+metaplastic+si+replay"])
def test_resume_matches_uninterrupted_run(tmp_path, spec):
    full = runner.invoke(app, ["run", "nonstationary", "--rule", spec, "--steps", "10", "--seed", "1",
                               "--out", str(tmp_path / "full"), "--quiet", *SETS])
    assert full.exit_code == 0, full.output
    ck = tmp_path / "full" / "checkpoints"
    res = runner.invoke(app, ["run", "nonstationary", "--resume", str(ck / "phase02-digits45.pt"),
                              "--out", str(tmp_path / "resumed"), "--quiet"])
    assert res.exit_code == 0, res.output
    a = torch.load(ck / "phase04-digits89.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "phase04-digits89.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
