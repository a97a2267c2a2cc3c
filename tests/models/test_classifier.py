"""The supervised column (models/classifier.py): heads picked by task id, the cross-entropy objective, the rules that
run on it and those refused, and short runs of van de Ven & Tolias (2019)'s scenarios on digits with the textbook
pattern (Task-IL high, Class-IL fine-tuning ~ the last task only); average_accuracy = the last row's mean."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import colsim.models  # noqa: F401  (registers)
import colsim.protocols  # noqa: F401
import colsim.rules  # noqa: F401
from colsim.analysis.continual import continual_of_rows
from colsim.build import build_run
from colsim.cli import app
from colsim.config import resolve_run_config
from colsim.evaluate import head_accuracy

runner = CliRunner()
FAST = ["--set", "protocol.evaluation.probe_samples=100", "--set", "protocol.evaluation.at_start=false",
        "--set", "protocol.record.probe=false"]


def _built(protocol="split_digits_task", **kw):
    cfg = resolve_run_config(protocol, rule="backprop", **kw)
    return cfg, *build_run(cfg)


def test_one_head_per_task_in_task_il_and_one_otherwise():
    for name, heads, outputs in (("split_digits_task", 5, 2), ("split_digits_domain", 1, 2),
                                 ("split_digits_class", 1, 10), ("permuted_digits", 1, 10)):
        _, _, column, *_ = _built(name)
        assert (column.num_heads, column.num_outputs, column.head.out_features) == (heads, outputs, heads * outputs)
    _, _, column, *_ = _built("stationary", model="classifier_cnn")  # any world: one head over its classes
    assert (column.num_heads, column.num_outputs) == (1, 10)


def test_heads_are_selected_by_task_id():
    cfg, world, column, rule, *_ = _built()
    with torch.no_grad():  # head h answers "class 1" with score h, so the picked head is readable from the logits
        column.head.weight.zero_()
        column.head.bias.copy_(torch.tensor([[0.0, float(h)] for h in range(5)]).flatten())
    obs = torch.rand(4, 1, 8, 8)
    task = torch.tensor([3, 0, 4, 1])
    _, tr = column({}, obs, torch.zeros(4, 1), torch.ones(4, dtype=torch.bool),
                   labels={"class": torch.tensor([7, 0, 9, 2]), "target": torch.tensor([1, 0, 1, 0]), "task": task})
    assert torch.equal(tr["logits"][:, 1], task.float())
    expect = F.cross_entropy(torch.stack([torch.zeros(4), task.float()], 1), torch.tensor([1, 0, 1, 0]))
    assert torch.allclose(tr["loss"], expect)
    emb = column.embed(obs[:, None].expand(4, 2, 1, 8, 8), torch.zeros(4, 2, 1))
    assert emb["logits"].shape == (4, 5, 2) and emb["z"].shape == (4, 2, 400) and emb["z_agg"].shape == (4, 400)
    # the evaluation reads each episode's own head: "class 1" everywhere but on task 0's (a tie -> class 0)
    acc, _ = head_accuracy(emb["logits"].numpy(), {"task": task.numpy(), "target": np.ones(4)})
    assert acc == 0.75
    _, tr = column({}, obs, torch.zeros(4, 1), torch.ones(4, dtype=torch.bool))  # no labels: no objective
    assert torch.isnan(tr["loss"]) and tr["logits"].shape == (4, 5, 2)  # every head


def test_average_accuracy_is_the_mean_of_the_last_phase_end_row():
    rows = np.array([[0.9, 0.1, 0.2], [0.5, 0.8, 0.1], [0.3, 0.6, 1.0]])
    c = continual_of_rows(rows)
    assert c["average_accuracy"] == pytest.approx((0.3 + 0.6 + 1.0) / 3)
    assert c["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert np.isnan(continual_of_rows(rows[:2])["average_accuracy"])  # stopped before the last task


@pytest.mark.parametrize("protocol,low,high", [("split_digits_task", 0.9, 1.0), ("split_digits_class", 0.1, 0.35)])
def test_short_backprop_run_shows_the_textbook_pattern(protocol, low, high, tmp_path):
    """Fine-tuning, seed 0, 40 steps of 128 per task: Task-IL near perfect, Class-IL only the last task."""
    res = runner.invoke(app, ["run", protocol, "--rule", "backprop", "--steps", "200", "--out", str(tmp_path / "r"),
                              "--quiet", *FAST])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    last = s["head_matrix"][-1]
    assert s["average_accuracy"] == pytest.approx(np.mean(last)) and low <= s["average_accuracy"] <= high
    assert len(s["head_matrix"]) == 5 and s["head_bwt"] == pytest.approx(-s["head_forgetting"])
    if protocol == "split_digits_class":
        assert max(last[:4]) < 0.1 and last[4] > 0.9  # every earlier task forgotten, the last one learnt
    else:  # the store holds the heads' accuracy and `colsim analyze` reads the same numbers from it
        from colsim.analysis.analyze import analyze_run

        from colsim.analysis.store import open_run

        a = analyze_run(tmp_path / "r")
        assert a["average_accuracy"] == pytest.approx(s["average_accuracy"])
        assert a["head_forgetting"] == pytest.approx(s["head_forgetting"])
        tree = open_run(tmp_path / "r")  # the dashboard's own-heads matrix is summary.json's
        np.testing.assert_allclose(tree["analysis"]["head_matrix"].values, s["head_matrix"])


@pytest.mark.parametrize("rule", ["backprop+si", "backprop+ewc", "backprop+replay", "backprop+metaplastic", "frozen"])
def test_consolidation_rules_run_unchanged(rule, tmp_path):
    res = runner.invoke(app, ["run", "split_digits_task", "--rule", rule, "--steps", "20", "--out",
                              str(tmp_path / "r"), "--quiet", *FAST])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "completed" and 0 <= s["average_accuracy"] <= 1


def test_a_circuit_of_classifiers_is_refused_with_one_line(tmp_path):
    res = runner.invoke(app, ["run", "columns", "--model", "classifier_mlp", "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 2 and "protocol.circuit: model family 'classifier'" in res.output, res.output


@pytest.mark.parametrize("rule", ["lpl", "espp", "layerwise", "sparse_coding", "lpl+si"])
def test_seq_jepa_rules_are_refused_with_one_line(rule, tmp_path):
    res = runner.invoke(app, ["run", "split_digits_task", "--rule", rule, "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert f"rule '{rule}'" in res.output


def test_class_il_trains_and_scores_the_outputs_seen_so_far():
    """van de Ven & Tolias's code: in Class-IL only the classes met so far are active (``active_outputs: seen``)."""
    _, _, column, *_ = _built("split_digits_class")
    obs, act, start = torch.rand(6, 1, 8, 8), torch.zeros(6, 1), torch.ones(6, dtype=torch.bool)
    emb = column.embed(obs[:, None].expand(6, 2, 1, 8, 8), torch.zeros(6, 2, 1))
    assert torch.isfinite(emb["logits"]).all()  # before training: every output
    target = torch.tensor([0, 1, 1, 0, 1, 0])
    column.train()
    _, tr = column({}, obs, act, start, labels={"class": target, "target": target})
    assert column.seen.tolist() == [True, True] + [False] * 8
    z, _ = column.encoder(obs)
    assert torch.allclose(tr["loss"], F.cross_entropy(column.head(z)[:, :2], target))  # a 2-way softmax
    emb = column.embed(obs[:, None].expand(6, 2, 1, 8, 8), torch.zeros(6, 2, 1))
    assert torch.isinf(emb["logits"][..., 2:]).all() and torch.isfinite(emb["logits"][..., :2]).all()
    column.eval()  # an evaluation-mode pass scores a new class's targets without making them seen
    _, tr = column({}, obs, act, start, labels={"class": target + 4, "target": target + 4})
    assert torch.isfinite(tr["loss"]) and column.seen.sum() == 2
    _, _, column, *_ = _built("split_digits_class", overrides=["model.active_outputs=all"])
    column.train()
    _, tr = column({}, obs, act, start, labels={"class": target, "target": target})
    assert torch.allclose(tr["loss"], F.cross_entropy(tr["logits"], target)) and torch.isfinite(tr["logits"]).all()


