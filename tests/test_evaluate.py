"""In-run evaluation (colsim.evaluate) and the summary's read-outs (colsim.simulate.make_summary)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from colsim.analysis.probes import LinearReadout, binomial_se, group_sides, readout_accuracy
from colsim.evaluate import embed_probe_sets, image_groups, probe_scores
from colsim.simulate import _seeded, make_summary
from tests._tiny import build_tiny


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg, world, column, rule, local, opt = build_tiny("backprop")
    ev = cfg.protocol.evaluation
    sets = [world.probe_set(ph.classes, 40, ev.views, _seeded(0, 7, j), ph.world)
            for j, ph in enumerate(cfg.protocol.phases[:3])]
    return cfg, world, column, sets


def test_no_source_image_on_both_sides_of_any_probe(tiny):
    _, _, _, sets = tiny
    groups = image_groups(sets)  # (P, N) dataset index of each episode's digit
    assert groups.shape == (3, 40)
    # 40 episodes of 2 classes from ~27-54 probe images per class: some images repeat within a set
    sides = group_sides(groups, seed=0)
    fit_imgs, test_imgs = set(groups[sides].tolist()), set(groups[~sides].tolist())
    assert fit_imgs and test_imgs and not fit_imgs & test_imgs
    # every episode of one image is on one side, in every probe set (pooled / seen-so-far probes too)
    for img in np.unique(groups):
        assert len(set(sides[groups == img].tolist())) == 1


def test_episode_groups_without_image_labels():
    from colsim.stream import ProbeSet

    ps = [ProbeSet(torch.zeros(3, 2, 1, 4, 4), torch.zeros(3, 2, 1), {"class": torch.tensor([0, 1, 0])})
          for _ in range(2)]
    assert image_groups(ps).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_binomial_se_and_frozen_readout_by_hand():
    assert binomial_se(0.85, 100) == pytest.approx(0.0357071, abs=1e-6)  # docs/reference/metrics.md: ≈ 0.035
    assert np.isnan(binomial_se(0.5, 0))
    # binary read-out: class 7 when x0 - x1 > 0 (after standardising with mu = (1, 1), sd = (2, 2))
    r = LinearReadout(mu=np.array([1.0, 1.0]), sd=np.array([2.0, 2.0]), coef=np.array([[1.0, -1.0]]),
                      intercept=np.array([0.0]), classes=np.array([3, 7]))
    x = np.array([[3.0, 1.0], [1.0, 3.0], [5.0, 4.0], [0.0, 0.0]])
    assert r.predict(x).tolist() == [7, 3, 7, 3]
    acc, se = readout_accuracy(r, x, np.array([7, 3, 3, 3]))
    assert acc == 0.75 and se == pytest.approx(np.sqrt(0.75 * 0.25 / 4))


def test_embed_prediction_loss_is_the_training_loss_of_the_episode(tiny):
    """embed()'s loss_pred = 1 - cos(prediction of view M from views 0..M-1, teacher's view M): the loss
    forward() computes at the tick where that view arrives (eval mode, same episode)."""
    cfg, world, column, sets = tiny
    column.eval()
    ps = sets[0]
    obs, act = ps.obs[:6], ps.actions[:6]  # (6, V, C, H, W), (6, V, A)
    V = obs.shape[1]
    out = column.embed(obs, act)
    M = min(column.window, V - 1)
    state = column.init_state(6, "cpu")
    with torch.no_grad():
        for v in range(M + 1):
            start = torch.full((6,), v == 0)
            state, trace = column(state, obs[:, v], act[:, v], start)
    torch.testing.assert_close(out["loss_pred"], trace["loss_pred"], rtol=1e-5, atol=1e-6)
    column.train()


def test_probe_scores_frozen_readout_and_seen_so_far(tiny):
    cfg, world, column, sets = tiny
    emb = embed_probe_sets(column, sets, 64, "cpu")
    names = list(world.spec.action_names)
    sc = probe_scores(emb, sets, names, seed=0)
    P = len(sets)
    for k in ("acc_agg", "acc_z", "seen_acc", "prediction_loss", "equivariance_r2_set"):
        assert sc[k].shape == (P,) and np.isfinite(sc[k]).all() and np.isfinite(sc[f"{k}_se"]).all()
    assert np.isnan(sc["frozen_acc"]).all()  # nothing frozen yet
    # set 0's seen-so-far probe has only set 0's classes: it is the task probe
    assert sc["seen_acc"][0] == pytest.approx(sc["acc_agg"][0])
    # freezing set 1's read-out and re-applying it to the same embeddings reproduces the task probe
    again = probe_scores(emb, sets, names, seed=0, frozen={1: sc["readouts"][1]})
    assert again["frozen_acc"][1] == pytest.approx(sc["acc_agg"][1])
    assert again["frozen_acc_se"][1] == pytest.approx(sc["acc_agg_se"][1])
    # a separable code, then the same code with its sign flipped: the refitted task probe is unaffected,
    # the frozen read-out (fitted on the first) fails on the second — representation drift
    rng = np.random.default_rng(0)
    y = np.stack([ps.labels["class"].numpy() for ps in sets])  # (P, N)
    code = (3.0 * (y[..., None] == np.arange(10)) + 0.1 * rng.normal(size=(*y.shape, 10))).astype(np.float32)
    sep = probe_scores(emb._replace(z_agg=code), sets, names, seed=0)
    assert sep["acc_agg"][1] == 1.0
    flipped = probe_scores(emb._replace(z_agg=-code), sets, names, seed=0, frozen={1: sep["readouts"][1]})
    assert flipped["acc_agg"][1] == 1.0 and flipped["frozen_acc"][1] == 0.0
    # block losses: LPL's predictive term per encoder block, >= 0
    assert sc["block_pred_loss"].shape == (P, 2) and (sc["block_pred_loss"] >= 0).all()


def _ev(phase, acc, frozen, loss, se=0.1):
    P = len(acc)
    z = np.full(P, se)
    return {"phase": phase, "step": 0, "acc_agg": np.array(acc), "acc_agg_se": z, "seen_acc": np.array(acc),
            "seen_acc_se": z, "frozen_acc": np.array(frozen), "frozen_acc_se": z, "prediction_loss": np.array(loss),
            "prediction_loss_se": z, "probe_acc_agg": float(np.mean(acc)), "probe_acc_agg_se": 0.02,
            "probe_acc_z": 0.5, "probe_acc_z_se": 0.01, "equivariance_r2": 0.4, "equivariance_r2_se": 0.03}


def test_summary_readouts_by_hand():
    nan = float("nan")
    evals = [_ev("init", [0.5, 0.5], [nan, nan], [1.0, 1.0]),
             _ev("a", [0.9, 0.6], [0.9, nan], [0.2, 0.8]),
             _ev("b", [0.7, 0.95], [0.6, 0.95], [0.5, 0.1])]
    s = make_summary(evals, ["a", "b"], steps=10, wall=1.0, status="completed", at_start=True)
    assert s["forgetting"] == pytest.approx(0.2) and s["bwt"] == pytest.approx(-0.2)
    assert s["fwt"] == pytest.approx(0.6 - 0.5)
    assert s["frozen_forgetting"] == pytest.approx(0.3)
    # loss: forgetting = L[last, 0] - L[0, 0] = 0.5 - 0.2 (the loss went up); FWT = init - L[0, 1] = 0.2
    assert s["prediction_forgetting"] == pytest.approx(0.3) and s["prediction_bwt"] == pytest.approx(-0.3)
    assert s["prediction_fwt"] == pytest.approx(0.2)
    assert s["forgetting_se"] == pytest.approx(np.sqrt(0.1 ** 2 + 0.1 ** 2))
    assert s["frozen_matrix"][0] == [None, None]
    g = s["gain"]
    assert g["probe_acc_agg"] == pytest.approx(0.825 - 0.5) and g["probe_acc_agg_se"] == pytest.approx(np.sqrt(0.0008))
    assert g["prediction_loss"] == pytest.approx(1.0 - 0.3)  # decrease of the mean loss over sets
    json.dumps(s)  # JSON-safe (NaN -> None)


def test_negative_control_no_learning_no_forgetting(tmp_path):
    """protocol.learn=false: parameters never change, so every read-out's forgetting is exactly 0."""
    from typer.testing import CliRunner

    from colsim.cli import app
    from tests._tiny import TINY

    out = tmp_path / "ctrl"
    args = ["run", "nonstationary", "--steps", "10", "--quiet", "--out", str(out), "--set", "protocol.learn=false"]
    for kv in TINY:
        args += ["--set", kv]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    for k in ("forgetting", "seen_forgetting", "frozen_forgetting", "prediction_forgetting"):
        assert s[k] == 0.0, k
    assert s["gain"]["probe_acc_agg"] == 0.0


