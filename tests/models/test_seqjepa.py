"""seq-JEPA column options (models/seq_jepa.py): presets under every rule, the action-conditioning
ablation, the symmetric teacher, regularisers in the loss, diagnostics ranges, config errors."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from colsim import registry
from colsim.config import ConfigError
from colsim.simulate import _seeded
from _tiny import TINY

PRESETS = ["seqjepa_cnn", "seqjepa_cnn_cr", "seqjepa_crate", "seqjepa_crate_alpha", "seqjepa_tost", "seqjepa_resnet18"]


def _tiny_overrides(model: str) -> list[str]:
    """TINY sizes, with the predictor overrides that fit the preset's predictor kind."""
    import colsim.models  # noqa: F401
    from colsim import registry as reg

    kind = reg.preset("models", model).get("predictor", {}).get("kind", "mlp")
    base = [o for o in TINY if not o.startswith("model.predictor")]
    pred = ["model.predictor.hidden=16"] if kind == "mlp" else ["model.predictor.layers=1", "model.predictor.heads=2"]
    return base + pred


def build(model: str = "seqjepa_cnn", rule: str = "backprop", extra=(), seed: int = 0):
    from colsim.build import build_run
    from colsim.config import resolve_run_config

    cfg = resolve_run_config("stationary", rule=rule, model=model, overrides=_tiny_overrides(model) + list(extra),
                             seed=seed)
    return (cfg, *build_run(cfg))


def _stream_steps(cfg, world, n: int, seed: int = 0):
    stream = world.stream(cfg.protocol.stream.batch, cfg.protocol.stream.episode_length, list(range(10)), {})
    ss = stream.init(_seeded(seed, 1))
    out = []
    for t in range(n):
        ss, st = stream.step(ss)
        out.append((st.obs, st.action, st.start | (t == 0)))
    return out


def _run(column, steps, local=False):
    """Feed the steps; return (state before the last step, last trace)."""
    cs = column.init_state(steps[0][0].shape[0], "cpu")
    trace = None
    for i, (obs, act, start) in enumerate(steps):
        prev = cs
        if i < len(steps) - 1:
            with torch.no_grad():
                cs, _ = column(cs, obs, act, start, local=local)
        else:
            cs, trace = column(cs, obs, act, start, local=local)
    return prev, trace


# --------------------------------------------------------------------------- presets x rules

@pytest.mark.parametrize("rule", ["backprop", "lpl"])
@pytest.mark.parametrize("model", PRESETS)
def test_preset_forward_backward(model, rule):
    cfg, world, column, r, local, opt = build(model, rule)
    assert local == (rule == "lpl")
    params = column.trainable()
    state = r.init(params)
    _, trace = _run(column, _stream_steps(cfg, world, 3), local=local)
    assert math.isfinite(float(trace["loss"].detach()))
    assert trace["valid"].any()
    if local:  # the seq-JEPA loss must not reach the encoder: the aggregator saw detached outputs
        enc = {n: p for n, p in params.items() if n.startswith("encoder.")}
        g = torch.autograd.grad(trace["loss"], list(enc.values()), allow_unused=True, retain_graph=True)
        reached = {n for n, x in zip(enc, g) if x is not None and bool(x.any())}
        if any(reg.on == "z" for reg in column.regularizers):  # seqjepa_cnn_cr: a term on z is the last
            last = f"encoder.blocks.{len(column.encoder.blocks) - 1}."  # block's own, as local as its output
            assert reached and all(n.startswith(last) for n in reached), reached
        else:
            assert not reached, reached
    grads, state, metrics = r.update(params, state, trace)
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    agg = [n for n in grads if n.startswith("aggregator.")]
    assert agg and any(bool((grads[n] != 0).any()) for n in agg), "the aggregator gets no update"


