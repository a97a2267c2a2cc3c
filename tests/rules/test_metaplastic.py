"""n-GateON availability (Barry, Gerstner & Bellec 2025): the update rule, the per-sample
importance (hand-computed on units followed by BatchNorm), the gated parameters, activity
context gates, and that availability scales the update *after* the optimizer step."""
from __future__ import annotations

import torch

from colsim.rules.metaplastic import (MetaplasticConfig, availability_step, context_gate, metaplastic,
                                     per_sample_importance, unit_importance)
from _tiny import build_tiny
from colsim.simulate import _seeded


def test_availability_step_hand_computed():
    a = torch.tensor([1.0, 1.0, 0.5, 0.0])
    imp = torch.tensor([1.0, 2.0, 3.0, 2.0])  # mean 2 -> Ĩ = [0.5, 1, 1.5, 1]
    new = availability_step(a, imp, eta_a=0.1, eps=1.0)
    # 1 - 0.1*1*(0.5-1) = 1.05 -> clipped 1;  1 - 0 = 1;  0.5 - 0.1*0.5*0.5 = 0.475;  0 stays 0
    assert torch.allclose(new, torch.tensor([1.0, 1.0, 0.475, 0.0]))
    new = availability_step(torch.ones(2), torch.tensor([0.0, 4.0]), eta_a=1.0, eps=0.5)
    # Ĩ = [0, 2]: 1 + 0.5 -> 1;  1 - 1*(2 - 0.5) = -0.5 -> 0
    assert torch.allclose(new, torch.tensor([1.0, 0.0]))


