"""Composition: the CLI combinations and YAML partitions run through the simulator; invalid
combinations are refused before step 0 with the reason."""
from __future__ import annotations

import pytest

from colsim.build import build_optimizer
from colsim.config import ConfigError
from colsim.record import MemoryRecorder
from colsim.simulate import run
from _tiny import build_tiny

SHORT = ["protocol.evaluation.probe_samples=10", "protocol.evaluation.views=2", "protocol.evaluation.at_start=false",
         "protocol.phases=[{name: a, steps: 5, classes: [0, 1]}, {name: b, steps: 5, classes: [2, 3]}]"]


def _simulate(spec, extra=()):
    cfg, world, column, rule, local, opt = build_tiny(spec, extra=SHORT + list(extra), steps=10)
    rec = MemoryRecorder()
    res = run(column, rule, cfg.protocol, rec, world=world, optimizer=opt, seed=0, local=local)
    return res, rec


@pytest.mark.parametrize("spec, expect, extra", [
    ("lpl+metaplastic", "metaplastic.a.encoder.blocks.0.0.mean", ()),
    ("backprop+si", "si.Omega.total", ()),
    ("lpl+replay", "replay.hist.0", ()),
    ("layerwise+ewc", "ewc.F.encoder_aux", ()),
    # the SI preset's c (1e4) was chosen for backprop's Adam; under sparse coding's plain SGD a pull that strong
    # overshoots (lr * 2 c Omega > 2) and diverges, so this combination runs at the former c (rules/si.yaml)
    ("sparse_coding+metaplastic+si", "sparse_coding.l0.lambda.min", ("rule.wrap[1].c=0.1",)),
])
def test_cli_combinations_run_and_record_plasticity_state(spec, expect, extra):
    res, rec = _simulate(spec, extra)
    assert res.status == "completed", res
    assert res.summary["forgetting"] is not None
    last = rec.metrics[-1][1]
    assert expect in last, sorted(last)[:20]


def _const(direction: dict, post_scale: "float | None" = None, boundary_log: "list | None" = None):
    """A rule with a constant descent direction; optionally a post_step scaling its update and a boundary log."""
    import torch
    from colsim.rule import Rule

    def post(params, state, delta):
        return {n: d * post_scale for n, d in delta.items()}, state

    def boundary(params, state, event):
        boundary_log.append((sorted(params), event))
        return state

    return Rule(lambda p: {}, lambda p, s, tr: ({n: torch.tensor(direction[n]) for n in p if n in direction}, s,
                                                {"m": 1.0}),
                frozenset(), post if post_scale is not None else None, boundary if boundary_log is not None else None)


def test_partition_chain_masked_hand_computed():
    import torch
    from colsim.rule import chain, masked, partition

    params = {"a.x": torch.zeros(2), "b.y": torch.zeros(1)}
    log: list = []
    r1 = _const({"a.x": [1.0, 2.0], "b.y": [9.0]}, post_scale=0.5, boundary_log=log)
    r2 = _const({"a.x": [7.0, 7.0], "b.y": [3.0]})
    part = partition({"a.*": r1, "*": r2})
    g, st, m = part.update(params, part.init(params), {})
    assert {n: v.tolist() for n, v in g.items()} == {"a.x": [1.0, 2.0], "b.y": [3.0]}  # first match wins
    assert set(m) == {"a/m", "all/m"}
    delta, st = part.post_step(params, st, {"a.x": torch.ones(2), "b.y": torch.ones(1)})
    assert delta["a.x"].tolist() == [0.5, 0.5] and delta["b.y"].tolist() == [1.0]  # r1's post_step on its group only
    part.boundary(params, st, "phase_end")
    assert log == [(["a.x"], "phase_end")]
    ch = chain(r1, r2)
    g, st, _ = ch.update(params, ch.init(params), {})
    assert g["a.x"].tolist() == [8.0, 9.0] and g["b.y"].tolist() == [12.0]  # directions add
    mk = masked(r2, "b.*")
    g, _, _ = mk.update(params, mk.init(params), {})
    assert set(g) == {"b.y"}


