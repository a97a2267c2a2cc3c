"""LPL (Halvagal & Zenke 2023): each term on hand-computed tensors (value and gradient sign),
and the single-neuron 2-D toy of REFERENCE.md section 4."""
from __future__ import annotations

import math

import pytest
import torch

from colsim.rules.lpl import lpl_terms

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


def _train_lpl(sigma_y, hebb=True, steps=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor([0.6, 0.8]).requires_grad_(True)  # starts more y- than x-tuned
    opt = torch.optim.Adam([w], lr=1e-2)
    valid = torch.ones(128, dtype=torch.bool)
    for _ in range(steps):
        x_prev, x = _toy_batch(128, sigma_y, gen)
        z, z_prev = (x @ w).unsqueeze(1), (x_prev @ w).unsqueeze(1).detach()
        t = lpl_terms(z, z_prev, valid)
        loss = t["pred"] + (t["hebb"] if hebb else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def _train_hebb_oja(sigma_y, kind, steps=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor([0.8, 0.6])  # starts x-tuned
    for _ in range(steps):
        _, x = _toy_batch(128, sigma_y, gen)
        z = x @ w  # (B,)
        eta = 0.05 / float((x * x).sum(1).mean())
        if kind == "hebb":  # plain Hebb with the weight norm held fixed: the direction of max variance
            w = w + eta * (z.unsqueeze(1) * x).mean(0)
            w = w / w.norm()
        else:  # Oja's rule
            w = w + eta * (z.unsqueeze(1) * (x - z.unsqueeze(1) * w)).mean(0)
    return w


def _x_selectivity(w):
    return float(w[0].abs() / w.norm())


@pytest.mark.parametrize("sigma_y", [0.01, 1.0, 100.0])
def test_lpl_neuron_stays_x_selective(sigma_y):
    w = _train_lpl(sigma_y)
    assert _x_selectivity(w) > 0.95, w


@pytest.mark.parametrize("kind", ["hebb", "oja"])
def test_hebbian_and_oja_turn_to_y_when_it_has_more_variance(kind):
    assert _x_selectivity(_train_hebb_oja(0.01, kind)) > 0.95
    assert _x_selectivity(_train_hebb_oja(10.0, kind)) < 0.1
    assert _x_selectivity(_train_hebb_oja(100.0, kind)) < 0.05


def test_without_hebbian_term_activity_collapses():
    gen = torch.Generator().manual_seed(1)
    w0 = torch.tensor([0.6, 0.8])
    w = _train_lpl(1.0, hebb=False, steps=800)
    x_prev, x = _toy_batch(4096, 1.0, gen)
    assert float((x @ w).std()) < 0.05 * float((x @ w0).std())
