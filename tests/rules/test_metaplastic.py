"""n-GateON availability (Barry, Gerstner & Bellec 2025): the update rule, the importance
identity, and that availability scales the update *after* the optimizer step."""
from __future__ import annotations

import torch

from colsim.rules.metaplastic import MetaplasticConfig, availability_step, metaplastic, unit_importance
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


def test_gradient_importance_is_sum_of_h_dL_dh():
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
    gated, state = _one_step("backprop+metaplastic", ["rule.wrap[0].eta_a=0.0"], avail={w: a})
    assert torch.equal(state["a"][w], a)
    assert plain[w].abs().sum() > 0
    # AdamW normalises the gradient, so the gate must act on the applied update: delta_i = a_i * delta_i
    assert torch.allclose(gated[w], a.view(-1, 1) * plain[w], atol=1e-7)
    assert torch.allclose(gated[b], a * plain[b], atol=1e-7)
    other = "predictor.net.3.weight"
    assert torch.allclose(gated[other], plain[other], atol=1e-7)


def test_activity_variant_and_context_gates_run():
    _, state = _one_step("backprop+metaplastic", ["rule.wrap[0].importance=activity",
                                                  "rule.wrap[0].context_gates=true"])
    a = state["a"]["encoder.blocks.0.0.weight"]
    assert a.shape == (4,) and bool(((a >= 0) & (a <= 1)).all())
    assert bool((a < 1).any())  # activity made some units less available
    assert torch.equal(state["a"]["aggregator.encoder.layers.0.self_attn.in_proj_weight"], torch.ones(48))


def test_change_point_detection_switches_context(h):
    theta = torch.nn.Parameter(torch.ones(3, 2))
    params = {"lin.weight": theta}
    rule = metaplastic(MetaplasticConfig(context_gates=True, refractory=5, fast_window=2, slow_window=20),
                       h.fake_rule(lambda p, tr: {"lin.weight": torch.zeros(3, 2)}))
    state = rule.init(params)
    opt = torch.optim.SGD([theta], lr=0.1)
    for t in range(30):
        loss = 1.0 if t < 20 else 2.0  # the loss jumps at step 20: a new context
        state, _, m = h.step(rule, params, state, {"loss": torch.tensor(loss)}, opt)
        if t < 20:
            assert m["metaplastic.switches"] == 0
    assert m["metaplastic.switches"] == 1 and m["metaplastic.context"] == 1
