"""EchoSpike's setting (issue 31): the plain spiking MLP (models/echospike.py), its stream of same-class and
different-class successors (protocols/echospike_samples.py), the per-layer spike-count read-outs, the control rule
rate_matched (rules/rate_matched.py) and the bad inputs that exit 2."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _tiny import stream_steps
from typer.testing import CliRunner

pytest.importorskip("snntorch")

from colsim.cli import app  # noqa: E402
from colsim.evaluate import Embeddings, layer_readout_scores  # noqa: E402
from colsim.models.echospike import EchoSpikeConfig, echospike  # noqa: E402
from colsim.protocols.echospike_samples import EchoSpikeSamples, EchoSpikeSamplesConfig, contrastive_at  # noqa: E402
from colsim.rules.espp import EsppConfig, espp  # noqa: E402
from colsim.rules.rate_matched import RateMatchedConfig, rate_matched, rate_scale, rates_from_run  # noqa: E402
from colsim.types import WorldSpec  # noqa: E402

runner = CliRunner()
SMALL = ["--set", "model.hidden=[12,8]", "--set", "protocol.stream.batch=16", "--set",
         "protocol.evaluation.probe_samples=40"]


def _steps(world, n, batch=6, classes=None):
    return stream_steps(world, n, batch, classes=classes)


def test_successors_alternate_one_to_one_same_then_different_class():
    w = EchoSpikeSamples(EchoSpikeSamplesConfig(data="digits"))
    steps = _steps(w, 7)
    assert [bool(st.start.all()) for st in steps] == [True, False, True, False, True, False, True]
    assert not any(bool(st.start.any()) for st in steps[1::2])  # one kind per tick, for the whole batch
    for prev, st in zip(steps, steps[1:]):
        same = st.labels["class"] == prev.labels["class"]
        assert bool(same.all()) if not st.start.any() else not bool(same.any())
    assert torch.equal(steps[1].obs, w.images[steps[1].labels["image"]])  # native pixels (/ 16), no transform
    assert steps[0].obs.shape == (6, 1, 8, 8)


def test_contrastive_ratio_sets_the_share_of_class_changes():
    assert [contrastive_at(k, 0.25) for k in range(1, 9)] == [False, False, False, True] * 2
    assert all(contrastive_at(k, 1.0) for k in range(1, 5)) and not any(contrastive_at(k, 0.0) for k in range(1, 5))
    w = EchoSpikeSamples(EchoSpikeSamplesConfig(data="digits", contrastive_ratio=0.25))
    starts = [bool(st.start.all()) for st in _steps(w, 9, classes=[3, 7])]
    assert starts == [True, False, False, False, True, False, False, False, True]
    classes = torch.stack([st.labels["class"] for st in _steps(w, 9, classes=[3, 7])])  # (9, B)
    assert set(classes.unique().tolist()) <= {3, 7} and bool((classes[4] != classes[3]).all())


def _column(hidden=(6, 4), T=5, **kw):
    torch.manual_seed(0)
    return echospike(EchoSpikeConfig(hidden=list(hidden), T=T, **kw), WorldSpec((1, 3, 4), 1, ("none",), 10))


def test_trace_broadcast_echo_and_objective():
    col = _column()
    B = 3
    s = col.init_state(B, "cpu")
    obs = torch.ones(B, 1, 3, 4)
    s, tr0 = col(s, obs, torch.zeros(B, 1), torch.ones(B, dtype=torch.bool), local=True)
    assert tr0["broadcast"].tolist() == [0.0, 0.0, 0.0] and float(tr0["loss"]) == 0.0
    s, tr = col(s, obs, torch.zeros(B, 1), torch.tensor([False, True, False]), local=True)
    assert tr["broadcast"].tolist() == [1.0, -1.0, 1.0]
    counts0 = [x.sum(1) for x in tr0["spikes"]]  # [(B, N_l)] the previous sample's counts
    for c, e in zip(counts0, tr["echo"]):
        n = c.sum(1, keepdim=True)
        torch.testing.assert_close(e, torch.where(n > 0, c / n.clamp(min=1), torch.zeros_like(c)))
    assert [x.shape for x in tr["spikes"]] == [(B, 5, 6), (B, 5, 4)] and tr["in_trace"][0].shape == (B, 5, 12)
    # the recorded objective: mean over layers and streams of -b sum_t <S_t, e> / T
    per = torch.stack([-(tr["broadcast"] * torch.einsum("btn,bn->b", S, e)) / 5 for S, e in zip(tr["spikes"], tr["echo"])])
    assert math.isclose(float(tr["loss"]), float(per.mean()), rel_tol=1e-6)
    assert torch.equal(tr["z"], tr["spikes"][-1].sum(1))
    # the input is rate coded at 0.8: all-ones pixels spike in about 80 % of the bins
    assert 0.6 < float(tr["block_in"][0].mean()) < 0.95


def test_espp_trains_the_column_and_embed_reads_every_layer_out():
    col = _column(hidden=(20, 10), readout_layers=[0, 2])
    rule = espp(EsppConfig(c_pos=1e-2, c_neg=-1e-2), col)
    params = col.trainable()
    assert sorted(params) == ["encoder.blocks.0.synapse.weight", "encoder.blocks.1.synapse.weight"]
    s = col.init_state(8, "cpu")
    g = torch.Generator().manual_seed(1)
    for k, start in enumerate([True, False, True]):
        s, tr = col(s, torch.rand(8, 1, 3, 4, generator=g), torch.zeros(8, 1), torch.full((8,), start), local=True)
        grads, _, metrics = rule.update(params, {}, tr)
    assert any(bool((v != 0).any()) for v in grads.values()) and metrics["espp.l0.gate"] > 0
    out = col.embed(torch.rand(5, 2, 1, 3, 4, generator=g), torch.zeros(5, 2, 1))
    assert out["readout_names"] == ["input", "layer2"]
    assert [r.shape for r in out["readout"]] == [(5, 2, 12), (5, 2, 10)]
    assert torch.equal(out["readout"][1], out["spike_count"][1]) and out["z_agg"].shape == (5, 10)


def test_layer_readout_scores_hand_computed():
    """Two read-out layers on 2 probe sets x 4 images x 2 views: layer 0 separates the classes, layer 1 is constant.
    Fit side = images 0, 1 of each set; scored: 4 images, so the standard error counts 4 items."""
    labels = np.array([[0, 1, 0, 1], [0, 1, 0, 1]])
    sep = np.repeat(labels[..., None, None].astype(float), 2, axis=2) * np.ones((1, 1, 1, 3))  # (2, 4, 2, 3)
    const = np.ones((2, 4, 2, 5))
    fit = np.array([[True, True, False, False]] * 2)
    emb = Embeddings(np.zeros((2, 4, 2, 1)), np.zeros((2, 4, 1)), np.zeros((2, 4)), np.zeros((2, 4, 0)),
                     readout=(sep, const), readout_names=("input", "layer1"))
    out = layer_readout_scores(emb, labels, fit)
    assert out["layer_acc"][0] == 1.0 and out["layer_acc_se"][0] == 0.0
    assert out["layer_acc"][1] == 0.5 and out["layer_acc_se"][1] == pytest.approx(math.sqrt(0.25 / 4))
    assert out["layer_spikes"].tolist() == [0.5, 1.0]


def test_rate_matched_rescales_towards_the_target_rate():
    assert rate_scale(0.2, 0.05, 0.5, 2.0) == 0.5 and rate_scale(0.0, 0.1, 0.5, 2.0) == 2.0
    assert rate_scale(0.1, 0.4, 0.5, 3.0) == pytest.approx(2.0)
    col = _column(hidden=(30, 20), T=10)
    rule = rate_matched(RateMatchedConfig(target_rates=[0.05]), col)
    params = col.trainable()
    w0 = params["encoder.blocks.0.synapse.weight"].detach().clone()
    s = col.init_state(32, "cpu")
    obs = torch.rand(32, 1, 3, 4, generator=torch.Generator().manual_seed(2))
    for _ in range(25):
        s, tr = col(s, obs, torch.zeros(32, 1), torch.zeros(32, dtype=torch.bool), local=True)
        grads, _, m = rule.update(params, {}, tr)
        with torch.no_grad():
            for n, g in grads.items():
                params[n].sub_(g)  # SGD at lr 1: W <- s W
    assert abs(m["rate_matched.l0.rate"] - 0.05) < 0.02 and abs(m["rate_matched.l1.rate"] - 0.05) < 0.02
    w = params["encoder.blocks.0.synapse.weight"].detach()
    cos = float((w * w0).sum() / (w.norm() * w0.norm()))
    assert cos == pytest.approx(1.0, abs=1e-6) and float(w.norm() / w0.norm()) < 1  # direction kept, scale down


def test_rate_matched_reads_targets_from_an_espp_run(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"layer_readout_names": ["input", "layer1", "layer2"],
                                                       "layer_readout_spikes": [[9, 9, 9], [3.0, 2.0, 0.5]]}))
    (tmp_path / "config.yaml").write_text("model: {name: echospike, T: 10}\n")
    assert rates_from_run(str(tmp_path)) == [0.2, 0.05]


def test_run_frozen_keeps_read_outs_in_summary(tmp_path):
    res = runner.invoke(app, ["run", "echospike_digits", "--rule", "frozen", "--steps", "3", "--quiet",
                              "--out", str(tmp_path / "f"), *SMALL])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert s["layer_readout_names"] == ["input", "layer1", "layer2"]
    first, last = s["layer_readout_accuracy"]
    assert first == last and all(0.1 < a <= 1 for a in first)  # frozen: the same layers read out the same
    assert all(se > 0 for se in s["layer_readout_accuracy_se"][-1])


@pytest.mark.parametrize("args,field", [
    (["--set", "protocol.world.contrastive_ratio=1.5"], "protocol.world.contrastive_ratio: must be <= 1"),
    (["--set", "protocol.world.contrastive_ratio=-0.1"], "protocol.world.contrastive_ratio: must be >= 0"),
    (["--set", "model.hidden=[200,0,200]"], "model.hidden[1]: must be >= 1"),
    (["--set", "model.readout_layers=[0,4]"], "model.readout_layers: layer 4 does not exist"),
    (["--rule", "rate_matched", "--set", "rule.target_rates=[0.1,0.1]"], "rule.target_rates: 2 target rates"),
    (["--rule", "backprop"], "rule 'backprop' needs end-to-end gradients"),
])
def test_bad_input_exits_2_with_one_line_naming_the_field(args, field, tmp_path):
    res = runner.invoke(app, ["run", "echospike_digits", *args, "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert field in " ".join(res.output.split()) and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_dashboard_budget_curve_reads_each_run_s_last_and_step_0_read_outs(tmp_path):
    """The dashboard's "Read-out vs training samples" row (issue 31's budget curve): each run's last evaluation at
    steps x batch samples under its rule, its step-0 evaluation under ``untrained``."""
    from colsim.analysis.dashboard import BUDGET_TITLE, _Run, build_layout, readout_budget

    dirs = []
    for steps in (2, 4):
        d = tmp_path / f"s{steps}"
        res = runner.invoke(app, ["run", "echospike_digits", "--rule", "espp", "--steps", str(steps), "--quiet",
                                  "--out", str(d), *SMALL])
        assert res.exit_code == 0, res.output
        dirs.append(d)
    rm = tmp_path / "rm"  # the rate-matched arm of the 2-step run stands at that run's 32 samples, not its own 48
    res = runner.invoke(app, ["run", "echospike_digits", "--rule", "rate_matched", "--set", f"rule.from_run={dirs[0]}",
                              "--steps", "3", "--quiet", "--out", str(rm), *SMALL])
    assert res.exit_code == 0, res.output
    data = readout_budget([_Run(d) for d in dirs] + [_Run(rm)])
    assert data["layers"] == ["input", "layer1", "layer2"]
    assert sorted(data["arms"]) == ["espp", "rate_matched", "untrained"] and sorted(data["arms"]["espp"]) == [32, 64]
    assert list(data["arms"]["rate_matched"]) == [32]
    np.testing.assert_array_equal(data["arms"]["rate_matched"][32][0],
                                  json.loads((rm / "summary.json").read_text())["layer_readout_accuracy"][-1])
    for d, n in zip(dirs, (32, 64)):
        acc = json.loads((d / "summary.json").read_text())["layer_readout_accuracy"]
        np.testing.assert_array_equal(data["arms"]["espp"][n][0], acc[-1])
        np.testing.assert_array_equal(data["arms"]["untrained"][n][0], acc[0])
    assert sorted(data["arms"]["untrained"]) == [32, 64] and len(data["arms"]["untrained"][32]) == 1  # not twice
    rows, _, _ = build_layout([str(d) for d in dirs])
    titles = [p.opts.get().kwargs.get("title") for row in rows for p in row]
    assert [t for t in titles if t and t.startswith(BUDGET_TITLE)] == [f"{BUDGET_TITLE} - {n}" for n in data["layers"]]