@pytest.mark.parametrize("order", ["si(metaplastic)", "metaplastic(si)"])
def test_si_and_metaplastic_nest_hand_computed(order, h):
    """Two units (rows), g = [1, 2], SGD lr 0.1 -> raw Δθ = [-0.1, -0.2]; availability a = [0.5, 1] (eta_a 0)
    -> applied Δθ = [-0.05, -0.2]; SI: omega = -g Δθ = [0.05, 0.4] in either nesting (the old order gave 0.1)."""
    import torch
    from colsim.rules.consolidation import SIConfig, si
    from colsim.rules.metaplastic import MetaplasticConfig, metaplastic

    theta = torch.nn.Parameter(torch.ones(2, 1))
    params = {"lin.weight": theta}
    base = h.fake_rule(lambda p, tr: {"lin.weight": torch.tensor([[1.0], [2.0]])})
    mcfg, scfg = MetaplasticConfig(eta_a=0.0, context_gates="off"), SIConfig()  # no column: no gates on activity
    rule = si(scfg, metaplastic(mcfg, base)) if order == "si(metaplastic)" else metaplastic(mcfg, si(scfg, base))
    state = rule.init(params)
    meta = state["inner"] if order == "si(metaplastic)" else state
    meta["a"]["lin.weight"] = torch.tensor([0.5, 1.0])
    state, *_ = h.step(rule, params, state, {}, torch.optim.SGD([theta], lr=0.1))
    si_s = state if order == "si(metaplastic)" else state["inner"]
    assert torch.allclose(theta.detach(), torch.tensor([[0.95], [0.8]]))
    assert torch.allclose(si_s["omega"]["lin.weight"], torch.tensor([[0.05], [0.4]]))


def test_yaml_partition_lpl_encoder_backprop_rest():
    part = 'rule={partition: {"encoder.*": {name: lpl}, "*": {name: backprop}}}'
    cfg, world, column, rule, local, opt = build_tiny("backprop", extra=[part])
    assert local and cfg.rule.partition is not None
    res, rec = _simulate("backprop", [part])
    assert res.status == "completed"
    assert any(k.startswith("encoder.lpl.l0") for k in rec.metrics[-1][1])


@pytest.mark.parametrize("spec, extra, match", [
    ("backprop+replay+replay", [], "applied twice"),
    ("backprop", ["rule={name: metaplastic}"], "is a modifier"),
    ("lpl+backprop", [], "base rule, not a modifier"),
    ("backprop", ['rule={partition: {"encoder.*": {name: backprop}, "*": {name: lpl}}}'], "end-to-end"),
    ("backprop", ['rule={partition: {"encoder.*": {name: layerwise}, "*": {name: backprop}}}'], "encoder\\*"),
    ("sparse_coding", ["model.encoder.kind=resnet18"], "leading Conv2d/Linear"),
])
def test_invalid_combinations_are_refused_before_step_0(spec, extra, match):
    with pytest.raises(ConfigError, match=match):
        build_tiny(spec, extra=extra)


def test_partition_groups_keep_their_optimizer_settings():
    part = ('rule={partition: {"encoder*": {name: layerwise, optimizer: {name: adam, lr: 1.0e-3}}, '
            '"*": {name: backprop, optimizer: {name: adam, lr: 4.0e-4}}}}')
    cfg, world, column, rule, local, opt = build_tiny("backprop", extra=[part])
    lrs = sorted({g["lr"] for g in build_optimizer(cfg.rule, column).param_groups})
    assert lrs == [4e-4, 1e-3]


def test_optimizer_groups_give_parameters_their_own_hyper_parameters():
    """optimizer.groups: first matching glob wins; unset fields fall back to the rule's; the lpl preset's
    encoder runs at 3e-3 while aggregator / predictor / action embedding warm up to 4e-4."""
    from colsim.build import lr_at

    cfg, world, column, rule, local, opt = build_tiny("lpl")
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in column.trainable().items():
        g = by_param[id(p)]
        if name.startswith("encoder."):
            assert (g["initial_lr"], g["warmup_steps"]) == (3e-3, 0), name
        else:
            assert (g["initial_lr"], g["warmup_steps"]) == (4e-4, 20), name
        # 0.0: parameters marked _no_weight_decay
        assert g["weight_decay"] in ((1.5e-6, 0.0) if name.startswith("encoder.") else (1e-3, 0.0))
    enc = next(g for g in opt.param_groups if g["warmup_steps"] == 0)
    rest = next(g for g in opt.param_groups if g["warmup_steps"] == 20)
    assert lr_at(enc, 0) == 3e-3 and lr_at(rest, 0) == pytest.approx(4e-4 / 20) and lr_at(rest, 19) == 4e-4

    over = ['rule.optimizer.groups={"aggregator.*": {weight_decay: 0.5}, "predictor.*": {lr: 0.25}}']
    cfg, world, column, rule, local, opt = build_tiny("backprop", extra=over)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    base = cfg.rule.optimizer
    for name, p in column.trainable().items():
        g = by_param[id(p)]
        if name.startswith("aggregator.") and g["weight_decay"]:
            assert (g["lr"], g["weight_decay"]) == (base.lr, 0.5), name
        elif name.startswith("predictor."):
            assert (g["lr"], g["weight_decay"]) == (0.25, base.weight_decay), name
        elif not name.startswith("aggregator."):
            assert (g["lr"], g["weight_decay"]) == (base.lr, base.weight_decay), name


