"""Sanity values, gradients and the loss helper of the anti-collapse regularisers."""
import math

import pytest
import torch
from torch.autograd import gradcheck

from colsim.models.regularizers import (
    coding_rate, regularizer_loss, sigreg, simdino_rate, vicreg_covariance, vicreg_variance,
)

D64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- coding rate


def test_coding_rate_isotropic_unit_features():
    """d = 128, eps² = 0.5: R ≈ d/2 ln(1 + 1/eps²) = 64 ln 3 ≈ 70.3 (finite m slightly lower)."""
    z = torch.randn(16384, 128, generator=_gen(0), dtype=D64)
    assert coding_rate(z, eps2=0.5) == pytest.approx(64 * math.log(3), abs=0.5)


def test_coding_rate_collapsed_features():
    z = torch.randn(1, 128, generator=_gen(1), dtype=D64).expand(512, 128)  # one direction
    r = coding_rate(z, eps2=0.5)
    assert r == pytest.approx(0.5 * math.log(1 + 128 / 0.5), rel=1e-9)  # ≈ 2.77, vs 70.3 isotropic
    assert coding_rate(torch.zeros(64, 128, dtype=D64)) == 0.0


def test_coding_rate_matches_slogdet_both_gram_sides():
    g = _gen(2)
    for m, d in [(40, 8), (8, 40)]:  # (d, d) and (m, m) Gram paths
        z = torch.randn(m, d, generator=g, dtype=D64)
        zn = z / z.norm(dim=1, keepdim=True)
        want = 0.5 * torch.linalg.slogdet(torch.eye(d, dtype=D64) + d / (m * 0.5) * zn.T @ zn)[1]
        torch.testing.assert_close(coding_rate(z), want)


def test_coding_rate_cov_form():
    g = _gen(3)
    z = 3.0 + 2.0 * torch.randn(200, 16, generator=g, dtype=D64)
    c = torch.cov(z.T)
    want = torch.linalg.slogdet(torch.eye(16, dtype=D64) + 0.7 * c)[1]
    torch.testing.assert_close(coding_rate(z, kind="cov", alpha=0.7), want)
    torch.testing.assert_close(coding_rate(z + 5.0, kind="cov", alpha=0.7), want)  # centred
    with pytest.raises(ValueError, match="kind"):
        coding_rate(z, kind="nope")


def test_coding_rate_is_float32_under_bf16_autocast():
    """Under torch.autocast (model.autocast=bf16) the Gram matrix and its Cholesky stay float32: a bf16 Gram of
    the default column's ``kind: cov`` term (alpha 256) lost positive-definiteness (issue 32 item 4)."""
    z = torch.randn(96, 128, generator=_gen(7)) @ torch.randn(128, 128, generator=_gen(8))
    want = coding_rate(z, kind="cov", alpha=256.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = coding_rate(z, kind="cov", alpha=256.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_simdino_rate_formula():
    g = _gen(4)
    z = torch.randn(32, 16, generator=g, dtype=D64)
    m, p, eps = 32, 16, 0.05
    zn = z / z.norm(dim=1, keepdim=True)
    want = (p + m) / (p * m) * 0.5 * torch.linalg.slogdet(torch.eye(p, dtype=D64) + p / (m * eps) * zn.T @ zn)[1]
    torch.testing.assert_close(simdino_rate(z, eps=eps), want)


# --------------------------------------------------------------------------- SIGReg


@pytest.mark.parametrize("n", [64, 1024])
def test_sigreg_gaussian_samples_give_about_1_05_per_slice(n):
    """E[N |phî - phi|²] = 1 - phi² at every t, so the expectation is 1.0525 at any N."""
    g = _gen(n)
    vals = [sigreg(torch.randn(n, 16, generator=g, dtype=D64), num_slices=32, generator=g) for _ in range(12)]
    assert torch.stack(vals).mean() == pytest.approx(1.05, abs=0.2)


@pytest.mark.parametrize("n", [64, 1024])
def test_sigreg_collapsed_is_about_0_40_n(n):
    z = torch.zeros(n, 32, dtype=D64)
    assert sigreg(z, generator=_gen(0)) / n == pytest.approx(0.40, abs=0.01)


def test_sigreg_directions_redrawn_and_reproducible():
    z = torch.randn(128, 16, generator=_gen(5), dtype=D64) * 2
    a, b = sigreg(z, generator=_gen(7)), sigreg(z, generator=_gen(7))
    assert a == b
    g = _gen(7)
    assert sigreg(z, generator=g) != sigreg(z, generator=g)  # a new draw each call


# --------------------------------------------------------------------------- VICReg


def test_vicreg_terms():
    g = _gen(6)
    z = torch.randn(4096, 8, generator=g, dtype=D64)
    assert vicreg_variance(z) < 0.02  # unit std: hinge ≈ 0
    assert vicreg_variance(torch.zeros(16, 8, dtype=D64)) == pytest.approx(1 - 1e-2)  # 1 - sqrt(eps)
    assert vicreg_covariance(z) < 0.01
    zc = torch.cat([z[:, :1]] * 8, dim=1)  # perfectly correlated dims: off-diag cov ≈ 1
    assert vicreg_covariance(zc) == pytest.approx(8 * 7 / 8 * torch.var(z[:, 0]).item() ** 2, rel=1e-9)


# --------------------------------------------------------------------------- gradients


def test_gradcheck_regularizers():
    g = _gen(8)
    z = torch.randn(12, 5, generator=g, dtype=D64, requires_grad=True)
    assert gradcheck(lambda x: coding_rate(x), (z,))
    assert gradcheck(lambda x: coding_rate(x, kind="cov", alpha=2.0), (z,))
    assert gradcheck(lambda x: simdino_rate(x), (z,))
    assert gradcheck(lambda x: sigreg(x, num_slices=8, generator=_gen(9)), (z,))
    assert gradcheck(lambda x: vicreg_variance(x, gamma=2.0), (z,))
    assert gradcheck(vicreg_covariance, (z,))


# --------------------------------------------------------------------------- loss helper


def test_regularizer_loss_signs_and_values():
    z = torch.randn(64, 16, generator=_gen(10), dtype=D64, requires_grad=True)
    loss, value = regularizer_loss("coding_rate", z, 0.03)
    torch.testing.assert_close(loss, -0.03 * coding_rate(z))
    assert not value.requires_grad and value > 0
    loss, value = regularizer_loss("sigreg", z.reshape(4, 16, 16), 0.05, generator=_gen(1), num_slices=8)
    torch.testing.assert_close(loss, 0.05 * value)
    for name in ["simdino", "vicreg_variance", "vicreg_covariance"]:
        loss, value = regularizer_loss(name, z, 1.0)
        assert loss.requires_grad and math.isfinite(value)
    with pytest.raises(ValueError, match="unknown regulariser"):
        regularizer_loss("barlow", z, 1.0)
    with pytest.raises(ValueError, match="bad options"):
        regularizer_loss("sigreg", z, 1.0, slices=3)