def test_direction_form_is_the_batch_sum_of_h_dL_dh():
    """The fallback for units without a module call: (sum_j θ_ij g_ij)² = (sum_b h_i dL/dh_i)²."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 4)
    x = torch.randn(5, 3)
    h = lin(x)
    h.retain_grad()
    loss = (torch.tanh(h) ** 2).sum()
    loss.backward()
    expected = (h.detach() * h.grad).sum(0) ** 2  # (sum_b h_i dL/dh_i)²
    got = unit_importance(lin.weight.detach(), lin.weight.grad, lin.bias.detach(), lin.bias.grad)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    xi = torch.randn(2, 2, 5, 5)
    hc = conv(xi)
    hc.retain_grad()
    (hc.relu() ** 2).sum().backward()
    expected = (hc.detach() * hc.grad).sum((0, 2, 3)) ** 2
    got = unit_importance(conv.weight.detach(), conv.weight.grad, conv.bias.detach(), conv.bias.grad)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def _one_step(spec, extra=(), avail=None):
    cfg, world, column, rule, local, opt = build_tiny(spec, extra=list(extra), seed=1)
    params = column.trainable()
    state = rule.init(params)
    if avail is not None:
        for w, a in avail.items():
            state["a"][w] = a.clone()
    stream = world.stream(cfg.protocol.stream.batch, cfg.protocol.stream.episode_length, [0, 1], {})
    ss = stream.init(_seeded(1, 1))
    cs = column.init_state(cfg.protocol.stream.batch, "cpu")
    deltas = None
    for t in range(3):
        ss, st = stream.step(ss)
        cs, trace = column(cs, st.obs, st.action, st.start | (t == 0), local=local)
        grads, state, _ = rule.update(params, state, trace)
        for n, p in params.items():
            p.grad = grads.get(n)
        before = {n: p.detach().clone() for n, p in params.items()}
        opt.step()
        with torch.no_grad():
            delta = {n: p.detach() - before[n] for n, p in params.items()}
            if rule.post_step is not None:
                delta, state = rule.post_step(params, state, delta)
            for n, p in params.items():
                p.copy_(before[n] + delta[n])
        if t == 1:  # first step with a loss (the window holds a view)
            deltas = {n: d.clone() for n, d in delta.items()}
            break
    return deltas, state


def test_availability_scales_the_post_optimizer_update():
    w, b = "predictor.net.0.weight", "predictor.net.0.bias"
    a = torch.linspace(0.0, 1.0, 16)
    plain, _ = _one_step("backprop")
    gated, state = _one_step("backprop+metaplastic", ["rule.wrap[0].eta_a=0.0", "rule.wrap[0].context_gates=off"],
                             avail={w: a})  # gates off: the same forward as plain backprop
    assert torch.equal(state["a"][w], a)
    assert plain[w].abs().sum() > 0
    # AdamW normalises the gradient, so the gate must act on the applied update: delta_i = a_i * delta_i
    assert torch.allclose(gated[w], a.view(-1, 1) * plain[w], atol=1e-7)
    assert torch.allclose(gated[b], a * plain[b], atol=1e-7)
    other = "predictor.net.3.weight"
    assert torch.allclose(gated[other], plain[other], atol=1e-7)


class _LinBN(torch.nn.Module):
    """A Linear unit layer followed by a parameter-free BatchNorm (as every ResNet conv, the action embedding)."""

    def __init__(self, w):
        super().__init__()
        self.lin = torch.nn.Linear(1, len(w))
        self.bn = torch.nn.BatchNorm1d(len(w), affine=False, eps=1e-12)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor(w).view(-1, 1))
            self.lin.bias.zero_()

    def trainable(self):
        return dict(self.named_parameters())


def test_per_sample_importance_on_units_followed_by_batchnorm(h):
    """h = x = [1, 2, 3] for both units, y = BN(h) = [-1, 0, 1]/σ (σ² = 2/3), L = mean_b (t1 y1 + t2 y2),
    t1 = [1, 0, 0], t2 = [0, 1, 0]. BN's backward: dL/dh = (dy - mean dy - y mean(dy y)) / σ with dy = t/3:
    unit 1: [1, -2, 1] / (18 σ), h dL/dh = [1, -4, 3] / (18 σ)   (batch sum 0)
    unit 2: [-2, 4, -2] / (18 σ), h dL/dh = [-2, 8, -6] / (18 σ)  (batch sum 0)
    I = mean_b (h dL/dh)² = [26, 104] / (3 * 324 σ²) -> Ĩ = I / mean(I) = [0.4, 1.6];
    eta_a = 0.5, eps = 0: a = 1 - 0.5 Ĩ = [0.8, 0.2]. (The batch-sum form is 0 for both: no information.)"""
    col = _LinBN([1.0, 1.0])
    x, t = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    inner = h.loss_rule(lambda p, tr: (col.bn(col.lin(tr["x"])) * tr["t"]).mean(0).sum())
    rule = metaplastic(MetaplasticConfig(eta_a=0.5, eps=0.0), inner, col)
    params = col.trainable()
    state = rule.init(params)
    g, state, m = rule.update(params, state, {"x": x, "t": t})
    assert torch.allclose(state["a_next"]["lin.weight"], torch.tensor([0.8, 0.2]), atol=1e-5)  # the running copy
    assert torch.equal(state["a"]["lin.weight"], torch.ones(2))  # applied at the switch only
    assert m["metaplastic.per_sample"] == 1.0
    sigma = (2 / 3) ** 0.5
    assert torch.allclose(g["lin.weight"].flatten(), torch.zeros(2), atol=1e-6)  # batch sum h dL/dh = w dL/dw = 0
    rows = per_sample_importance(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]),
                                 torch.tensor([[1.0, -2.0], [-2.0, 4.0], [1.0, -2.0]]) / (18 * sigma), 1)
    assert torch.allclose((rows ** 2).mean(0), torch.tensor([26.0, 104.0]) / (3 * 324 * sigma ** 2))


def test_per_sample_importance_of_a_conv_unit_matches_per_sample_gradients(h):
    """Conv2d + BatchNorm2d: I_i = mean_n (sum_pixels h dL/dh)² equals mean_n (θ_i · ∂L_n/∂θ_i)², the
    per-sample gradients' projection on the unit's own weights (computed one sample at a time)."""
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3, affine=False)
    x, t = torch.randn(4, 2, 5, 5), torch.randn(4, 3, 5, 5)
    hc = conv(x)
    hc.retain_grad()
    (bn(hc) * t).sum().backward()  # L = sum_n L_n, so dL/dh of sample n is that of L_n given the batch statistics
    expected = ((hc.detach() * hc.grad).sum((2, 3)) ** 2).mean(0)
    got = (per_sample_importance(hc.detach(), hc.grad, 1) ** 2).mean(0)
    assert torch.allclose(got, expected)
    batch_sum = (hc.detach() * hc.grad).sum((0, 2, 3))  # ~0 under BN (up to its eps): no information
    assert bool((batch_sum ** 2 < 1e-4 * expected).all())


def test_attention_out_projection_gets_the_per_sample_form(h):
    """nn.MultiheadAttention applies out_proj without calling it: its units' h is the attention's output,
    (T, B, E) when not batch_first -> I = mean_b (sum_t h dL/dh)², here with eta_a = 1, eps = 0: a = 1 - Ĩ."""
    torch.manual_seed(0)

    class Col(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.att = torch.nn.MultiheadAttention(4, 2)

        def trainable(self):
            return dict(self.named_parameters())

    col = Col()
    x, t = torch.randn(3, 5, 4), torch.randn(3, 5, 4)  # (T, B, E)
    inner = h.loss_rule(lambda p, tr: (col.att(tr["x"], tr["x"], tr["x"])[0] * tr["t"]).sum())
    rule = metaplastic(MetaplasticConfig(eta_a=1.0, eps=0.0), inner, col)
    params = col.trainable()
    state = rule.init(params)
    _, state, m = rule.update(params, state, {"x": x, "t": t})
    out = col.att(x, x, x)[0].detach()
    imp = ((out * t).sum(0) ** 2).mean(0)  # dL/dh = t; sum over t (positions), mean over the batch -> (E,)
    assert torch.allclose(state["a_next"]["att.out_proj.weight"], (1 - imp / imp.mean()).clamp(0, 1), atol=1e-5)
    assert m["metaplastic.per_sample"] == 0.5  # in_proj (no module output) falls back to the direction form


def test_activity_importance_hand_computed(h):
    """importance: activity — I_i = mean_b |h_i|: h = x w with w = [1, 2], x = [1, -3] -> I = [2, 4],
    Ĩ = [2/3, 4/3]; eta_a 0.3, eps 1: a = clip(1 - 0.3 (Ĩ - 1)) = [1, 0.9]."""
    col = _LinBN([1.0, 2.0])
    inner = h.loss_rule(lambda p, tr: col.lin(tr["x"]).sum())
    rule = metaplastic(MetaplasticConfig(importance="activity", eta_a=0.3, eps=1.0), inner, col)
    params = col.trainable()
    state = rule.init(params)
    _, state, _ = rule.update(params, state, {"x": torch.tensor([[1.0], [-3.0]])})
    assert torch.allclose(state["a_next"]["lin.weight"], torch.tensor([1.0, 0.9]))


def test_crate_dictionaries_are_gated_by_unit():
    """D (d, p): unit j = column j (the atom of code unit j); D_hat (d, r d): unit i = row i."""
    params = {"l.ista.D": torch.nn.Parameter(torch.zeros(2, 3)), "l.ista.D_hat": torch.nn.Parameter(torch.zeros(2, 3))}
    from colsim.rule import Rule

    inner = Rule(lambda p: {}, lambda p, s, tr: ({}, s, {}))
    rule = metaplastic(MetaplasticConfig(context_gates="off"), inner)  # no column: no gates on activity
    state = rule.init(params)
    assert state["a"]["l.ista.D"].shape == (3,) and state["a"]["l.ista.D_hat"].shape == (2,)
    state["a"]["l.ista.D"] = torch.tensor([0.0, 0.5, 1.0])
    state["a"]["l.ista.D_hat"] = torch.tensor([0.25, 1.0])
    out, _ = rule.post_step(params, state, {n: torch.ones(2, 3) for n in params})
    assert torch.equal(out["l.ista.D"], torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]))
    assert torch.equal(out["l.ista.D_hat"], torch.tensor([[0.25] * 3, [1.0] * 3]))


def test_context_gates_act_on_activity(h):
    """context_gates: activity — the unit's output is multiplied by g = tanh([U c]+)² of the current context;
    a unit with g = 0 is silent and receives no gradient; the update itself is not rescaled by g."""
    col = _LinBN([1.0, 1.0])
    inner = h.loss_rule(lambda p, tr: col.lin(tr["x"]).sum())
    rule = metaplastic(MetaplasticConfig(context_gates="activity", activity_gates_on=["lin.*"], eta_a=0.0,
                                         max_contexts=2, seed=3), inner, col)
    params = col.trainable()
    state = rule.init(params)
    U = state["U"]["lin.weight"]  # (2 units, 2 contexts)
    g0 = torch.tanh(U[:, 0].clamp(min=0)) ** 2
    assert torch.allclose(context_gate(U, 0), g0)
    x = torch.tensor([[2.0]])
    assert torch.allclose(col.lin(x), torch.tensor([[2.0, 2.0]]) * g0)
    grads, state, _ = rule.update(params, state, {"x": x, "loss": torch.tensor(1.0)})
    assert torch.allclose(grads["lin.weight"].flatten(), 2.0 * g0)  # d/dw sum g w x = g x
    out, _ = rule.post_step(params, state, {n: torch.ones_like(p) for n, p in params.items()})
    assert torch.equal(out["lin.weight"], torch.ones(2, 1))  # availability 1, no plasticity gate
    col._colsim_metaplastic_gates.context = 1
    assert torch.allclose(col.lin(x), torch.tensor([[2.0, 2.0]]) * context_gate(U, 1))


def test_context_gates_on_plasticity_scale_the_update(h):
    col = _LinBN([1.0, 1.0])
    rule = metaplastic(MetaplasticConfig(context_gates=True, seed=3, max_contexts=2),
                       h.loss_rule(lambda p, tr: col.lin(tr["x"]).sum()), col)
    params = col.trainable()
    state = rule.init(params)
    assert MetaplasticConfig(context_gates=True).context_gates == "plasticity"
    g = context_gate(state["U"]["lin.weight"], 0)
    assert torch.allclose(col.lin(torch.ones(1, 1)), torch.ones(1, 2))  # the forward is not gated
    out, _ = rule.post_step(params, state, {n: torch.ones_like(p) for n, p in params.items()})
    assert torch.allclose(out["lin.weight"].flatten(), g) and torch.allclose(out["lin.bias"], g)


def test_change_point_detection_switches_context(h):
    theta = torch.nn.Parameter(torch.ones(3, 2))
    params = {"lin.weight": theta}
    rule = metaplastic(MetaplasticConfig(context_gates=True, switch="detect", refractory=5, fast_window=2,
                                         slow_window=20),
                       h.fake_rule(lambda p, tr: {"lin.weight": torch.zeros(3, 2)}))
    state = rule.init(params)
    opt = torch.optim.SGD([theta], lr=0.1)
    for t in range(30):
        loss = 1.0 if t < 20 else 2.0  # the loss jumps at step 20: a new context
        state, _, m = h.step(rule, params, state, {"loss": torch.tensor(loss)}, opt)
        if t < 20:
            assert m["metaplastic.switches"] == 0
    assert m["metaplastic.switches"] == 1 and m["metaplastic.context"] == 1


def test_no_step_graph_outlives_its_step():
    """The per-sample importance hooks must not keep a tick's autograd graph alive: an output tensor
    that its own gradient hook refers to forms a cycle Python's collector cannot free, and a full-size
    action_shift run grew until the 24 GB host killed it."""
    import gc
    import weakref

    from colsim.record import MemoryRecorder
    from colsim.simulate import run

    cfg, world, column, rule, local, opt = build_tiny("backprop+metaplastic", protocol="stationary", steps=12,
                                                      extra=["protocol.evaluation.at_start=false",
                                                             "protocol.evaluation.probe_samples=10"])
    outputs: list = []  # weak references to every hooked module's training output: they die with their graph

    def keep(mod, inp, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            outputs.append(weakref.ref(out))

    handles = [m.register_forward_hook(keep) for m in column.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    try:
        assert run(column, rule, cfg.protocol, MemoryRecorder(), world=world, optimizer=opt, local=local).status == "completed"
    finally:
        for h in handles:
            h.remove()
    gc.collect()
    alive = [r for r in outputs if r() is not None]
    assert len(outputs) > 12 and alive == []  # with the cycle: every tick's outputs (and their graphs) stayed