def test_heads_only_evaluation_gives_the_same_head_accuracies_and_no_probe_read_outs(tmp_path):
    """``evaluation.readouts: heads`` skips the linear probes (about half a Fashion run) and changes no head number."""
    out = {}
    for mode in ("all", "heads"):
        res = runner.invoke(app, ["run", "split_digits_class", "--rule", "backprop", "--steps", "50", "--out",
                                  str(tmp_path / mode), "--quiet", *FAST, "--set", f"protocol.evaluation.readouts={mode}"])
        assert res.exit_code == 0, res.output
        out[mode] = json.loads((tmp_path / mode / "summary.json").read_text())
    assert out["heads"]["head_matrix"] == out["all"]["head_matrix"]
    assert out["heads"]["average_accuracy"] == out["all"]["average_accuracy"]
    assert all(np.isfinite(out["all"]["probe_acc_agg"])) and set(out["heads"]["probe_acc_agg"]) == {None}


def test_heads_only_evaluation_on_a_column_without_heads_exits_2(tmp_path):
    res = runner.invoke(app, ["run", "stationary", "--steps", "2", "--out", str(tmp_path / "r"), "--quiet",
                              "--set", "protocol.evaluation.readouts=heads"])
    assert res.exit_code == 2 and "protocol.evaluation.readouts: heads" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