def _all_rule_specs() -> list[str]:
    return [n if registry.RULES[n].kind == "base" else f"lpl+{n}" for n in sorted(registry.RULES)
            if n not in ("espp", "espp_bptt", "rate_matched", "supervised_bptt")]  # they need a spiking column
    # (tests/rules/test_espp.py, tests/models/test_echospike.py, tests/rules/test_espp_bptt.py)


@pytest.mark.parametrize("model", ["seqjepa_crate", "seqjepa_crate_alpha", "seqjepa_tost"])
def test_new_presets_under_every_rule(model):
    for spec in _all_rule_specs():
        cfg, world, column, r, local, opt = build(model, spec)
        params = column.trainable()
        state = r.init(params)
        cs = column.init_state(cfg.protocol.stream.batch, "cpu")
        for obs, act, start in _stream_steps(cfg, world, 2):
            cs, trace = column(cs, obs, act, start, local=local)
            grads, state, _ = r.update(params, state, trace)
            assert all(torch.isfinite(g).all() for g in grads.values()), (model, spec)
            for n, p in params.items():
                p.grad = grads.get(n)
            opt.step()
            column.update_target(0.5)


# --------------------------------------------------------------------------- action conditioning

@pytest.mark.parametrize("model", ["seqjepa_cnn", "seqjepa_crate"])
def test_no_action_conditioning_ignores_actions(model):
    cfg, world, column, *_ = build(model, extra=["model.action_conditioning=false"])
    column.eval()
    steps = _stream_steps(cfg, world, 3)
    state, _ = _run(column, steps)
    obs, act, start = steps[-1]
    seen = []
    hook = column.aggregator.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    _, tr_a = column(state, obs, act, start)
    other = dict(state, act=torch.randn_like(state["act"]) * 3)
    _, tr_b = column(other, obs, torch.randn_like(act), start)
    hook.remove()
    assert torch.equal(tr_a["z_hat"], tr_b["z_hat"])
    assert seen[0].shape[-1] == column.dim, "aggregator tokens carry more than z"
    assert torch.equal(seen[0], seen[1])
    # with conditioning on, the same change moves the prediction
    cfg, world, column, *_ = build(model)
    column.eval()
    state, _ = _run(column, steps)
    _, tr_a = column(state, obs, act, start)
    _, tr_b = column(dict(state, act=torch.randn_like(state["act"]) * 3), obs, act, start)
    assert not torch.allclose(tr_a["z_hat"], tr_b["z_hat"])


# --------------------------------------------------------------------------- symmetric teacher

def test_symmetric_teacher_uses_both_directions():
    out = {}
    for kind in ("stopgrad", "symmetric"):
        cfg, world, column, *_ = build(extra=[f"model.teacher.kind={kind}", "model.regularizers=[]"])  # loss = the two terms
        column.eval()  # no dropout: the two columns compute the same forward direction
        _, tr = _run(column, _stream_steps(cfg, world, 4))
        out[kind] = (column, tr)
    col, tr = out["symmetric"]
    _, tr_sg = out["stopgrad"]
    v = tr["valid"]
    fwd = (tr["loss_pred"] * v).sum() / v.sum()
    rev = (tr["loss_pred_rev"] * v).sum() / v.sum()
    assert torch.allclose(tr["loss_pred"], tr_sg["loss_pred"], atol=1e-6)  # same forward direction
    assert torch.allclose(tr["loss"], 0.5 * (fwd + rev), atol=1e-6)
    assert not torch.allclose(tr["loss"], tr_sg["loss"])
    # the reversed prediction's gradient reaches the encoder, aggregator, predictor and direction flag
    params = col.trainable()
    g = dict(zip(params, torch.autograd.grad(rev, list(params.values()), allow_unused=True)))
    for prefix in ("encoder.", "aggregator.", "predictor.", "action_embed.", "reverse_flag"):
        assert any(x is not None and x.abs().sum() > 0 for n, x in g.items() if n.startswith(prefix)), prefix
    assert col.target_encoder is None
    assert set(col.diagnostics()) >= {"seqjepa.loss_fwd", "seqjepa.loss_rev"}


