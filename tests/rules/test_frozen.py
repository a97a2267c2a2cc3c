"""The frozen-weights control arm (``--rule frozen``) and the consolidation penalties' share (issue 27)."""
from __future__ import annotations

import math

import pytest
import torch

from colsim.config import ConfigError, resolve_run_config
from colsim.record import MemoryRecorder
from colsim.simulate import run
from _tiny import TINY, build_tiny


def _series(rec, key):
    return [v[key] for _, v in rec.metrics if key in v]


def _run(rule: str, model=None, extra=(), steps=12):
    cfg = resolve_run_config("action_shift", rule=rule, model=model, overrides=list(TINY) + list(extra), seed=0,
                             steps=steps)
    from colsim.build import build_run

    world, column, r, local, opt = build_run(cfg)
    before = {n: p.detach().clone() for n, p in column.named_parameters()}
    rec = MemoryRecorder()
    res = run(column, r, cfg.protocol, rec, world=world, optimizer=opt, seed=cfg.seed, local=local)
    assert res.status == "completed"
    return res, column, before, rec


def test_frozen_changes_no_parameter_and_forgets_exactly_nothing():
    res, column, before, rec = _run("frozen")
    for n, p in column.named_parameters():  # the teacher too: an EMA of an unchanged copy stays equal
        assert torch.equal(p, before[n]), n
    s = res.summary
    assert s["frozen_forgetting"] == 0.0 and s["forgetting"] == 0.0 and s["prediction_forgetting"] == 0.0
    rows = [r for r in s["frozen_matrix"][1:]]
    for k in range(len(rows)):  # the read-out of phase k scores the same after every later phase
        assert {rows[j][k] for j in range(k, len(rows))} == {rows[k][k]}
    assert s["unconsolidated_buffers"] == []
    losses = [v for v in _series(rec, "loss.pred") if not math.isnan(v)]
    assert losses and all(v > 0 for v in losses)  # the forward ran and its loss was recorded


def test_frozen_runs_the_forward_in_training_mode_so_bn_statistics_drift():
    """The old BatchNorm column under the frozen arm: no weight changes, yet its running statistics move
    and its read-outs 'forget' — the confound the arm exists to expose; the summary names those buffers."""
    res, column, before, _ = _run("frozen", model="seqjepa_cnn_bn")
    assert all(torch.equal(p, before[n]) for n, p in column.named_parameters())
    assert column.encoder.out_norm.num_batches_tracked.item() > 0
    assert "encoder.out_norm.running_mean" in res.summary["unconsolidated_buffers"]
    assert "action_embed.norm.running_var" in res.summary["unconsolidated_buffers"]
    assert res.summary["frozen_forgetting"] != 0.0


def test_learn_false_freezes_the_statistics_too():
    res, column, _, _ = _run("frozen", model="seqjepa_cnn_bn", extra=["protocol.learn=false"])
    assert column.encoder.out_norm.num_batches_tracked.item() == 0
    assert res.summary["frozen_forgetting"] == 0.0


def test_frozen_plus_replay_runs_and_stays_frozen():
    res, column, before, rec = _run("frozen+replay")
    assert all(torch.equal(p, before[n]) for n, p in column.named_parameters())
    assert res.summary["frozen_forgetting"] == 0.0
    assert max(_series(rec, "replay.filled")) > 0


@pytest.mark.parametrize("mod", ["si", "ewc", "metaplastic"])
def test_a_modifier_that_acts_on_updates_is_refused_around_frozen(mod):
    with pytest.raises(ConfigError, match=rf"rule\.wrap\[0\]: '{mod}' acts on parameter updates and rule 'frozen'"):
        resolve_run_config("action_shift", rule=f"frozen+{mod}", overrides=list(TINY))


def test_cli_refuses_frozen_plus_si_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from colsim.cli import app

    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["run", "action_shift", "--rule", "frozen+si", "--out", str(out), "--quiet"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "'si' acts on parameter updates" in res.output
    assert not out.exists()


@pytest.mark.parametrize("mod,key,bad", [("si", "c", "-1"), ("ewc", "lam", "nan"), ("ewc", "lam", "-5")])
def test_a_strength_outside_its_range_is_refused_naming_the_field(mod, key, bad):
    with pytest.raises(ConfigError, match=rf"rule\.wrap\[0\]\.{key}"):
        resolve_run_config("action_shift", rule=f"backprop+{mod}", overrides=list(TINY) + [f"rule.wrap[0].{key}={bad}"])


@pytest.mark.parametrize("mod,scale", [("si", "c"), ("ewc", "lam")])
def test_penalty_share_is_the_penalty_over_penalty_plus_loss(mod, scale):
    """After one phase end (so the anchor and importance are set) and a few more steps, each tick records
    ``<mod>.penalty_share`` = penalty / (penalty + |loss|), the loss being the column's (hand-checked here
    from the recorded penalty and loss)."""
    res, _, _, rec = _run(f"backprop+{mod}", extra=[f"rule.wrap[0].{scale}=1.0e6"], steps=16)
    rows = [v for _, v in rec.metrics if f"{mod}.penalty_share" in v]
    shares = [(v[f"{mod}.penalty_share"], v[f"{mod}.penalty"], v["loss"]) for v in rows
              if not math.isnan(v[f"{mod}.penalty_share"])]
    assert shares
    for s, p, l in shares:
        want = p / (p + abs(l)) if p + abs(l) > 0 else 0.0
        assert s == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert shares[0][0] == 0.0 and max(s for s, _, _ in shares) > 0.1  # no penalty before the first anchor