@pytest.mark.parametrize("bad", ["a,b", "3-1", "0,0", "", "-1"])
def test_seeds_bad_list_exit_2(bad):
    from typer.testing import CliRunner

    from colsim.cli import app

    res = CliRunner().invoke(app, ["run", "nonstationary", "--seeds", bad])
    assert res.exit_code == 2 and "--seeds" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_parse_seeds():
    from colsim.config import parse_seeds

    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("0-1,7") == [0, 1, 7]


def test_summary_of_a_run_stopped_early_keeps_what_it_measured():
    """Three phases, stopped after two: forgetting/BWT over the two, FWT keeps A[1, 2] (measured)."""
    nan = float("nan")
    evals = [_ev("init", [0.5, 0.5, 0.5], [nan] * 3, [1.0] * 3),
             _ev("a", [0.9, 0.6, 0.55], [0.9, nan, nan], [0.2, 0.8, 0.9]),
             _ev("b", [0.8, 0.95, 0.7], [0.7, 0.95, nan], [0.3, 0.1, 0.6])]
    s = make_summary(evals, ["a", "b", "c"], steps=10, wall=1.0, status="interrupted", at_start=True)
    assert s["forgetting"] == pytest.approx(0.1) and s["frozen_forgetting"] == pytest.approx(0.2)
    assert s["fwt"] == pytest.approx(((0.6 - 0.5) + (0.7 - 0.5)) / 2)
    assert s["prediction_forgetting"] == pytest.approx(0.1)


