"""LPL (Halvagal & Zenke 2023): each term on hand-computed tensors (value and gradient sign),
and the single-neuron 2-D toy of docs/reference/rules.md."""
from __future__ import annotations

import math

import pytest
import torch

from colsim.rules.lpl import LPLConfig, lpl, lpl_terms

Z = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # (B=2, M=2)
ZP = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
VALID = torch.tensor([True, True])


def test_terms_hand_computed():
    t = lpl_terms(Z, ZP, VALID, eps=1e-4)
    assert float(t["pred"]) == pytest.approx((1 + 0 + 4 + 1) / 4)  # mean (z - z_prev)²
    # batch variance around the (stop-gradient) mean [2, 1], unbiased: [2, 2]
    assert float(t["hebb"]) == pytest.approx(-math.log(2 + 1e-4))
    # centred z = [[-1, -1], [1, 1]] -> C = [[2, 2], [2, 2]]; (2² + 2²) / (M² - M)
    assert float(t["dec"]) == pytest.approx(4.0)
    # invalid rows do not enter the predictive term
    t = lpl_terms(Z, ZP, torch.tensor([True, False]))
    assert float(t["pred"]) == pytest.approx(1 / 2)


def test_running_statistics_path_hand_computed():
    """stats: running — B-1 in the Hebbian variance, decorrelation centred on the batch mean, eps once."""
    mu, var = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0])
    t = lpl_terms(Z, ZP, VALID, eps=1e-4, running=(mu, var))
    # around the running mean [0, 0]: sum_b z² = [10, 4], / (B-1) = [10, 4]; / (var + eps) once
    assert float(t["hebb"]) == pytest.approx(-(10 / (1 + 1e-4) + 4 / (3 + 1e-4)) / 2, rel=1e-6)
    # covariance around the batch mean [2, 1] (not the running mean, which would give C_01 = 6 -> 36)
    assert float(t["dec"]) == pytest.approx(4.0)
    # gradient of the surrogate = that of -log(sigma² + eps) when the running statistics equal the batch ones
    z1 = Z.clone().requires_grad_(True)
    lpl_terms(z1, ZP, VALID, running=(Z.mean(0), Z.var(0)))["hebb"].backward()
    z2 = Z.clone().requires_grad_(True)
    lpl_terms(z2, ZP, VALID)["hebb"].backward()
    # d/dz -mean_i log(v_i + eps) = -2 (z - mu) / ((B-1)(v + eps) M), z - mu = [[-1, -1], [1, 1]], v = 2
    expect = torch.tensor([[1.0, 1.0], [-1.0, -1.0]]) / (2 + 1e-4)
    assert torch.allclose(z2.grad, expect, rtol=1e-6) and torch.allclose(z1.grad, expect, rtol=1e-6)


def test_running_statistics_state_hand_computed():
    """The rule's running mean / variance: first batch (mean, unbiased variance, no eps), then EMA with B-1."""
    rule = lpl(LPLConfig(stats="running", stats_momentum=0.5, predictive_weight=0.0))
    w = torch.nn.Parameter(torch.ones(()))
    params = {"w": w}
    state = rule.init(params)
    trace = {"layers": [Z * w], "layers_prev": [ZP], "valid": VALID, "loss": torch.zeros(())}
    _, state, m = rule.update(params, state, trace)
    # init: mean [2, 1], var [2, 2]; then mean <- 0.5 [2,1] + 0.5 [2,1] = [2, 1];
    # var <- 0.5 [2, 2] + 0.5 * sum_b (z - [2, 1])² / (B-1) = [2, 2]
    assert torch.allclose(state["mean"][0], torch.tensor([2.0, 1.0]))
    assert torch.allclose(state["var"][0], torch.tensor([2.0, 2.0]))
    assert m["lpl.l0.hebb"] == pytest.approx(-math.log(2 + 1e-4))
    trace = {"layers": [(Z + 2) * w], "layers_prev": [ZP], "valid": VALID, "loss": torch.zeros(())}
    _, state, _ = rule.update(params, state, trace)
    # mean <- 0.5 [2, 1] + 0.5 [4, 3] = [3, 2]; centred (z+2) - [3, 2] = [[0, 0], [2, 2]] -> sum sq / 1 = [4, 4]
    assert torch.allclose(state["mean"][0], torch.tensor([3.0, 2.0]))
    assert torch.allclose(state["var"][0], torch.tensor([3.0, 3.0]))


