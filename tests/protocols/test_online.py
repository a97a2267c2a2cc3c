"""The online batch-1 protocol: one stream, every view seen once, no replay; the column trains at
B = 1 with BatchNorm on running statistics (models/seq_jepa.py, "Batch 1")."""
from __future__ import annotations

import torch
from typer.testing import CliRunner

from _tiny import TINY, build_tiny
from colsim.build import build_world
from colsim.config import load_protocol, resolve_run_config

ONLINE = ["protocol.stream.batch=1"]


def test_online_protocol_shape():
    p, stationary = load_protocol("online"), load_protocol("stationary")
    assert p["stream"]["batch"] == 1 and len(p["phases"]) == 1
    assert p["world"] == stationary["world"]
    # the same evaluation except its size (stationary's 500 episodes resolve trained vs untrained)
    assert {**p["evaluation"], "probe_samples": 0} == {**stationary["evaluation"], "probe_samples": 0}
    assert p["evaluation"]["probe_samples"] == 200
    assert p["phases"][0]["classes"] == list(range(10))
    cfg = resolve_run_config("online")
    assert cfg.rule.name == "backprop" and not cfg.rule.wrap and cfg.rule.partition is None  # no replay
    assert cfg.protocol.stream.batch == 1


def test_one_stream_every_view_once():
    cfg = resolve_run_config("online")
    world, B, L = build_world(cfg), cfg.protocol.stream.batch, cfg.protocol.stream.episode_length
    stream = world.stream(B, L, None, {})
    state = stream.init(torch.Generator().manual_seed(0))
    views, starts = [], []
    for _ in range(3 * L):
        state, st = stream.step(state)
        assert st.obs.shape == (1, 1, 32, 32)
        views.append((int(st.labels["image"]), *st.labels["angle"].tolist(), *st.labels["scale"].tolist(),
                      *st.labels["shift"].flatten().tolist()))
        starts.append(bool(st.start))
    assert len(set(views)) == 3 * L  # no view repeats: each tick is a fresh view, used once
    assert starts == [t % L == 0 for t in range(3 * L)]  # one stream, episodes of L views back to back


def _bn_stats(column):
    return [b.clone() for n, b in column.named_buffers() if "running" in n]


def test_batch_one_forward_uses_running_statistics():
    # the BatchNorm column (seqjepa_cnn_bn's norms): the packaged default has no running statistics
    cfg, world, column, rule, local, opt = build_tiny("backprop", "online", extra=["model.aggregator.dropout=0.0",
                                                                                  "model.encoder.output_norm=batch",
                                                                                  "model.action_norm=batch"])
    column.train()
    before = _bn_stats(column)
    assert before  # the tiny CNN column has the output norm and the action embedding's norm
    stream = world.stream(1, 4, None, {})
    sstate = stream.init(torch.Generator().manual_seed(0))
    cstate = column.init_state(1, "cpu")
    steps = []
    for _ in range(3):
        sstate, st = stream.step(sstate)
        steps.append(st)
        cstate, trace = column(cstate, st.obs, st.action, st.start)
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(column)))  # statistics unchanged
    # the current view's embedding is the evaluation-mode embedding (running statistics)
    column.eval()
    with torch.no_grad():
        z_eval, _ = column.encoder(steps[-1].obs)
    column.train()
    assert torch.allclose(trace["z"].detach(), z_eval, atol=1e-6)
    # one context view (count 1): the action still reaches the predictor (batch statistics of a single
    # action would have zeroed its embedding)
    s0 = column.init_state(1, "cpu")
    s1, _ = column(s0, steps[0].obs, steps[0].action, torch.tensor([True]))
    _, t_a = column(s1, steps[1].obs, steps[1].action, torch.tensor([False]))
    s1_other = {**s1, "act": s1["act"] * -1.0}
    _, t_b = column(s1_other, steps[1].obs, steps[1].action, torch.tensor([False]))
    assert bool(t_a["valid"]) and not torch.allclose(t_a["z_hat"], t_b["z_hat"])
    # a batch of 2 still trains on batch statistics (running statistics move)
    s2 = column.init_state(2, "cpu")
    obs2 = torch.cat([steps[0].obs, steps[1].obs])
    column(s2, obs2, torch.cat([steps[0].action, steps[1].action]), torch.tensor([True, True]))
    assert not all(torch.equal(a, b) for a, b in zip(before, _bn_stats(column)))


def test_online_run_completes(tmp_path):
    from colsim.cli import app

    sets = [a for s in TINY + ONLINE for a in ("--set", s)]
    res = CliRunner().invoke(app, ["run", "online", "--steps", "24", "--quiet", "--out", str(tmp_path / "r"), *sets])
    assert res.exit_code == 0, res.output
    import json

    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 24
