"""Trained vs untrained on the packaged ``stationary`` protocol (issue 10, item 10), slow.

Each rule runs ``colsim run stationary`` as packaged (1,000 steps, cosine schedule, 500 probe
episodes) for seeds 0, 1, 2; the gain of a run is its final value minus the same network's step-0
evaluation (``summary.json["gain"]``). A claim holds when the lower end of the t-based 95 % CI over
seeds of the gain is above 0 (``colsim.analysis.compare.mean_ci``).

Measured (README, "Trained vs untrained"): both rules lower their own prediction loss, and LPL raises
the pooled 10-way z_AGG probe accuracy, outside the CI; backprop's pooled z_AGG gain is positive in
every seed (+0.04, +0.10, +0.10) but 0 stays inside the CI. That last claim is kept as
``xfail(strict=True)``: a change that makes backprop clear it fails the suite until the README and
this mark are updated. Runs are seeded, so the outcome is the same on every run on one platform
and thread count (torch's default threads here: backprop +0.044, +0.136, +0.104 = +0.095 +- 0.116,
LPL +0.225 +- 0.065; the README's figures come from one thread per run). About 100 s per run alone
on 2 cores, six runs (8 min).
"""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from colsim.analysis.compare import mean_ci
from colsim.cli import app

SEEDS = (0, 1, 2)
_RUNS: dict[str, list[dict]] = {}


class NotAboveUntrained(Exception):
    """The gain's 95 % CI reaches 0 or below (the expected failure of the xfail claim)."""


def _gains(rule: str, tmp_path_factory) -> list[dict]:
    if rule not in _RUNS:
        out = []
        for seed in SEEDS:
            d = tmp_path_factory.mktemp(f"{rule}-s{seed}") / "run"
            res = CliRunner().invoke(app, ["run", "stationary", "--rule", rule, "--seed", str(seed), "--quiet",
                                           "--out", str(d)])
            assert res.exit_code == 0, res.output
            summary = json.loads((d / "summary.json").read_text())
            assert summary["status"] == "completed" and len(summary["probe_acc_agg"]) == 2
            out.append(summary["gain"])
        _RUNS[rule] = out
    return _RUNS[rule]


def _check(rule: str, key: str, tmp_path_factory, capsys) -> None:
    gains = [g[key] for g in _gains(rule, tmp_path_factory)]
    m, h, n = mean_ci(gains)
    with capsys.disabled():
        print(f"\n{rule} on stationary, gain in {key} over step 0, seeds {SEEDS}: "
              f"{', '.join(f'{g:+.3f}' for g in gains)}; mean {m:+.3f} +- {h:.3f} (95 % CI, n={n})")
    assert n == len(SEEDS)
    if not m - h > 0:
        raise NotAboveUntrained(f"{rule}: gain in {key} {m:+.3f} +- {h:.3f} is not outside the seed-to-seed noise")


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["backprop", "lpl"])
def test_trained_column_beats_untrained_on_its_own_objective(rule, tmp_path_factory, capsys):
    _check(rule, "prediction_loss", tmp_path_factory, capsys)  # the gain is the loss's decrease


@pytest.mark.slow
def test_lpl_beats_untrained_on_the_pooled_zagg_probe(tmp_path_factory, capsys):
    _check("lpl", "probe_acc_agg", tmp_path_factory, capsys)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=NotAboveUntrained,
                   reason="measured (README): backprop's pooled z_AGG gain is positive in every seed, but 0 stays "
                          "inside the 95 % CI over 3 seeds")
def test_backprop_beats_untrained_on_the_pooled_zagg_probe(tmp_path_factory, capsys):
    _check("backprop", "probe_acc_agg", tmp_path_factory, capsys)
