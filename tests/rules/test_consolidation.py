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


class _LsqColumn(torch.nn.Module):
    """A column whose inputs are (x, y) pairs; ``forward_inputs`` returns the Trace the rule reads."""

    def __init__(self):
        super().__init__()
        self.eval_calls = 0

    def trace(self, x, y):
        return {"x": x, "y": y, "valid": torch.ones(len(y), dtype=torch.bool), "local": torch.tensor(False),
                "inputs": {"x": x, "y": y}}

    def forward_inputs(self, inputs, local=False):
        self.eval_calls += int(not self.training)
        return self.trace(inputs["x"], inputs["y"])


def test_ewc_fisher_is_per_sample_at_the_phase_end(h):
    """F = 1/N sum_n g_n² at the phase-end θ*, g_n = (x_n·w - y_n) x_n; not (mean_n g_n)²."""
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    params = {"w": w}
    col = _LsqColumn()
    rule = ewc(EWCConfig(lam=2.0, gamma=0.5, fisher_samples=3), h.loss_rule(_lsq), col)
    opt = _sgd(params, 1.0)
    state = rule.init(params)
    # phase 1, step 1: x = [[1, 0], [0, 1]], y = [0, 0]: grad = mean [(1)(1,0), 0] = [0.5, 0] -> w = [0.5, 0]
    state, *_ = h.step(rule, params, state, col.trace(torch.eye(2), torch.zeros(2)), opt)
    assert torch.allclose(w.detach(), torch.tensor([0.5, 0.0]))
    # step 2: x = [[2, 0]], y = [2]: residual 2*0.5 - 2 = -1, grad = [-2, 0] -> w = [2.5, 0]
    state, *_ = h.step(rule, params, state, col.trace(torch.tensor([[2.0, 0.0]]), torch.tensor([2.0])), opt)
    with torch.no_grad():
        w.copy_(torch.tensor([1.0, 1.0]))  # θ* = the phase-end parameters
    state = rule.boundary(params, state, "phase_end")
    # held: the last 3 samples (0,1)->0, (2,0)->2 and (1,0)->0 (ring buffer; the first is overwritten)
    # at w = [1, 1]: g = (x·w - y) x = [0, 1], [0, 0], [1, 0] -> F = mean g² = [1/3, 1/3]
    assert torch.allclose(state["F"]["w"], torch.tensor([1 / 3, 1 / 3]))
    assert state["fisher_n"] == 3 and col.eval_calls == 3 and col.training  # eval mode only during the Fisher
    # the minibatch form (mean_n g_n)² = [1/9, 1/9] is what the old code estimated
    assert not torch.allclose(state["F"]["w"], torch.tensor([1 / 9, 1 / 9]))
    assert torch.allclose(state["anchor"]["w"], torch.tensor([1.0, 1.0]))
    # phase 2 (one sample (1, 0) -> 1: at θ* = [1, 1] its gradient is 0, so is the pull): F <- 0.5 F + 0
    state, *_ = h.step(rule, params, state, col.trace(torch.tensor([[1.0, 0.0]]), torch.ones(1)), opt)
    state = rule.boundary(params, state, "phase_end")
    assert state["fisher_n"] == 1
    assert torch.allclose(state["F"]["w"], torch.tensor([1 / 6, 1 / 6]))


def test_ewc_needs_a_column_that_reruns_inputs(h):
    from colsim.config import ConfigError

    with pytest.raises(ConfigError, match="forward_inputs"):
        ewc(EWCConfig(), h.loss_rule(_lsq), None)


def test_ewc_penalty_gradient(h):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    params = {"w": w}
    rule = ewc(EWCConfig(lam=3.0), h.fake_rule(lambda p, tr: {"w": torch.zeros(2)}), _LsqColumn())
    state = rule.init(params)
    state["F"]["w"] = torch.tensor([0.5, 2.0])
    state["anchor"]["w"] = torch.tensor([0.0, 1.0])
    grads, state, m = rule.update(params, state, _LsqColumn().trace(torch.zeros(0, 2), torch.zeros(0)))
    # lam F (θ - θ*) = 3 * [0.5*1, 2*1]
    assert torch.allclose(grads["w"], torch.tensor([1.5, 6.0]))
    assert m["ewc.penalty"] == pytest.approx(1.5 * (0.5 * 1 + 2.0 * 1))