def test_reversed_context_layout():
    """Token k of the reversed context is x_{t-k} with the action linking it to x_{t-k-1}."""
    cfg, world, column, *_ = build(extra=["model.teacher.kind=symmetric", "model.teacher.reverse_actions=negate"])
    B, M, D, E = 2, 3, 4, 2
    z_ctx = torch.arange(B * M * D, dtype=torch.float).view(B, M, D) + 1
    z_now = -torch.ones(B, D)
    emb = torch.arange(B * M * E, dtype=torch.float).view(B, M, E) + 1
    count = torch.tensor([3, 1])
    tok, a_first = column._tokens_reversed(z_ctx, z_now, emb, count)
    # stream 0, c = 3: views x_t, slot 2, slot 1; actions -e(slot 2), -e(slot 1), zeroed; predictor gets -e(slot 0)
    assert torch.equal(tok[0, :, :D], torch.stack([z_now[0], z_ctx[0, 2], z_ctx[0, 1]]))
    assert torch.equal(tok[0, :, D:], torch.stack([-emb[0, 2], -emb[0, 1], torch.zeros(E)]))
    assert torch.equal(a_first[0], -emb[0, 0])
    # stream 1, c = 1: x_t alone (action zeroed), predictor gets -e(slot 0); padding is zero
    assert torch.equal(tok[1, 0], torch.cat([z_now[1], torch.zeros(E)]))
    assert not tok[1, 1:].any()
    assert torch.equal(a_first[1], -emb[1, 0])


# --------------------------------------------------------------------------- regularisers

REGS = [
    "{name: coding_rate, weight: %s, on: z_agg, kind: cov}",
    "{name: coding_rate, weight: %s, on: z}",
    "{name: sigreg, weight: %s, on: z, num_slices: 16}",
    "{name: simdino, weight: %s, on: z_agg}",
    "{name: vicreg_variance, weight: %s, on: z}",
    "{name: vicreg_covariance, weight: %s, on: z_agg}",
]


def test_regularizers_enter_the_loss_with_their_weight():
    w = 0.07
    traces, cols = [], []
    for weight in (w, 0.0):
        regs = "[" + ", ".join(r % weight for r in REGS) + "]"
        cfg, world, column, *_ = build(extra=[f"model.regularizers={regs}"])
        column.eval()
        torch.manual_seed(5)  # sigreg's random directions
        _, tr = _run(column, _stream_steps(cfg, world, 3))
        traces.append(tr)
        cols.append(column)
    tw, t0 = traces
    diag = cols[0].diagnostics()
    expected = 0.0
    for spec in REGS:
        name, on = spec.split("name: ")[1].split(",")[0], spec.split("on: ")[1].split(",")[0].rstrip("}")
        sign = -1.0 if name in ("coding_rate", "simdino") else 1.0
        value = diag[f"reg.{name}.{on}"]
        assert math.isfinite(value)
        assert torch.allclose(tw["reg"][f"{name}.{on}"], torch.tensor(sign * w * value), rtol=1e-5, atol=1e-7)
        expected += sign * w * value
    assert torch.allclose(tw["loss"] - t0["loss"], torch.tensor(expected), rtol=1e-4, atol=1e-6)
    assert torch.allclose(tw["loss"], tw["loss_jepa"] + tw["loss_reg"])
    assert float(t0["loss_reg"].detach()) == 0.0 and torch.equal(t0["loss"], t0["loss_jepa"])
    # the z term has a graph into the encoder (z is computed with grad when a term needs it)
    enc = [p for n, p in cols[0].trainable().items() if n.startswith("encoder.")]
    g = torch.autograd.grad(tw["reg"]["coding_rate.z"], enc, allow_unused=True)
    assert any(x is not None and x.abs().sum() > 0 for x in g)


