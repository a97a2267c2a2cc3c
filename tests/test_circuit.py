"""Circuits of several columns (issue 14): configuration errors, sensors, the batched shared forward,
t-1 lateral wiring, per-column rules, the store's column dim, a run end to end and its resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from _signals import invoke_with_signal_at_update
from _tiny import TINY
from colsim.cli import app
from colsim.column import Circuit, vote
from colsim.circuit.sensors import Sensor, sense

runner = CliRunner()

# two 16x8 halves of the tiny 16x16 view: they do not overlap
HALVES = ("protocol.circuit={shared: %s, columns: ["
          "{name: a, sensor: {patch: {top: 0, left: 0, height: 16, width: 8}}%s}, "
          "{name: b, sensor: {patch: {top: 0, left: 8, height: 16, width: 8}}}]}")
# two overlapping 12x12 patches, each reading the other
PAIR = ("protocol.circuit={shared: %s, columns: [{name: a, sensor: {patch: {top: 0, left: 0, size: 12}}, reads: [b]}, "
        "{name: b, sensor: {patch: {top: 4, left: 4, size: 12}}, reads: [a]}]}")


def _build(circuit: str, rule: str = "backprop", extra=(), protocol="stationary"):
    from colsim.build import build_run
    from colsim.config import resolve_run_config

    cfg = resolve_run_config(protocol, rule=rule, overrides=TINY + [circuit, *extra], seed=0)
    return cfg, *build_run(cfg)


# ------------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("circuit,msg", [
    ("{columns: [{name: a}, {name: b, sensor: {patch: {top: 8, left: 0, size: 12}}}]}",
     "protocol.circuit.columns[1].sensor.patch: rows 8..19, columns 0..11 fall outside the 16x16 view"),
    ("{columns: [{name: a, reads: [z]}, {name: b}]}", "protocol.circuit.columns[0].reads[0]: unknown column 'z'"),
    ("{columns: [{name: a}, {name: b, reads: [a, b]}]}", "protocol.circuit.columns[1].reads[1]: column 'b' reads itself"),
    ("{columns: [{name: a, reads: [b, b]}, {name: b}]}", "protocol.circuit.columns[0].reads[1]: 'b' is listed twice"),
    ("{columns: [{name: a}, {name: a}]}", "protocol.circuit.columns[1].name: 'a' is used twice"),
    ("{columns: [{name: vote}]}", "protocol.circuit.columns[0].name: 'vote' is reserved"),
    ("{columns: [{name: a}, {name: b, sensor: {patch: {size: 8}}}]}",
     "protocol.circuit.columns[1].sensor: shared weights need every sensor to give the same (channels, height, width)"),
    ("{columns: [{name: a, sensor: {channels: [depth]}}]}",
     "protocol.circuit.columns[0].sensor.channels[0]: no channel 'depth'; the world names no channels"),
    ("{columns: [{name: a, sensor: {channels: [1]}}]}", "protocol.circuit.columns[0].sensor.channels[0]: channel 1 does not exist"),
    ("{columns: [{name: a}], vote: majority}", "protocol.circuit.vote: must be one of"),
    ("{columns: [{name: a, sensor: {patch: {top: 0, size: 0}}}]}", "protocol.circuit.columns[0].sensor.patch.size: must be > 0"),
    ("{columns: []}", "protocol.circuit.columns:"),
])
def test_bad_circuit_exits_2_with_one_line_naming_the_field(circuit, msg):
    res = runner.invoke(app, ["validate", "stationary", *[a for s in TINY for a in ("--set", s)],
                              "--set", f"circuit={circuit}"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert msg in text, text
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 2  # one line (wrapped by rich)


def test_lateral_wiring_needs_a_model_that_reads_context():
    res = runner.invoke(app, ["validate", "stationary", "--model", "spiking_mlp", "--set", "protocol.world.image_size=16",
                              "--set", "circuit={columns: [{name: a, reads: [b]}, {name: b}]}"])
    assert res.exit_code == 2
    assert "protocol.circuit.columns[0].reads: model family 'spiking' cannot take lateral input" in " ".join(res.output.split())


def test_shared_weights_reject_a_partition_naming_a_column():
    from colsim.config import ConfigError

    with pytest.raises(ConfigError, match="pattern 'a.encoder.\\*' addresses column 'a'.*circuit.shared: false"):
        _build(HALVES % ("true", ""), extra=["rule={partition: {'a.encoder.*': {name: backprop}, '*': {name: backprop}}}"])


def test_sensors_resolve_against_the_world():
    """Patches default to the whole view, channels to all; a channel the world names (objects3d's depth)
    resolves to its index, so a column can sense depth alone."""
    from colsim.circuit.config import CircuitConfig, check_circuit

    c = CircuitConfig.model_validate({"shared": False, "columns": [
        {"name": "lum", "sensor": {"channels": ["luminance"]}},
        {"name": "depth", "sensor": {"channels": ["depth"], "patch": {"top": 2, "left": 4, "height": 6, "width": 3}}},
        {"name": "both"}]})
    res = check_circuit(c, (2, 16, 16), ("luminance", "depth"))
    assert res == [((0,), 0, 0, 16, 16), ((1,), 2, 4, 6, 3), ((0, 1), 0, 0, 16, 16)]


# ------------------------------------------------------------------------------------------ sensors / vote

def test_sense_cuts_patches_and_channels_from_a_hand_made_image():
    obs = torch.arange(2 * 2 * 4 * 5, dtype=torch.float32).view(2, 2, 4, 5)  # (B, C, H, W), value = index
    s0 = Sensor((0, 1), 0, 0, 2, 3)
    s1 = Sensor((1,), 2, 2, 2, 3)
    with pytest.raises(RuntimeError):  # different channel counts cannot be stacked
        sense(obs, [s0, s1])
    x = sense(obs, [Sensor((1,), 0, 0, 2, 3), s1])  # (N, B, 1, 2, 3)
    assert x.shape == (2, 2, 1, 2, 3)
    # image 1 starts at 2*4*5 = 40, its channel 1 at 60; rows 2-3 (+10, +15), columns 2-4 of the 4x5 grid
    assert x[1, 1, 0].tolist() == [[72.0, 73.0, 74.0], [77.0, 78.0, 79.0]]
    assert x[0, 0, 0].tolist() == [[20.0, 21.0, 22.0], [25.0, 26.0, 27.0]]
    assert sense(obs, [s0])[0].equal(obs[:, :, :2, :3])


def test_vote_mean_and_consensus_by_hand():
    x = torch.tensor([[0.0, 4.0], [1.0, 0.0], [10.0, 2.0]])[:, None]  # (N=3, 1, D=2)
    assert vote(x, "mean")[0].tolist() == pytest.approx([11 / 3, 2.0])
    assert vote(x, "consensus")[0].tolist() == [1.0, 2.0]  # coordinate-wise median: the outlier 10 does not count
    assert vote(x[:2], "consensus")[0].tolist() == [0.5, 2.0]
    assert vote(x, "evidence")[0].tolist() == pytest.approx([11 / 3, 2.0])  # in-run entry of the evidence vote


# ------------------------------------------------------------------------------------------ stepping

def _ticks(world, n: int, batch: int = 8):
    from colsim.simulate import _seeded

    stream = world.stream(batch, 4, None, {})
    ss = stream.init(_seeded(0, 1))
    out = []
    for t in range(n):
        ss, st = stream.step(ss)
        out.append((st.obs, st.action, st.start | (t == 0)))
    return out


def test_shared_weights_are_one_batched_forward_equal_to_a_loop_over_columns():
    cfg, world, circuit, rule, local, opt = _build(HALVES % ("true", ""))
    assert isinstance(circuit, Circuit) and circuit.shared is not None
    col = circuit.shared
    circuit.eval()  # batch statistics and dropout would differ between a batch of N*B and N batches of B
    calls = []
    fwd = col.forward
    col.forward = lambda *a, **kw: (calls.append(a[1].shape), fwd(*a, **kw))[1]
    cs = circuit.init_state(8, "cpu")
    loop = [col.init_state(8, "cpu") for _ in range(2)]
    for obs, act, start in _ticks(world, 3):
        cs, tr = circuit(cs, obs, act, start)
        n_calls = len(calls)
        for i, x in enumerate(sense(obs, circuit.sensors)):
            loop[i], tr_i = fwd(loop[i], x, act, start)
            for k in ("z", "z_agg", "z_hat", "loss_pred"):
                assert torch.allclose(tr[k][8 * i:8 * (i + 1)], tr_i[k], atol=1e-5), k
        assert n_calls == len(calls)
    assert calls == [torch.Size([16, 1, 16, 8])] * 3  # one forward per tick, of N*B = 2*8 patches
    ps = world.probe_set(None, 6, 3, torch.Generator().manual_seed(0), {})
    emb = circuit.embed(ps.obs, ps.actions)
    assert emb["z"].shape[:3] == (6, 3, 3) and emb["z_agg"].shape[:2] == (6, 3)
    for i, x in enumerate(sense(ps.obs, circuit.sensors)):
        e = col.embed(x, ps.actions)
        assert torch.allclose(emb["z_agg"][:, i], e["z_agg"], atol=1e-5)
        assert torch.allclose(emb["loss_pred"][:, i], e["loss_pred"], atol=1e-5)
    assert torch.allclose(emb["z_agg"][:, 2], emb["z_agg"][:, :2].mean(1), atol=1e-6)  # the vote entry


@pytest.mark.parametrize("shared", ["true", "false"])
def test_lateral_wiring_reads_the_previous_tick_only(shared):
    """a reads b. A change of b's patch at tick 1 reaches b's z_AGG at tick 2 (its window) and a's z_AGG only
    at tick 3 (b's z_AGG of tick 2, read at t-1) — never a's at tick 2. Without wiring a never changes."""
    for wired in (True, False):
        cfg, world, circuit, *_ = _build(HALVES % (shared, ", reads: [b]" if wired else ""))
        circuit.eval()
        ticks = _ticks(world, 4)
        runs = []
        for perturb in (False, True):
            cs, aggs = circuit.init_state(8, "cpu"), []
            for t, (obs, act, start) in enumerate(ticks):
                if perturb and t == 1:
                    obs = obs.clone()
                    obs[..., 8:] += 1.0  # b's half only
                cs, tr = circuit(cs, obs, act, start)
                aggs.append(tr["z_agg"].view(2, 8, -1))
            runs.append(aggs)
        (base, pert) = runs
        same = [[torch.equal(base[t][c], pert[t][c]) for c in range(2)] for t in range(4)]
        assert same[0] == same[1] == [True, True]
        assert same[2] == [True, False]  # b's window holds the changed view; a has not read it yet
        assert same[3] == [not wired, False]


def test_context_is_masked_until_the_sources_have_a_z_agg():
    cfg, world, circuit, *_ = _build(PAIR % "true")
    circuit.eval()
    seen = []
    fwd = circuit.shared.forward

    def spy(*a, **kw):
        seen.append(kw.get("context_valid"))
        return fwd(*a, **kw)

    circuit.shared.forward = spy
    cs = circuit.init_state(8, "cpu")
    valid, starts = [], []
    for obs, act, start in _ticks(world, 5):
        cs, tr = circuit(cs, obs, act, start)
        valid.append(tr["valid"][:8])
        starts.append(start)
    assert seen[0] is None  # tick 0: nothing to read yet
    assert not seen[1].any()  # tick 1: the sources' z_AGG of tick 0 aggregated no view
    for t in range(2, 5):  # a stream reads when the sources had a z_AGG at t-1 and no new episode begins at t
        exp = valid[t - 1] & ~starts[t]
        assert torch.equal(seen[t], torch.cat([exp, exp])), t
    assert seen[2].any() and any(s.any() for s in starts[2:])  # both cases occur (streams start episodes apart)
    assert not any((seen[t] & torch.cat([starts[t]] * 2)).any() for t in range(5) if seen[t] is not None)
    ctx = cs["z_prev"]  # (N, B, W) z_AGG of the last tick, what the next one reads
    assert torch.equal(ctx, tr["z_agg"].detach().view(2, 8, -1))


def test_per_column_weights_rules_by_column_name():
    """Per-column weights: parameter names carry the column's name, a partition pattern naming a column
    gives that column its own rule (here layer-local LPL for a, backprop for b), and each column's
    rule only updates its own parameters."""
    part = "rule={partition: {'a.*': {name: lpl}, '*': {name: backprop}}}"
    cfg, world, circuit, rule, local, opt = _build(HALVES % ("false", ""), extra=[part])
    params = circuit.trainable()
    assert {n.split(".")[0] for n in params} == {"a", "b"}
    assert circuit.local_columns == {"a": True, "b": False} and local
    state = rule.init(params)
    cs = circuit.init_state(8, "cpu")
    for obs, act, start in _ticks(world, 2):
        cs, tr = circuit(cs, obs, act, start, local=local)
        tr["labels"] = {}
        grads, state, metrics = rule.update(params, state, tr)
    assert set(grads) <= set(params)
    assert any(k.startswith("a/") for k in metrics) and any(k.startswith("b/") for k in metrics)
    assert bool(tr["columns"]["a"]["local"]) and not bool(tr["columns"]["b"]["local"])
    assert all(torch.isfinite(g).all() for g in grads.values())
    nz = {n.split(".")[0] for n, g in grads.items() if g.abs().sum() > 0}
    assert nz == {"a", "b"}


# ------------------------------------------------------------------------------------------ runs

SETS = [a for s in TINY + ["protocol.evaluation.probe_samples=10", "protocol.evaluation.views=2",
                           "protocol.checkpoint.every=3", "protocol.record.flush_every=4"] for a in ("--set", s)]


def test_two_column_run_end_to_end_store_has_a_column_dim(tmp_path):
    out = tmp_path / "run"
    # seqjepa_cnn without its coding-rate term (a regulariser adds to what the rule minimises, not to `loss`)
    res = runner.invoke(app, ["run", "stationary", "--model", "seqjepa_cnn", "--steps", "8", "--quiet", *SETS,
                              "--set", "model.regularizers=[]",
                              "--set", "protocol.evaluation.views=3",
                              "--set", "protocol.evaluation.probe_samples=20", "--set", PAIR % "false", "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 8
    assert s["columns"]["names"] == ["a", "b", "vote"] and len(s["columns"]["probe_acc_agg"][-1]) == 3
    t = xr.open_datatree(str(out / "store.zarr"), engine="zarr")
    circ = json.loads(t.attrs["circuit"])
    assert circ["columns"] == ["a", "b"] and circ["wiring"] == {"a": ["b"], "b": ["a"]} and not circ["shared"]
    assert circ["sensors"]["b"] == {"channels": [0], "top": 4, "left": 4, "height": 12, "width": 12}
    m = t["metrics"].to_dataset()
    assert m["loss"].dims == ("step", "column") and list(m["column"].values) == ["a", "b"]
    assert m["loss_circuit"].dims == ("step",) and m["z_std_mean"].dims == ("step", "column")
    # the circuit's loss is the mean of the columns' (each column's own loss, prediction part only here)
    ok = np.isfinite(m["loss_circuit"].values)
    assert ok.sum() >= 5
    assert np.allclose(m["loss"].values[ok].mean(1), m["loss_circuit"].values[ok], atol=1e-5)
    p = t["probe"].to_dataset()
    assert p["z"].dims == ("eval", "probe_set", "column", "sample", "view", "unit")
    assert p["z_agg"].dims == ("eval", "probe_set", "column", "sample", "unit_agg")
    assert list(p["column"].values) == ["a", "b", "vote"] and p["label_class"].dims == ("probe_set", "sample")
    z = p["z"].values
    assert np.allclose(z[:, :, 2], z[:, :, :2].mean(2), atol=1e-6)  # the vote's z: the columns' mean
    za = p["z_agg"].values
    assert np.allclose(za[:, :, 2], za[:, :, :2].mean(2), atol=1e-6)  # mean vote of z_AGG
    e = t["evaluation"].to_dataset()
    assert e["acc_agg"].dims == ("eval", "probe_set", "column") and e["probe_acc_agg"].dims == ("eval", "column")
    assert e.sizes["eval"] == 2 and e.sizes["column"] == 3
    assert np.allclose(e["probe_acc_agg"].values[-1], s["columns"]["probe_acc_agg"][-1])
    assert s["probe_acc_agg"][-1] == pytest.approx(float(e["probe_acc_agg"].values[-1, 2]))  # summary = the vote


def test_circuit_resume_in_place_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    """SIGTERM mid-phase in a shared-weights circuit with lateral wiring (its t-1 z_AGG is column state)
    and per-entry frozen read-outs: `colsim run --resume` ends equal to the uninterrupted run."""

    args = ["run", "stationary", "--steps", "8", "--seed", "1", "--quiet", *SETS, "--set", PAIR % "true"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert runner.invoke(app, [*args, "--out", str(full)]).exit_code == 0
    res = invoke_with_signal_at_update(runner, app, [*args, "--out", str(part)], monkeypatch, at=5)
    assert res.exit_code == 143, res.output
    ck = torch.load(part / "checkpoints" / "step00000005.pt", weights_only=True)
    assert ck["column_state"]["z_prev"].shape[:2] == (2, 8)  # the t-1 z_AGG travels with the checkpoint
    res = runner.invoke(app, ["run", "--resume", str(part), "--quiet"])
    assert res.exit_code == 0, res.output
    timing = {"wall_s", "eval_s", "eval_share"}
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (full, part))
    assert sa["status"] == sb["status"] == "completed"
    assert {k: v for k, v in sa.items() if k not in timing} == {k: v for k, v in sb.items() if k not in timing}
    ta, tb = (xr.open_datatree(str(r / "store.zarr"), engine="zarr") for r in (full, part))
    for g in ("metrics", "evaluation", "probe"):
        da, db = ta[g].to_dataset(), tb[g].to_dataset()
        assert set(da.variables) == set(db.variables), g
        for v in set(da.variables) - {"steps_per_s"}:
            x, y = da[v].values, db[v].values
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (g, v)
    ma, mb = (torch.load(r / "checkpoints" / "phase00-all_digits.pt", weights_only=True)["model"] for r in (full, part))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert any(k.startswith("shared.lateral.") for k in ma)  # the lateral projection is trained and saved


@pytest.mark.parametrize("spec", ["lpl", "layerwise", "backprop+replay", "backprop+si"])
@pytest.mark.parametrize("shared", ["true", "false"])
def test_rules_step_a_wired_circuit(spec, shared):
    """Every kind of rule (layer-local, auxiliary predictors, replay through ``forward_inputs`` with the
    lateral context, path integrals) trains a wired circuit: finite metrics, every parameter moves."""
    import math

    from colsim.simulate import _seeded, apply_update

    cfg, world, circuit, rule, local, opt = _build(PAIR % shared, rule=spec)
    params = circuit.trainable()
    state = rule.init(params)
    before = {k: v.detach().clone() for k, v in params.items()}
    stream = world.stream(8, 4, None, {})
    ss, cs = stream.init(_seeded(0, 1)), circuit.init_state(8, "cpu")
    for t in range(3):
        ss, st = stream.step(ss)
        cs, tr = circuit(cs, st.obs, st.action, st.start | (t == 0), local=local)
        tr["labels"] = circuit.batch_labels(st.labels)
        grads, state, metrics = rule.update(params, state, tr)
        state = apply_update(params, grads, opt, rule, state)
    assert all(math.isfinite(v) for v in metrics.values())
    assert [k for k, v in params.items() if torch.equal(before[k], v)] == []