def test_optimizer_group_pattern_matching_nothing_is_refused():
    with pytest.raises(ConfigError, match=r"rule.optimizer.groups: pattern 'agregator\.\*' matches no"):
        build_tiny("backprop", extra=['rule.optimizer.groups={"agregator.*": {lr: 1.0e-3}}'])


@pytest.mark.parametrize("spec, name", [("si", "backprop+si"), ("replay+ewc", "backprop+replay+ewc"),
                                        ("metaplastic", "backprop+metaplastic")])
def test_a_modifier_named_alone_wraps_backprop(spec, name):
    cfg, world, column, rule, local, opt = build_tiny(spec)
    assert cfg.rule.name == name and cfg.rule.config.name == "backprop" and not local
    assert [m.name for m in cfg.rule.wrap] == name.split("+")[1:]


@pytest.mark.parametrize("spec", ["lpl+si+metaplastic", "lpl+metaplastic+si"])
def test_si_integrates_the_update_metaplastic_applies(spec, h):
    """omega -= g * Δθ with Δθ the update finally applied (after n-GateON's rescaling), in either order."""
    import torch
    from colsim.simulate import _seeded

    i = spec.split("+")[1:].index("metaplastic")
    cfg, world, column, rule, local, opt = build_tiny(spec, extra=[f"rule.wrap[{i}].eta_a=0.0"])
    params = column.trainable()
    state = rule.init(params)
    meta = state if spec.endswith("metaplastic") else state["inner"]
    w = "encoder.blocks.0.0.weight"
    meta["a"][w] = torch.tensor([0.0, 0.25, 0.5, 1.0])
    stream = world.stream(8, 4, [0, 1], {})
    ss = stream.init(_seeded(0, 1))
    cs = column.init_state(8, "cpu")
    for t in range(2):
        ss, st = stream.step(ss)
        cs, trace = column(cs, st.obs, st.action, st.start | (t == 0), local=local)
        before = params[w].detach().clone()
        omega0 = (state if spec.endswith("si") else state["inner"])["omega"][w].clone()
        state, grads, _ = h.step(rule, params, state, trace, opt)
        si_s = state if spec.endswith("si") else state["inner"]
        applied = params[w].detach() - before
        assert torch.equal(applied[0], torch.zeros_like(applied[0])) and applied[3].abs().sum() > 0
        # this step's increment of omega is -g * (the update applied, unit 0 frozen, unit 1 at a quarter, ...)
        assert torch.allclose(si_s["omega"][w] - omega0, -si_s["g"][w] * applied, rtol=1e-4, atol=1e-9)


def _settings(opt) -> dict:
    """parameter id -> (optimizer kind, initial lr, weight decay, warm-up, betas, momentum)."""
    out = {}
    for o in getattr(opt, "optimizers", [opt]):
        for g in o.param_groups:
            for p in g["params"]:
                out[id(p)] = (type(o).__name__, g["initial_lr"], g["weight_decay"], g["warmup_steps"],
                              tuple(g.get("betas", ())), g.get("momentum", None))
    return out


def test_shared_modules_get_the_same_optimizer_in_every_preset():
    """Parameters a rule does not own (action embedding, aggregator, predictor) are trained alike:
    seq-JEPA's AdamW 4e-4, weight decay 1e-3 (0 where marked _no_weight_decay), 20-step warm-up."""
    seen = {}
    for preset in ("backprop", "lpl", "layerwise", "sparse_coding"):
        cfg, world, column, rule, local, opt = build_tiny(preset)
        by_id = _settings(opt)
        shared = {n: by_id[id(p)] for n, p in column.trainable().items() if not n.startswith("encoder")}
        assert shared and set(shared) == {n for n in column.trainable() if n.split(".")[0] in
                                          ("action_embed", "aggregator", "predictor")}
        for n, st in shared.items():
            assert st[:4] in (("AdamW", 4e-4, 1e-3, 20), ("AdamW", 4e-4, 0.0, 20)), (preset, n, st)
        seen[preset] = shared
    ref = seen["backprop"]
    for preset, shared in seen.items():
        assert shared == ref, preset
    # switching it off: the rule's own optimizer for every parameter
    cfg, world, column, rule, local, opt = build_tiny("sparse_coding", extra=["rule.optimizer.groups={}"])
    assert {s[:2] for s in _settings(opt).values()} == {("SGD", 0.05)}