@pytest.mark.parametrize("names, evals", [
    (["a", "b"], [_ev("init", [0.5, 0.5], [float("nan")] * 2, [1.0, 1.0]),
                  _ev("a", [0.9, 0.6], [0.9, float("nan")], [0.2, 0.8]),
                  _ev("b", [0.7, 0.95], [0.6, 0.95], [0.5, 0.1])]),
    (["a", "b", "c"], [_ev("init", [0.5, 0.5, 0.5], [float("nan")] * 3, [1.0] * 3),  # stopped after two phases
                       _ev("a", [0.8, 0.5, 0.5], [0.8, float("nan"), float("nan")], [0.4, 0.9, 0.9], se=0.05),
                       _ev("a", [0.9, 0.6, 0.55], [0.9, float("nan"), float("nan")], [0.2, 0.8, 0.9]),
                       _ev("b", [0.8, 0.95, 0.7], [0.7, 0.95, float("nan")], [0.3, 0.1, 0.6])]),
])
def test_colsim_analyze_and_summary_json_give_the_same_readout_metrics(names, evals):
    """One continual-summary implementation: ``colsim analyze`` (from the stored evaluation group) and the run's
    summary.json (from the evaluation rows) give the same forgetting / BWT / FWT / forgetting SE per read-out."""
    import xarray as xr

    from colsim.analysis.analyze import readout_summary

    s = make_summary(evals, names, steps=10, wall=1.0, status="completed", at_start=True)
    keys = ("seen_acc", "frozen_acc", "prediction_loss")
    ds = xr.Dataset({k: (("eval", "probe_set"), np.stack([e[k] for e in evals])) for k in keys}
                    | {f"{k}_se": (("eval", "probe_set"), np.stack([e[f"{k}_se"] for e in evals])) for k in keys},
                    coords={"phase": ("eval", [e["phase"] for e in evals]), "probe_set": names})
    r = readout_summary(ds)
    for prefix in ("seen_", "frozen_", "prediction_"):
        for m in ("forgetting", "bwt", "fwt", "forgetting_se"):
            want = s[prefix + m]
            got = r[prefix + m]
            assert (want is None and np.isnan(got)) or got == pytest.approx(want), (prefix + m, got, want)
    assert s["frozen_fwt"] is None  # a frozen read-out exists only from its phase's end on: no FWT
    assert s["seen_forgetting"] == pytest.approx(0.2 if len(names) == 2 else 0.1)
