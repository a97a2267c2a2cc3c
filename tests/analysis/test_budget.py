"""colsim.analysis.budget: the budget curve's arms and paired differences from run folders, hand-computed."""
from __future__ import annotations

import json

import pytest
import yaml

from colsim.analysis.budget import collect, layer_names, paired


def _run(root, name, rule, seed, steps, acc, from_run=None):
    d = root / "runs" / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "status": "completed", "steps": steps, "layer_readout_names": ["input", "layer1"],
        "layer_readout_accuracy": acc, "evaluations": [{"step": 0}, {"step": steps}][:len(acc)]}))
    rule_cfg = {"name": rule, **({"from_run": str(from_run)} if from_run else {})}
    (d / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "rule": rule_cfg,
                                                   "protocol": {"stream": {"batch": 10}}}))
    return d


def test_collect_and_paired_hand_computed(tmp_path):
    e0 = _run(tmp_path, "e0", "espp", 0, 5, [[0.8, 0.50], [0.8, 0.60]])
    e1 = _run(tmp_path, "e1", "espp", 1, 5, [[0.7, 0.40], [0.7, 0.44]])
    _run(tmp_path, "r0", "rate_matched", 0, 2, [[0.8, 0.50], [0.8, 0.55]], from_run=e0)
    _run(tmp_path, "r1", "rate_matched", 1, 2, [[0.7, 0.40], [0.7, 0.46]], from_run=e1)
    arms = collect([tmp_path])
    assert layer_names([tmp_path]) == ["input", "layer1"]
    assert sorted(arms) == ["espp", "rate_matched", "untrained"]
    assert list(arms["rate_matched"]) == [50]  # at its ESPP run's 5 x 10 samples, not its own 20
    assert arms["untrained"][50][0].tolist() == [0.8, 0.5] and len(arms["untrained"][50]) == 2
    m, h, n = paired(arms, "espp", "untrained", 50, 1)  # +0.10 and +0.04
    assert n == 2 and m == pytest.approx(0.07) and h == pytest.approx(12.706 * 0.03 * 2 ** 0.5 / 2 ** 0.5, rel=1e-3)
    m, h, n = paired(arms, "espp", "rate_matched", 50, 1)  # +0.05 and -0.02
    assert n == 2 and m == pytest.approx(0.015)


def test_budget_figure_renders_a_png(tmp_path):
    """The README's budget figure (examples/espp_budget_table.py --png): one panel per layer, written as a PNG."""
    from colsim.analysis.figures import budget_figure, save_png

    e0 = _run(tmp_path, "e0", "espp", 0, 5, [[0.8, 0.50], [0.8, 0.60]])
    _run(tmp_path, "e1", "espp", 1, 50, [[0.7, 0.40], [0.7, 0.44]])
    _run(tmp_path, "r0", "rate_matched", 0, 2, [[0.8, 0.50], [0.8, 0.55]], from_run=e0)
    fig = budget_figure(collect([tmp_path]), ["input", "layer1"])
    assert len(fig) == 2  # input, layer1
    out = save_png(fig, tmp_path / "b.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
