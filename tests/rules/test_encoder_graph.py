"""Local rules that compute their encoder updates under no_grad (ESPP, sparse coding) declare
``Rule.encoder_graph=False``; the simulator then runs the column's encoder pass over the current view
without an autograd graph (issue 12). The Trace's values and the rule's updates are the same as with
the graph; loss-based local rules (LPL, layerwise) keep it."""
from __future__ import annotations

import copy

import pytest
import torch

from _tiny import TINY
from colsim.config import resolve_run_config
from colsim.rule import chain, partition
from colsim.simulate import _seeded


def _two_forwards(rule_spec: str, model: str, extra=()):
    """The same 3 ticks twice from the same column state (copied column): with and without the encoder
    graph. Returns {graph: [(trace, grads, metrics, z carries a graph)] per tick} and the rule."""
    from colsim.build import build_run

    sets = TINY + (["model.T=3"] if model.startswith("spiking") else []) + list(extra)
    cfg = resolve_run_config("nonstationary", rule=rule_spec, model=model, overrides=sets)
    world, column, rule, local, _ = build_run(cfg)
    assert local
    out = {}
    for graph in (True, False):
        col = copy.deepcopy(column)
        params = col.trainable()
        rstate = rule.init(params)
        stream = world.stream(8, 4, [0, 1], {})
        ss = stream.init(_seeded(0, 1))
        torch.manual_seed(5)  # the rate-coding seed in the column state comes from the global RNG
        cs = col.init_state(8, "cpu")
        ticks = []
        for t in range(3):
            ss, st = stream.step(ss)
            kw = {} if graph else {"encoder_graph": False}
            cs, tr = col(cs, st.obs, st.action, st.start | (t == 0), local=True, **kw)
            z_graph = tr["z"].requires_grad
            grads, rstate, m = rule.update(params, rstate, tr)
            ticks.append((tr, {n: g.detach().clone() for n, g in grads.items()}, m, z_graph))
        out[graph] = ticks
    return out, rule


def _assert_same(out):
    for (ta, ga, ma, _), (tb, gb, mb, _) in zip(out[True], out[False]):
        for k in ("z", "z_agg", "z_hat", "loss"):
            assert torch.equal(ta[k].detach(), tb[k].detach()), k
        assert ga.keys() == gb.keys()
        for n in ga:
            assert torch.equal(ga[n], gb[n]), n
        assert ma.keys() == mb.keys()
        for k in ma:
            assert ma[k] == mb[k] or (ma[k] != ma[k] and mb[k] != mb[k]), k


@pytest.mark.parametrize("model", ["spiking_cnn", "spiking_mlp"])
def test_espp_builds_no_encoder_graph_and_updates_are_bit_identical(model):
    out, rule = _two_forwards("espp", model)
    assert rule.encoder_graph is False
    assert all(z_graph for *_, z_graph in out[True])  # the local forward built the block-local graph
    assert not any(z_graph for *_, z_graph in out[False])  # and now does not
    for tr, *_ in out[False]:
        assert not any(s.requires_grad for s in tr["layers"])
        assert tr["z_hat"].requires_grad  # the aggregator / predictor still learn by autograd
    _assert_same(out)
    # the LIF weights did get ESPP's (non-zero) ΔW on some tick
    w = "encoder.blocks.0.synapse.weight"
    assert any(bool((g[w] != 0).any()) for _, g, _, _ in out[False])


def test_sparse_coding_builds_no_encoder_graph_and_updates_are_bit_identical():
    # without the default column's coding-rate term on z, which keeps the graph (the test below)
    out, rule = _two_forwards("sparse_coding", "seqjepa_cnn", extra=["model.regularizers=[]"])
    assert rule.encoder_graph is False
    assert not any(z_graph for *_, z_graph in out[False]) and all(z_graph for *_, z_graph in out[True])
    _assert_same(out)


def test_a_regulariser_on_z_keeps_the_encoder_graph():
    """sparse coding with a regulariser on z: the regulariser's gradient reaches the encoder through the
    current view's pass, so the column keeps that graph whatever the rule says."""
    out, _ = _two_forwards("sparse_coding", "seqjepa_cnn",
                           extra=["model.regularizers=[{name: vicreg_variance, weight: 1.0, on: z}]"])
    assert all(z_graph for *_, z_graph in out[False])
    _assert_same(out)


def test_combinators_need_the_graph_when_any_rule_does():
    from colsim.rules.espp import EsppConfig, espp
    from colsim.rules.lpl import LPLConfig, lpl

    cfg = resolve_run_config("nonstationary", rule="espp", model="spiking_mlp", overrides=TINY + ["model.T=3"])
    from colsim.build import build_column, build_world

    col = build_column(cfg, build_world(cfg))
    e, l = espp(EsppConfig(), col), lpl(LPLConfig(), col)
    assert e.encoder_graph is False and l.encoder_graph is True
    assert partition({"encoder.*": e, "*": l}).encoder_graph is True
    assert partition({"*": e}).encoder_graph is False
    assert chain(e, e).encoder_graph is False and chain(e, l).encoder_graph is True


def test_the_simulator_asks_for_no_encoder_graph_under_espp_only():
    """The simulator passes encoder_graph=False to the column exactly when the rule allows it."""
    from colsim.record import MemoryRecorder
    from colsim.simulate import run

    seen = {}
    for spec in ("espp", "lpl"):
        cfg = resolve_run_config("stationary", rule=spec, model="spiking_mlp", steps=3,
                                 overrides=TINY + ["model.T=2", "protocol.evaluation.at_start=false",
                                                   "protocol.evaluation.probe_samples=10"])
        from colsim.build import build_run

        world, column, rule, local, opt = build_run(cfg)
        calls = []
        fwd = column.forward

        def spy(*a, **kw):
            out = fwd(*a, **kw)
            calls.append((kw.get("encoder_graph", True), out[1]["z"].requires_grad))
            return out

        column.forward = spy
        res = run(column, rule, cfg.protocol, MemoryRecorder(), world=world, optimizer=opt, local=local)
        assert res.status == "completed"
        seen[spec] = calls
    assert seen["espp"] and all(c == (False, False) for c in seen["espp"])
    assert seen["lpl"] and all(c == (True, True) for c in seen["lpl"])
