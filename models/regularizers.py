"""Anti-collapse regularisers for joint-embedding columns (docs/reference/models.md).

- ``coding_rate`` — MCR² (Yu et al. 2020, "Learning Diverse and Discriminative
  Representations via the Principle of Maximal Coding Rate Reduction", NeurIPS; Eq. 2):
  ``R(Z) = 1/2 logdet(I_d + d/(m eps²) ZᵀZ)`` for Z (m, d) with L2-normalised rows;
  ``kind="cov"`` is the seeds' form ``logdet(I_d + alpha C)`` with C the covariance of the
  centred (unnormalised) features.
- ``simdino_rate`` — SimDINO (Wu et al. 2025, "Simplifying DINO via Coding Rate
  Regularization"): ``gamma 1/2 logdet(I_p + p/(m eps) ZᵀZ)``, gamma = (p + m)/(p m),
  eps = 0.05, L2-normalised rows.
- ``sigreg`` — SIGReg (Balestriero & LeCun 2025, "LeJEPA: Provable and Scalable
  Self-Supervised Learning Without the Heuristics", Sec. 4): the Epps–Pulley statistic
  ``EP = N ∫ w(t) |phî(t) - exp(-t²/2)|² dt``, ``w(t) = exp(-t²/2)``, of the 1-D
  projections of Z on random unit directions, averaged over directions.
- ``vicreg_variance`` / ``vicreg_covariance`` — VICReg (Bardes, Ponce & LeCun 2022, ICLR;
  Eqs. 1 and 3-4): hinge on the per-dimension std and the sum of squared off-diagonal
  covariances divided by d.

All take z: (m, d) (a batch of m embeddings; flatten any leading dims first) and return a
0-d tensor. ``regularizer_loss`` turns a name into the term to ADD to a minimised loss.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "coding_rate",
    "simdino_rate",
    "sigreg",
    "vicreg_variance",
    "vicreg_covariance",
    "regularizer_loss",
    "REGULARIZERS",
]


def _half_logdet_i_plus(z: Tensor, c: float) -> Tensor:
    """``1/2 logdet(I + c ZᵀZ)`` for z (m, d) as the sum of log of the Cholesky diagonal.

    Uses the smaller of the (d, d) and (m, m) Gram matrices (equal by Sylvester's identity). Computed in
    float32 even under autocast: a bf16 Gram matrix (autocast recasts the matmul's float32 inputs) is off by
    ~2^-8 of its largest entries, enough for ``I + c Gram`` to lose positive-definiteness (the default column's
    ``kind: cov`` term, c = 256 / (m - 1), failed its Cholesky under ``model.autocast=bf16`` on the CPU).
    """
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z  # cholesky needs fp32+
    m, d = z.shape
    with torch.autocast(z.device.type, enabled=False):
        gram = z.T @ z if d <= m else z @ z.T  # (min(m, d), min(m, d))
        eye = torch.eye(gram.shape[0], dtype=z.dtype, device=z.device)
        chol = torch.linalg.cholesky(eye + c * gram)
    return chol.diagonal().log().sum()


def _check_2d(z: Tensor, who: str) -> None:
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"{who}: expected z of shape (m, d) with m >= 2, got {tuple(z.shape)}; "
                         "flatten leading dims with z.reshape(-1, z.shape[-1])")


def coding_rate(z: Tensor, eps2: float = 0.5, kind: str = "mcr2", alpha: float | None = None) -> Tensor:
    """Coding rate of a batch z (m, d) -> 0-d tensor.

    ``kind="mcr2"``: ``1/2 logdet(I_d + d/(m eps2) ZᵀZ)`` with rows of Z L2-normalised.
    Isotropic unit features give ≈ d/2 ln(1 + 1/eps2) (d = 128, eps2 = 0.5: 64 ln 3 ≈ 70.3);
    all rows equal gives 1/2 ln(1 + d/eps2) (≈ 2.8); all-zero rows give 0.
    ``kind="cov"``: ``logdet(I_d + alpha C)`` with C = (z - z̄)ᵀ(z - z̄)/(m - 1) of the
    unnormalised z (the seeds' Step 2 form; no factor 1/2); ``alpha`` defaults to d/eps2,
    which matches the mcr2 scaling when features have unit norm.
    """
    _check_2d(z, "coding_rate")
    m, d = z.shape
    if kind == "mcr2":
        if alpha is not None:
            raise ValueError("coding_rate: alpha is only used by kind='cov'; mcr2 scales by d/(m eps2)")
        return _half_logdet_i_plus(F.normalize(z, dim=-1), d / (m * eps2))
    if kind == "cov":
        a = d / eps2 if alpha is None else alpha
        zc = z - z.mean(0, keepdim=True)
        return 2.0 * _half_logdet_i_plus(zc, a / (m - 1))
    raise ValueError(f"coding_rate: unknown kind={kind!r}; use 'mcr2' or 'cov'")


def simdino_rate(z: Tensor, eps: float = 0.05) -> Tensor:
    """SimDINO coding rate ``gamma 1/2 logdet(I_p + p/(m eps) ZᵀZ)`` of L2-normalised z (m, p)."""
    _check_2d(z, "simdino_rate")
    m, p = z.shape
    gamma = (p + m) / (p * m)
    return gamma * _half_logdet_i_plus(F.normalize(z, dim=-1), p / (m * eps))


def sigreg(z: Tensor, num_slices: int = 256, generator: torch.Generator | None = None,
           num_points: int = 17, t_max: float = 3.0) -> Tensor:
    """SIGReg: mean over random unit directions a of the Epps–Pulley statistic of ``x = z a``.

    z: (N, d). Directions (d, num_slices) are redrawn on every call from ``generator``
    (give one for reproducibility) and carry no gradient. For each slice
    ``EP = N ∫ w(t) |phî(t) - exp(-t²/2)|² dt`` with ``phî(t) = mean_n exp(i t x_n)`` and
    ``w(t) = exp(-t²/2)``, by the trapezoid rule on t in [0, t_max] (``num_points`` nodes)
    with weights doubled for the symmetric half t < 0. Sanity: N(0, I) samples give
    ≈ 1.05 per slice at any N (E[N |phî - phi|²] = 1 - phi², 1.0525 with this quadrature);
    collapsed embeddings (z = 0) give 0.402 N.
    """
    _check_2d(z, "sigreg")
    n, d = z.shape
    with torch.no_grad():
        a = torch.randn(d, num_slices, generator=generator, dtype=z.dtype,
                        device=z.device if generator is None else generator.device)
        a = (a / a.norm(dim=0, keepdim=True)).to(z.device)  # (d, S) unit directions
    x = z @ a  # (N, S)
    t = torch.linspace(0.0, t_max, num_points, dtype=z.dtype, device=z.device)  # (T,)
    phi = torch.exp(-0.5 * t.square())  # (T,) = standard normal cf = weight w(t)
    dt = t_max / (num_points - 1)
    trap = torch.full_like(t, 2.0 * dt)  # trapezoid weights, doubled for t < 0
    trap[0] = trap[-1] = dt
    xt = x[..., None] * t  # (N, S, T)
    re = torch.cos(xt).mean(0) - phi  # (S, T)
    im = torch.sin(xt).mean(0)  # (S, T)
    ep = n * ((re.square() + im.square()) * (phi * trap)).sum(-1)  # (S,)
    return ep.mean()


def vicreg_variance(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Mean over dimensions of ``ReLU(gamma - sqrt(Var(z_j) + eps))`` (VICReg Eq. 1)."""
    _check_2d(z, "vicreg_variance")
    std = torch.sqrt(z.var(dim=0) + eps)  # (d,)
    return F.relu(gamma - std).mean()


def vicreg_covariance(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances divided by d (VICReg Eqs. 3-4)."""
    _check_2d(z, "vicreg_covariance")
    m, d = z.shape
    zc = z - z.mean(0, keepdim=True)
    cov = zc.T @ zc / (m - 1)  # (d, d)
    return (cov.square().sum() - cov.diagonal().square().sum()) / d


# name -> (function, sign): the loss term is sign * weight * value
REGULARIZERS: dict[str, tuple] = {
    "coding_rate": (coding_rate, -1.0),  # maximise the rate
    "simdino": (simdino_rate, -1.0),
    "sigreg": (sigreg, +1.0),  # minimise the distance to N(0, I)
    "vicreg_variance": (vicreg_variance, +1.0),
    "vicreg_covariance": (vicreg_covariance, +1.0),
}


def regularizer_loss(name: str, z: Tensor, weight: float, **kw) -> tuple[Tensor, Tensor]:
    """``(loss, value)``: the term to ADD to a minimised objective and the raw value (detached).

    E.g. ``regularizer_loss("coding_rate", z, 0.03, kind="cov")`` returns
    ``(-0.03 * R, R.detach())``. z: (..., d) is flattened to (m, d). Keyword arguments go to
    the regulariser; unknown names or keywords raise with the valid choices.
    """
    if name not in REGULARIZERS:
        raise ValueError(f"regularizer_loss: unknown regulariser {name!r}; choose from {sorted(REGULARIZERS)}")
    fn, sign = REGULARIZERS[name]
    z2 = z.reshape(-1, z.shape[-1])  # (m, d)
    try:
        inspect.signature(fn).bind(z2, **kw)
    except TypeError as err:
        raise ValueError(f"regularizer_loss: bad options {sorted(kw)} for {name!r}: {err}; "
                         f"see colsim.models.regularizers.{fn.__name__}") from err
    if not math.isfinite(weight):
        raise ValueError(f"regularizer_loss: weight must be finite, got {weight}")
    value = fn(z2, **kw)
    return sign * weight * value, value.detach()