@pytest.mark.parametrize("bad, msg", [
    ("model.regularizers=[{name: coding_rate, weight: 0.1, on: z_agg, kind: mcr2, alpha: 2}]", "alpha"),
    ("model.regularizers=[{name: sigreg, weight: 0.1, on: zz}]", "regularizers[0].sigreg.on"),
    ("model.regularizers=[{name: sigreg, weight: 0.1, foo: 1}]", "unknown key"),
    ("model.regularizers=[{name: nope, weight: 0.1}]", "regularizers[0]"),
    ("model.regularizers=[{name: sigreg}]", "required"),
    ("model.regularizers=[{name: sigreg, weight: 1}, {name: sigreg, weight: 2}]", "listed twice"),
    ("model.teacher.kind=teacher", "teacher.kind"),
    ("model.teacher.reverse_actions=negate", "applies to kind symmetric"),
    ("model.aggregator.kind=crate", "aggregator.dropout"),  # with dropout=0.0 added below
    ("model.aggregator.heads=3", "use one of"),
    ("model.aggregator.causal=true", "applies to kind tost"),
])
def test_config_errors_are_clear(bad, msg):
    extra = [bad]
    if "aggregator.kind=crate" in bad:
        extra.append("model.aggregator.dropout=0.0")
    with pytest.raises(ConfigError) as err:
        build(extra=extra)
    assert msg in str(err.value), str(err.value)


# --------------------------------------------------------------------------- diagnostics

@pytest.mark.parametrize("model, heads, layers", [("seqjepa_crate", 2, 1), ("seqjepa_crate_alpha", 2, 1),
                                                  ("seqjepa_tost", 2, 1)])
def test_diagnostics_keys_and_ranges(model, heads, layers):
    cfg, world, column, *_ = build(model, extra=["model.regularizers=[{name: coding_rate, weight: 0.01}]"])
    _, tr = _run(column, _stream_steps(cfg, world, 3))
    d = column.diagnostics()
    assert all(isinstance(v, float) and math.isfinite(v) for v in d.values())
    assert "reg.coding_rate.z_agg" in d
    if "crate" in model:
        for prefix in ("crate", "crate_pred"):
            nz = d[f"{prefix}.l0.ista_nonzero"]
            assert 0.0 <= nz <= 1.0
            for k in range(heads):
                assert d[f"{prefix}.l0.h{k}.coding_rate"] >= 0.0
    else:
        for i in range(layers):
            assert 0.0 <= d[f"tost.l{i}.membership_entropy"] <= math.log(heads) + 1e-6
    # evaluation embeddings do not overwrite the training statistics
    obs = torch.randn(3, 4, *world.spec.obs_shape)
    column.embed(obs, torch.zeros(3, 4, world.spec.action_dim))
    assert column.diagnostics() == d


def test_transformer_column_has_no_block_diagnostics():
    cfg, world, column, *_ = build(extra=["model.regularizers=[]"])  # (a regulariser reports reg.<name>.<on>)
    _run(column, _stream_steps(cfg, world, 2))
    assert column.diagnostics() == {}


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_encoders_match_eager_and_keep_parameter_names():
    """model.compile=true: inductor on the online and target encoders; same parameter names (checkpoints,
    EMA update) and the same loss and gradients as the eager column up to float reordering."""
    cfg, world, eager, *_ = build()
    _, _, compiled, *_ = build(extra=["model.compile=true"])
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    steps = _stream_steps(cfg, world, 3)
    torch.manual_seed(1)  # the aggregator's dropout draws from the global generator
    _, tr_e = _run(eager, steps)
    torch.manual_seed(1)
    _, tr_c = _run(compiled, steps)
    assert float(tr_c["loss"]) == pytest.approx(float(tr_e["loss"]), rel=1e-4, abs=1e-5)
    g_e = torch.autograd.grad(tr_e["loss"], list(eager.encoder.parameters()))
    g_c = torch.autograd.grad(tr_c["loss"], list(compiled.encoder.parameters()))
    for a, b in zip(g_e, g_c):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