def test_multi_optimizer_state_round_trips():
    import torch

    cfg, world, column, rule, local, opt = build_tiny("lpl")
    params = column.trainable()
    for p in params.values():
        p.grad = torch.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    opt2 = build_optimizer(cfg.rule, column)
    opt2.load_state_dict(sd)
    assert [type(o).__name__ for o in opt2.optimizers] == ["Adam", "AdamW"]
    assert all(torch.equal(opt2.optimizers[1].state[p]["exp_avg"], opt.optimizers[1].state[p]["exp_avg"])
               for p in opt.optimizers[1].state)


def test_cosine_schedule_follows_seq_jepa_reference_and_reaches_min_lr():
    """rule.optimizer.schedule=cosine: linear warm-up, then half a cosine from lr to min_lr at the run's last
    step (seq-JEPA's CosineAnnealingLR); group overrides inherit it; constant stays the default."""
    import math

    from colsim.build import lr_at

    cfg, world, column, rule, local, opt = build_tiny("lpl", extra=["rule.optimizer.schedule=cosine",
                                                                    "rule.optimizer.min_lr=1.0e-5"])
    assert {g["schedule"] for g in opt.param_groups} == {"cosine"}
    rest = next(g for g in opt.param_groups if g["warmup_steps"] == 20)  # the "*" group: 4e-4, warm-up 20
    # total 120: warm-up steps 0..19, cosine over steps 20..119 (99 intervals)
    assert lr_at(rest, 9, 120) == pytest.approx(4e-4 * 10 / 20)
    assert lr_at(rest, 20, 120) == pytest.approx(4e-4)
    mid = 20 + 99 / 2
    assert lr_at(rest, 69, 120) == pytest.approx(1e-5 + 0.5 * (4e-4 - 1e-5) * (1 + math.cos(math.pi * 49 / 99)))
    assert lr_at(rest, 119, 120) == pytest.approx(1e-5) and lr_at(rest, 500, 120) == pytest.approx(1e-5)
    assert lr_at(rest, int(mid), 120) < 4e-4 / 2 + 1e-5 < lr_at(rest, int(mid) - 1, 120)
    cfg, world, column, rule, local, opt = build_tiny("backprop")
    assert {g["schedule"] for g in opt.param_groups} == {"constant"}
    assert lr_at(opt.param_groups[0], 999, 1000) == opt.param_groups[0]["initial_lr"]
    # the protocol's schedule applies where the rule sets none; the rule's own wins
    assert {g["schedule"] for g in build_optimizer(cfg.rule, column, "cosine").param_groups} == {"cosine"}
    cfg, world, column, rule, local, opt = build_tiny("backprop", extra=["rule.optimizer.schedule=constant"])
    assert {g["schedule"] for g in build_optimizer(cfg.rule, column, "cosine").param_groups} == {"constant"}


def test_a_run_follows_the_protocols_cosine_schedule_step_by_step():
    """protocol.schedule=cosine on a 30-step run: the recorded lr of every optimizer step is the warm-up
    (20 steps of the backprop preset) then the cosine, ending at min_lr on the last step."""
    import math

    from colsim.build import build_run
    from colsim.config import resolve_run_config

    from _tiny import TINY

    cfg = resolve_run_config("stationary", rule="backprop", steps=30,
                             overrides=TINY + ["protocol.schedule=cosine", "protocol.evaluation.at_start=false",
                                               "protocol.evaluation.probe_samples=10"])
    world, column, rule, local, opt = build_run(cfg)
    rec = MemoryRecorder()
    assert run(column, rule, cfg.protocol, rec, world=world, optimizer=opt, local=local).status == "completed"
    lrs = list(rec.series("lr"))
    want = [4e-4 * (s + 1) / 20 if s < 20 else 1e-5 + 0.5 * (4e-4 - 1e-5) * (1 + math.cos(math.pi * (s - 20) / 9))
            for s in range(30)]
    assert lrs == pytest.approx(want, rel=1e-9)
    assert lrs[-1] == pytest.approx(1e-5)
