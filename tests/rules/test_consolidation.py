"""SI and online EWC on hand-computed toys (Zenke et al. 2017; Kirkpatrick et al. 2017)."""
from __future__ import annotations

import pytest
import torch

from colsim.rules.consolidation import EWCConfig, SIConfig, ewc, si


def _sgd(params, lr):
    return torch.optim.SGD(list(params.values()), lr=lr)


def test_si_omega_and_Omega_two_phase_toy(h):
    theta = torch.nn.Parameter(torch.tensor([1.0]))
    params = {"theta": theta}
    inner = h.fake_rule(lambda p, tr: {"theta": torch.tensor([tr["g"]])})
    rule = si(SIConfig(c=0.5, xi=0.01), inner)
    opt = _sgd(params, 0.1)
    state = rule.init(params)
    # phase 1: g = 1 then 2 -> Δθ = -0.1, -0.2; omega = 1*0.1 + 2*0.2 = 0.5
    for g in (1.0, 2.0):
        state, *_ = h.step(rule, params, state, {"g": g}, opt)
    assert torch.allclose(state["omega"]["theta"], torch.tensor([0.5]))
    assert torch.allclose(theta.detach(), torch.tensor([0.7]))
    state = rule.boundary(params, state, "phase_end")
    # Omega = 0.5 / ((0.7 - 1.0)² + 0.01) = 5; omega reset; anchor 0.7
    assert torch.allclose(state["Omega"]["theta"], torch.tensor([5.0]))
    assert float(state["omega"]["theta"]) == 0.0
    assert torch.allclose(state["anchor"]["theta"], torch.tensor([0.7]))
    # phase 2: inner g = -1 at the anchor (no penalty): Δθ = +0.1, omega = 0.1
    state, grads, m = h.step(rule, params, state, {"g": -1.0}, opt)
    assert torch.allclose(grads["theta"], torch.tensor([-1.0]))
    assert torch.allclose(state["omega"]["theta"], torch.tensor([0.1]))
    # inner g = 0 at θ = 0.8: penalty gradient 2 c Omega (θ - θ~) = 2*0.5*5*0.1 = 0.5
    state, grads, m = h.step(rule, params, state, {"g": 0.0}, opt)
    assert torch.allclose(grads["theta"], torch.tensor([0.5]))
    assert m["si.penalty"] == pytest.approx(0.5 * 5 * 0.01)
    assert torch.allclose(theta.detach(), torch.tensor([0.75]))
    assert torch.allclose(state["omega"]["theta"], torch.tensor([0.1]))  # g_inner = 0 adds nothing
    state = rule.boundary(params, state, "phase_end")
    # Omega = 5 + 0.1 / (0.05² + 0.01) = 13
    assert torch.allclose(state["Omega"]["theta"], torch.tensor([13.0]))


def test_si_Omega_is_rectified(h):
    theta = torch.nn.Parameter(torch.tensor([0.0]))
    params = {"theta": theta}
    rule = si(SIConfig(c=1.0, xi=0.1), h.fake_rule(lambda p, tr: {"theta": torch.tensor([tr["g"]])}))
    opt = _sgd(params, 0.1)
    state = rule.init(params)
    state, *_ = h.step(rule, params, state, {"g": -1.0}, opt)  # Δθ = +0.1 -> omega = +0.1
    state["g"]["theta"] = torch.tensor([5.0])  # pretend the loss rose along the path: omega -> negative
    _, state = rule.post_step(params, state, {"theta": torch.tensor([0.1])})
    assert float(state["omega"]["theta"]) < 0
    state = rule.boundary(params, state, "phase_end")
    assert float(state["Omega"]["theta"]) == 0.0


def _lsq(params, trace):
    x, y = trace["x"], trace["y"]
    return 0.5 * ((x @ params["w"] - y) ** 2).mean()


def test_ewc_diagonal_fisher_matches_manual(h):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    params = {"w": w}
    rule = ewc(EWCConfig(lam=2.0, gamma=0.5), h.loss_rule(_lsq))
    opt = _sgd(params, 1e-30)  # parameters (numerically) fixed: the Fisher is that of one point
    state = rule.init(params)
    batches = [(torch.randn(4, 2), torch.randn(4)) for _ in range(5)]

    def manual_grad(x, y):  # d/dw 0.5 mean (x w - y)² = mean (x w - y) x
        return ((x @ w.detach() - y).unsqueeze(1) * x).mean(0)

    for x, y in batches[:3]:
        state, *_ = h.step(rule, params, state, {"x": x, "y": y}, opt)
    F1 = torch.stack([manual_grad(x, y) ** 2 for x, y in batches[:3]]).mean(0)
    state = rule.boundary(params, state, "phase_end")
    assert torch.allclose(state["F"]["w"], F1, rtol=1e-5)
    for x, y in batches[3:]:
        state, *_ = h.step(rule, params, state, {"x": x, "y": y}, opt)
    F2 = torch.stack([manual_grad(x, y) ** 2 for x, y in batches[3:]]).mean(0)
    state = rule.boundary(params, state, "phase_end")
    assert torch.allclose(state["F"]["w"], 0.5 * F1 + F2, rtol=1e-5)


def test_ewc_penalty_gradient(h):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    params = {"w": w}
    rule = ewc(EWCConfig(lam=3.0), h.fake_rule(lambda p, tr: {"w": torch.zeros(2)}))
    state = rule.init(params)
    state["F"]["w"] = torch.tensor([0.5, 2.0])
    state["anchor"]["w"] = torch.tensor([0.0, 1.0])
    grads, state, m = rule.update(params, state, {})
    # lam F (θ - θ*) = 3 * [0.5*1, 2*1]
    assert torch.allclose(grads["w"], torch.tensor([1.5, 6.0]))
    assert m["ewc.penalty"] == pytest.approx(1.5 * (0.5 * 1 + 2.0 * 1))
