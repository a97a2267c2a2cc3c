"""Correlation-invariant sparse coding (Brito & Gerstner 2024): hand-computed Δw and lambda, the
rule inside the column, and the science check (sparse source vs Oja's principal component)."""
from __future__ import annotations

import math

import pytest
import torch

from colsim.config import ConfigError
from colsim.rules.sparse_coding import homeostasis_step, homeostatic_lambda, normalise_step, sparse_coding_dw
from _tiny import build_tiny, rule_updates


def test_dw_single_unit_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # (N=2, J=2)
    u = torch.tensor([[1.0], [-1.0]])  # (N, M=1)
    # post = u³ - 0.5 u = [0.5, -0.5];  Δw = (0.5 [1, 0] - 0.5 [0, 2]) / 2 = [0.25, -0.5]
    dw = sparse_coding_dw(x, u, torch.tensor([0.5]), beta=0.0, nonlinearity="cube")
    assert torch.allclose(dw, torch.tensor([[0.25, -0.5]]))
    # relu_sq: f = [u]+² = [1, 0]; post = [1 - 0.5, 0 + 0.5] = [0.5, 0.5]; Δw = [0.25, 0.5]
    dw = sparse_coding_dw(x, u, torch.tensor([0.5]), beta=0.0, nonlinearity="relu_sq")
    assert torch.allclose(dw, torch.tensor([[0.25, 0.5]]))


def test_dw_lateral_decorrelation_hand_computed():
    x = torch.tensor([[1.0], [2.0]])  # (N=2, J=1)
    u = torch.tensor([[1.0, 2.0], [-1.0, 1.0]])  # (N, M=2)
    # G = uᵀu/2 = [[1, .5], [.5, 2.5]]; lateral Off(G) u_b: b0 [1, .5], b1 [.5, -.5]
    # f(u) - u: b0 [0, 6], b1 [0, 0]; post: b0 [-1, 5.5], b1 [-.5, .5]
    # Δw = postᵀ x / 2: unit0 (-1 - 1)/2 = -1; unit1 (5.5 + 1)/2 = 3.25
    dw = sparse_coding_dw(x, u, torch.tensor([1.0, 1.0]), beta=1.0)
    assert torch.allclose(dw, torch.tensor([[-1.0], [3.25]]))


def test_homeostatic_lambda_hand_computed():
    u = torch.tensor([[1.0], [3.0]])  # mean u² = 5, mean u f(u) = mean u⁴ = 41
    Lam = torch.tensor([0.5])
    lam = homeostatic_lambda(u, Lam, k_p=2.0)
    assert torch.allclose(lam, torch.tensor([41 / 5 + 0.5 + 2.0 * 4]))
    assert torch.allclose(homeostasis_step(Lam, u, 0.1), torch.tensor([0.5 + 0.1 * 4]))
    # lambda* makes the update norm-preserving: wᵀΔw = mean u (f(u) - lambda* u) = 0
    w = torch.tensor([[0.3, -0.7]])
    x = torch.randn(50, 2)
    u = x @ w.T
    dw = sparse_coding_dw(x, u, homeostatic_lambda(u, torch.zeros(1), k_p=0.0))
    assert abs(float(dw @ w.T)) < 1e-4


def test_rule_updates_only_leading_encoder_weights_locally():
    grads, m, local, state = rule_updates("sparse_coding")
    assert local
    w = "encoder.blocks.0.0.weight"
    assert grads[w].abs().sum() > 0 and torch.equal(grads["encoder.blocks.0.0.bias"], torch.zeros(4))
    assert grads["predictor.net.0.weight"].abs().sum() > 0  # the prediction loss trains the predictor
    assert {"sparse_coding.l0.lambda.mean", "sparse_coding.l1.lambda.max", "sparse_coding.l0.u2"} <= set(m)
    assert state["Lambda"][0].shape == (4,)


def test_resnet_encoder_is_refused_before_step_0():
    with pytest.raises(ConfigError, match="leading Conv2d/Linear"):
        build_tiny("sparse_coding", extra=["model.encoder.kind=resnet18"])


def _mixture(n, gen, theta=0.5):
    """A high-variance Gaussian source (sd 3) and a unit-variance sparse (Laplace) source, rotated."""
    g = torch.randn(n, generator=gen) * 3.0
    e = -torch.log(torch.rand(n, generator=gen).clamp(min=1e-12))  # Exp(1)
    s = torch.where(torch.rand(n, generator=gen) < 0.5, e, -e) / math.sqrt(2.0)  # Laplace, variance 1
    S = torch.stack([g, s], 1)  # (n, 2)
    R = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return S @ R.T, S


def _corr(a, b):
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_sparse_coding_finds_sparse_source_where_oja_finds_top_pc():
    """docs/reference/rules.md check: on a mixture of a high-variance Gaussian direction and a
    low-variance sparse source the rule aligns with the sparse source, Oja with the top PC."""
    gen = torch.Generator().manual_seed(0)
    th = 0.5
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    w = (R @ torch.tensor([1 / 3, 1.0]) / math.sqrt(2)).view(1, 2)  # start: both sources weigh equally in u
    w_oja = w.clone()
    Lam = torch.zeros(1)
    for _ in range(1000):
        x, _ = _mixture(1024, gen, th)
        u = x @ w.T  # (256, 1)
        lam = homeostatic_lambda(u, Lam, k_p=1.0)
        w = w + 0.1 * normalise_step(sparse_coding_dw(x, u, lam), x, lam)  # the rule's step (SGD lr 0.1)
        Lam = homeostasis_step(Lam, u, 0.05)
        y = x @ w_oja.T
        w_oja = w_oja + 1e-3 * (y * (x - y * w_oja)).mean(0, keepdim=True)  # Oja's rule
    x, S = _mixture(20000, gen, th)
    u, y = (x @ w.T)[:, 0], (x @ w_oja.T)[:, 0]
    assert abs(_corr(u, S[:, 1])) > 0.95, "sparse coding should recover the sparse source"
    assert abs(_corr(u, S[:, 0])) < 0.3
    assert abs(_corr(y, S[:, 0])) > 0.95, "Oja should find the top principal component"
    assert abs(_corr(y, S[:, 1])) < 0.2
    assert 0.7 < float((u * u).mean()) < 1.3  # homeostasis: E[u²] -> 1
