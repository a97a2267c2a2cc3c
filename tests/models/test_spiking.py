"""The spiking column (models/spiking.py): LIF dynamics by hand, coding, the column contract,
the seq-JEPA parts it reuses, the other rules on it, and bad input."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

pytest.importorskip("snntorch")

from _tiny import TINY  # noqa: E402
from colsim.build import build_run  # noqa: E402
from colsim.cli import app  # noqa: E402
from colsim.config import ConfigError, resolve_run_config  # noqa: E402
from colsim.models.spiking import (  # noqa: E402
    LIFBlock, SpikingColumn, SpikingConfig, input_trace, latency_code, rate_code, spiking,
)
from colsim.simulate import _seeded  # noqa: E402
from colsim.types import WorldSpec  # noqa: E402

SPIKING_TINY = TINY + ["model.T=3"]


def _build(model="spiking_cnn", rule="backprop", extra=(), seed=0):
    cfg = resolve_run_config("nonstationary", rule=rule, model=model, overrides=SPIKING_TINY + list(extra), seed=seed)
    return (cfg, *build_run(cfg))


def _ticks(cfg, world, n):
    B = cfg.protocol.stream.batch
    stream = world.stream(B, cfg.protocol.stream.episode_length, [0, 1], {})
    ss = stream.init(_seeded(0, 1))
    for t in range(n):
        ss, st = stream.step(ss)
        yield st.obs, st.action, st.start | (t == 0)


# --------------------------------------------------------------------------- neurons by hand

def _block(W, beta):
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(W)
    return LIFBlock(lin, torch.as_tensor(beta, dtype=torch.float64))


def test_lif_subtract_reset_by_hand():
    """U_t = beta U_{t-1} + W x_t - S_{t-1}, S_t = H(U_t - 1); beta 0.5, W = [[.6, .5], [.2, 0]].

    neuron 0: I = .6, 1.1, .5 -> U = .6, .5*.6 + 1.1 = 1.4 (spike), .5*1.4 + .5 - 1 = .2
    neuron 1: I = .2, .2, 0   -> U = .2, .3, .15 (silent)
    """
    blk = _block(torch.tensor([[0.6, 0.5], [0.2, 0.0]], dtype=torch.float64), 0.5)
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64).unsqueeze(1)  # (T=3, B=1, 2)
    S, U = blk(x)
    assert S.dtype == torch.float64
    torch.testing.assert_close(U[:, 0], torch.tensor([[0.6, 0.2], [1.4, 0.3], [0.2, 0.15]], dtype=torch.float64))
    assert S[:, 0].tolist() == [[0, 0], [1, 0], [0, 0]]


def test_lif_constant_drive_and_heterogeneous_beta():
    """Constant current 1.5, beta 1: U = 1.5 (spike), 1.5 + 1.5 - 1 = 2 (spike), 2 + 1.5 - 1 = 2.5.
    Per-neuron beta (0.5, 1) with I = 0.8: U = .8, 1.2 (spike) / .8, 1.6 (spike); then
    .5*1.2 + .8 - 1 = .4 / 1.6 + .8 - 1 = 1.4."""
    blk = _block(torch.tensor([[1.5]], dtype=torch.float64), 1.0)
    S, U = blk(torch.ones(3, 1, 1, dtype=torch.float64))
    assert U[:, 0, 0].tolist() == [1.5, 2.0, 2.5] and S[:, 0, 0].tolist() == [1, 1, 1]
    blk = _block(torch.tensor([[0.8], [0.8]], dtype=torch.float64), [0.5, 1.0])
    S, U = blk(torch.ones(3, 1, 1, dtype=torch.float64))
    torch.testing.assert_close(U[:, 0], torch.tensor([[0.8, 0.8], [1.2, 1.6], [0.4, 1.4]], dtype=torch.float64))
    assert S[:, 0].tolist() == [[0, 0], [1, 1], [0, 1]]


def test_heterogeneous_beta_config():
    cfg, world, column, *_ = _build(extra=["model.beta=0.8", "model.beta_spread=0.1"])
    for blk in column.encoder.blocks:
        b = blk.lif.beta
        assert b.shape == (blk.synapse.out_channels, 1, 1)  # one beta per conv channel
        assert bool(((b >= 0.7) & (b <= 0.9)).all()) and b.unique().numel() > 1


def test_input_trace_and_coding():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]).unsqueeze(1)
    torch.testing.assert_close(input_trace(x, 0.5)[:, 0], torch.tensor([[1.0, 0.0], [1.5, 1.0], [0.75, 1.5]]))
    # latency: one spike at round((1 - x)(T - 1)), T = 5: x = 1 -> 0, .5 -> 2, .25 -> 3, 0 -> none
    s = latency_code(torch.tensor([[1.0, 0.5, 0.25, 0.0]]), 5)[:, 0]  # (T, 4)
    assert s.sum(0).tolist() == [1, 1, 1, 0]
    assert s.argmax(0)[:3].tolist() == [0, 2, 3]
    g = torch.Generator().manual_seed(0)
    r = rate_code(torch.full((1, 4000), 0.3), 10, g)
    assert set(r.unique().tolist()) <= {0.0, 1.0} and abs(float(r.mean()) - 0.3) < 0.01
    assert torch.equal(rate_code(torch.full((2, 3), 0.5), 4, torch.Generator().manual_seed(1)),
                       rate_code(torch.full((2, 3), 0.5), 4, torch.Generator().manual_seed(1)))


# --------------------------------------------------------------------------- column contract

@pytest.mark.parametrize("model", ["spiking_cnn", "spiking_mlp"])
def test_forward_trace_state_and_embed(model):
    cfg, world, column, rule, local, opt = _build(model)
    B, T = cfg.protocol.stream.batch, cfg.model.T
    cs = column.init_state(B, "cpu")
    prev_counts = None
    for t, (obs, act, start) in enumerate(_ticks(cfg, world, 3)):
        cs, tr = column(cs, obs, act, start, local=local)
        assert set(tr) >= set(column.provides) - {"z_hat_rev"}
        assert tr["z"].shape == (B, column.dim) and tr["z_agg"].shape[0] == B and tr["loss_pred"].shape == (B,)
        for s, u, x, xt, e in zip(tr["spikes"], tr["mem"], tr["block_in"], tr["in_trace"], tr["echo"]):
            assert s.shape[:2] == (B, T) and u.shape == s.shape and xt.shape == x.shape and x.shape[:2] == (B, T)
            assert e.shape == (B, s[0, 0].numel())
        if t == 0:  # a phase's first tick: no previous view, no broadcast
            assert (tr["broadcast"] == 0).all() and all((e == 0).all() for e in tr["echo"])
        else:
            assert torch.equal(tr["broadcast"], torch.where(start, -1.0, 1.0))
            for e, c in zip(tr["echo"], prev_counts):  # the previous view's counts, L1-normalised
                n = c.sum(1, keepdim=True)
                torch.testing.assert_close(e, torch.where(n > 0, c / n.clamp(min=1), torch.zeros_like(c)))
        prev_counts = [s.sum(1).flatten(1) for s in tr["spikes"]]
    buf = io.BytesIO()
    torch.save(cs, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert torch.equal(back["seed"], cs["seed"]) and torch.equal(back["z_cache"], cs["z_cache"])
    column.eval()
    obs = torch.rand(3, 4, *world.spec.obs_shape)
    act = torch.randn(3, 4, world.spec.action_dim)
    a, b = column.embed(obs, act), column.embed(obs, act)
    assert a["z"].shape == (3, 4, column.dim) and a["loss_pred"].shape == (3,)
    assert [l.shape[:2] for l in a["layers"]] == [(3, 4)] * len(column.encoder.blocks)
    assert torch.equal(a["z"], b["z"]) and torch.equal(a["z_agg"], b["z_agg"])  # eval_seed: deterministic
    assert torch.isfinite(a["loss_pred"]).all()
    assert torch.isnan(column.embed(obs[:, :1], act[:, :1])["loss_pred"]).all()


def test_count_readout_and_latency_forward():
    cfg, world, column, *_ = _build("spiking_mlp", extra=["model.readout=count", "model.coding=latency"])
    obs, act, start = next(_ticks(cfg, world, 1))
    cs, tr = column(column.init_state(obs.shape[0], "cpu"), obs, act, start)
    torch.testing.assert_close(tr["z"], tr["spikes"][-1].sum(1))  # spikes per view of the last block
    assert (tr["block_in"][0].sum(1) <= 1).all()  # latency: at most one input spike per pixel


# --------------------------------------------------------------------------- rules on the column

def test_backprop_is_bptt_through_the_bins():
    cfg, world, column, rule, local, opt = _build("spiking_mlp", "backprop")
    params = column.trainable()
    state = rule.init(params)
    cs = column.init_state(cfg.protocol.stream.batch, "cpu")
    for obs, act, start in _ticks(cfg, world, 2):
        cs, tr = column(cs, obs, act, start, local=local)
        grads, state, _ = rule.update(params, state, tr)
    assert not local
    enc = [n for n in grads if n.startswith("encoder.")]
    assert enc and all(bool((grads[n] != 0).any()) for n in enc), "the surrogate gradient does not reach every block"


@pytest.mark.parametrize("rule_name", ["lpl", "layerwise"])
def test_local_loss_rules_run(rule_name):
    cfg, world, column, rule, local, opt = _build("spiking_cnn", rule_name)
    params = column.trainable()
    state = rule.init(params)
    cs = column.init_state(cfg.protocol.stream.batch, "cpu")
    for obs, act, start in _ticks(cfg, world, 3):
        cs, tr = column(cs, obs, act, start, local=local)
        grads, state, _ = rule.update(params, state, tr)
        assert all(bool(torch.isfinite(g).all()) for g in grads.values())
        for n, p in params.items():
            p.grad = grads.get(n)
        opt.step()
    assert local and any(bool((grads[n] != 0).any()) for n in grads if n.startswith("encoder.blocks"))


runner = CliRunner()


@pytest.mark.parametrize("args, msg", [
    (["--model", "spiking_cnn", "--set", "model.T=0"], "model.T: "),
    (["--model", "spiking_cnn", "--set", "model.beta=1.5"], "model.beta: "),
    (["--model", "spiking_cnn", "--set", "model.beta=0"], "model.beta: "),
    (["--model", "spiking_mlp", "--set", "model.beta_spread=0.2"], "beta_spread=0.2"),
    (["--model", "spiking_cnn", "--rule", "sparse_coding"], "sparse_coding needs encoder blocks"),
    (["--model", "seqjepa_cnn", "--rule", "espp"], "rule 'espp' needs"),
])
def test_bad_input_exit_2_one_line(args, msg, tmp_path):
    res = runner.invoke(app, ["run", "nonstationary", *args, "--steps", "5", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert msg in " ".join(res.output.split()) and "Traceback" not in res.output
    assert res.output.count("error") == 1  # one message (rich may wrap it over several lines)


def test_bad_beta_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.T"):
        resolve_run_config("nonstationary", model="spiking_cnn", overrides=["model.T=-1"])


def test_direct_factory_and_seeded_init():
    spec = WorldSpec((1, 8, 8), 2, ("a", "b"), 2)
    cfg = SpikingConfig(encoder={"kind": "mlp", "hidden": [6]}, T=2, action_embed=2,
                        aggregator={"layers": 1, "heads": 2}, predictor={"hidden": 8})
    torch.manual_seed(5)
    a = spiking(cfg, spec)
    torch.manual_seed(5)
    b = spiking(cfg, spec)
    assert isinstance(a, SpikingColumn) and a.dim == 6
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(n.startswith("target_encoder.") for n in a.trainable())


def test_batch_one_uses_running_statistics():
    """One stream (protocols/online.yaml): the action embedding is not zeroed and its statistics stay
    (``action_norm: batch``; the default LayerNorm keeps none)."""
    cfg, world, column, rule, local, opt = _build("spiking_mlp", "espp", extra=["protocol.stream.batch=1",
                                                                                 "model.action_norm=batch"])
    column.train()
    cs = column.init_state(1, "cpu")
    before = column.action_embed.norm.running_mean.clone()
    ticks = list(_ticks(cfg, world, 3))
    for obs, act, start in ticks[:2]:
        cs, _ = column(cs, obs, act, start, local=True)
    obs, act, start = ticks[2]
    _, t1 = column(cs, obs, act, start, local=True)
    cs2 = dict(cs, act=cs["act"] + 1.0)  # other actions in the window
    _, t2 = column(cs2, obs, act, start, local=True)
    assert not torch.equal(t1["z_agg"], t2["z_agg"]), "the actions do not reach z_AGG at batch 1"
    assert torch.equal(column.action_embed.norm.running_mean, before)
