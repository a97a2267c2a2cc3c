"""The rule contract (docs/architecture.md), parametrised over every registered rule.

For each base rule (and each modifier wrapped around backprop): finite updates with the
parameters' shapes, zero update at lr 0, state round-trips through torch.save /
torch.load(weights_only=True), determinism under a seed.
"""
from __future__ import annotations

import io

import pytest
import torch

from colsim import registry
from colsim.simulate import _seeded
from _tiny import TINY, build_tiny

SPIKING_RULES = {"espp", "espp_bptt", "rate_matched", "supervised_bptt"}  # rules that need a spiking column: the tiny spiking preset (models/spiking.py)
RULE_OPTIONS = {"rate_matched": ["rule.target_rates=[0.05]"]}  # settings a rule has no default for


def _build(rule_spec: str, extra=(), seed: int = 0):
    if rule_spec.split("+")[0] not in SPIKING_RULES:
        return build_tiny(rule_spec, extra=list(extra), seed=seed)
    from colsim.build import build_run
    from colsim.config import resolve_run_config

    cfg = resolve_run_config("nonstationary", rule=rule_spec, model="spiking_cnn", seed=seed,
                             overrides=TINY + ["model.T=3"] + RULE_OPTIONS.get(rule_spec.split("+")[0], []) + list(extra))
    return (cfg, *build_run(cfg))


def _spec(name: str) -> str:
    return name if registry.RULES[name].kind == "base" else f"backprop+{name}"


RULE_NAMES = sorted(registry.RULES)


def _steps(rule_spec: str, n: int = 3, lr: float | None = None, seed: int = 0, options=()):
    extra = [] if lr is None else [f"rule.optimizer.lr={lr}"]
    if lr == 0:
        extra = ["rule.optimizer.lr=1e-30"]
    extra = extra + list(options)  # torch optimizers refuse lr=0 only in validation; see below
    cfg, world, column, rule, local, opt = _build(rule_spec, extra=extra, seed=seed)
    if lr == 0:
        for g in opt.param_groups:
            g["initial_lr"] = 0.0
    params = column.trainable()
    state = rule.init(params)
    stream = world.stream(cfg.protocol.stream.batch, cfg.protocol.stream.episode_length, [0, 1], {})
    ss = stream.init(_seeded(seed, 1))
    cs = column.init_state(cfg.protocol.stream.batch, "cpu")
    grads_seen = []
    for t in range(n):
        ss, st = stream.step(ss)
        cs, trace = column(cs, st.obs, st.action, st.start | (t == 0), local=local)
        trace["labels"] = st.labels  # as the simulator's tick (colsim/sim/tick.py): the world's labels
        grads, state, metrics = rule.update(params, state, trace)
        grads_seen.append({k: v.detach().clone() for k, v in grads.items()})
        for name, p in params.items():
            p.grad = grads.get(name)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"]
        before = {k: p.detach().clone() for k, p in params.items()}
        opt.step()
        if rule.post_step is not None:
            with torch.no_grad():
                delta = {k: p.detach() - before[k] for k, p in params.items()}
                delta, state = rule.post_step(params, state, delta)
                for k, p in params.items():
                    p.copy_(before[k] + delta[k])
        column.update_target(t / n)
    if rule.boundary is not None:
        state = rule.boundary(params, state, "phase_end")
    return column, params, state, grads_seen, metrics


@pytest.mark.parametrize("name", RULE_NAMES)
def test_updates_finite_and_shaped(name):
    column, params, state, grads_seen, metrics = _steps(_spec(name))
    if not registry.RULES[name].updates and registry.RULES[name].kind == "base":  # the frozen control arm
        assert all(g == {} for g in grads_seen) and all(isinstance(v, float) for v in metrics.values())
        return
    assert grads_seen[-1], "the rule produced no update at all"
    for g in grads_seen:
        for k, v in g.items():
            assert k in params, f"grad for unknown parameter {k}"
            assert v.shape == params[k].shape, k
            assert torch.isfinite(v).all(), k
    nonzero = sum(int((v != 0).any()) for v in grads_seen[-1].values())
    assert nonzero > 0, "all updates are exactly zero"
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("name", RULE_NAMES)
def test_zero_lr_leaves_parameters(name):
    cfg, world, column, rule, local, opt = _build(_spec(name))
    before = {k: p.detach().clone() for k, p in column.trainable().items()}
    column2, params, *_ = _steps(_spec(name), lr=0)
    # same seed -> same init; lr 0 -> unchanged
    for k, p in params.items():
        assert torch.equal(p.detach(), before[k]), k


@pytest.mark.parametrize("name", RULE_NAMES)
def test_state_roundtrips_through_torch_save(name):
    _, _, state, _, _ = _steps(_spec(name))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    assert same(state, back)


@pytest.mark.parametrize("name", RULE_NAMES)
def test_deterministic_under_seed(name):
    _, p1, _, g1, _ = _steps(_spec(name), seed=3)
    _, p2, _, g2, _ = _steps(_spec(name), seed=3)
    for k in p1:
        assert torch.equal(p1[k].detach(), p2[k].detach()), k


# options that change what a rule computes (hooks on the column, per-sample Fisher over a local rule)
VARIANTS = [("backprop+metaplastic", ("rule.wrap[0].context_gates=activity",)),
            ("backprop+metaplastic", ("rule.wrap[0].importance=activity", "rule.wrap[0].context_gates=plasticity")),
            ("sparse_coding+ewc", ()), ("lpl+metaplastic+si", ())]


@pytest.mark.parametrize("spec, options", VARIANTS)
def test_variants_finite_roundtrip_deterministic(spec, options):
    _, p1, s1, g1, _ = _steps(spec, seed=3, options=options)
    _, p2, s2, g2, _ = _steps(spec, seed=3, options=options)
    assert all(bool(torch.isfinite(v).all()) for g in g1 for v in g.values())
    for k in p1:
        assert torch.equal(p1[k].detach(), p2[k].detach()), k
    buf = io.BytesIO()
    torch.save(s1, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)