def _grad(term: str) -> torch.Tensor:
    z = Z.clone().requires_grad_(True)
    lpl_terms(z, ZP, VALID)[term].backward()
    return z.grad


def test_gradient_signs():
    g = _grad("pred")  # descent pulls z(t) towards z(t-1): z > z_prev -> positive gradient
    assert bool((g[Z > ZP] > 0).all()) and bool((g[Z == ZP] == 0).all())
    assert torch.allclose(g, 2 * (Z - ZP) / 4)
    g = _grad("hebb")  # descent spreads activity: above the mean -> negative gradient
    above = Z > Z.mean(0, keepdim=True)
    assert bool((g[above] < 0).all()) and bool((g[~above] > 0).all())
    g = _grad("dec")  # positively correlated units: descent moves each away from the other's direction
    zc = Z - Z.mean(0)
    assert float((g * zc.flip(1)).sum()) > 0
    z_prev = ZP.clone().requires_grad_(True)
    lpl_terms(Z.clone().requires_grad_(True), z_prev, VALID)["pred"].backward()
    assert z_prev.grad is None  # the previous step is a stop-gradient target


def _toy_batch(B, sigma_y, gen, noise_x=0.1):
    """Pairs of consecutive inputs: same x cluster (±1, small noise), independent N(0, sigma_y²) along y."""
    c = torch.where(torch.rand(B, generator=gen) < 0.5, -1.0, 1.0)
    def draw():
        return torch.stack([c + noise_x * torch.randn(B, generator=gen), sigma_y * torch.randn(B, generator=gen)], 1)
    return draw(), draw()  # (B, 2) previous, current


def _train_lpl(sigma_y, hebb=True, steps=400, seed=0, pred=True, stats="batch"):
    """One linear LPL neuron z = x·w trained by the package's ``lpl`` rule (Adam 1e-2) on the 2-D toy."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor([0.6, 0.8]).requires_grad_(True)  # starts more y- than x-tuned
    rule = lpl(LPLConfig(lambda_pred=1.0 if pred else 0.0, lambda_hebb=1.0 if hebb else 0.0, lambda_dec=0.0,
                         predictive_weight=0.0, stats=stats, stats_momentum=0.9))
    params = {"w": w}
    state = rule.init(params)
    opt = torch.optim.Adam([w], lr=1e-2)
    valid = torch.ones(128, dtype=torch.bool)
    for _ in range(steps):
        x_prev, x = _toy_batch(128, sigma_y, gen)
        z, z_prev = (x @ w).unsqueeze(1), (x_prev @ w).unsqueeze(1).detach()
        trace = {"layers": [z], "layers_prev": [z_prev], "valid": valid, "loss": torch.zeros(())}
        grads, state, _ = rule.update(params, state, trace)
        if pred:
            w.grad = grads["w"]
            opt.step()
        else:  # Hebbian only: gradient step with the weight norm held fixed (its -log var is scale-free)
            with torch.no_grad():
                w -= 0.05 * grads["w"]
                w /= w.norm()
    return w.detach()


def _x_selectivity(w):
    return float(w[0].abs() / w.norm())


@pytest.mark.parametrize("sigma_y", [0.01, 1.0, 100.0])
def test_lpl_neuron_stays_x_selective(sigma_y):
    w = _train_lpl(sigma_y)
    assert _x_selectivity(w) > 0.95, w


def test_lpl_neuron_with_running_statistics_stays_x_selective():
    assert _x_selectivity(_train_lpl(100.0, stats="running")) > 0.95


@pytest.mark.parametrize("sigma_y, x_tuned", [(0.01, True), (10.0, False), (100.0, False)])
def test_hebbian_only_lpl_turns_to_the_high_variance_direction(sigma_y, x_tuned):
    """The package's rule with the predictive term off is a purely Hebbian (variance-maximising)
    neuron: it follows the direction of largest variance, y once sigma_y > 1 (docs/reference/rules.md)."""
    s = _x_selectivity(_train_lpl(sigma_y, pred=False))
    assert (s > 0.95) if x_tuned else (s < 0.1), s


def test_without_hebbian_term_activity_collapses():
    gen = torch.Generator().manual_seed(1)
    w0 = torch.tensor([0.6, 0.8])
    w = _train_lpl(1.0, hebb=False, steps=800)
    x_prev, x = _toy_batch(4096, 1.0, gen)
    assert float((x @ w).std()) < 0.05 * float((x @ w0).std())
