"""Metrics on recorded activity (docs/reference/metrics.md). numpy / xarray in, numbers out.

* Effective rank, one definition per name, the same in the run (``collapse_diagnostics`` in
  colsim/simulate.py calls these functions) and in analysis (docs/reference/metrics.md):
  ``eff_rank`` = the participation ratio ``(sum λ)^2 / sum λ^2`` of the covariance eigenvalues
  λ = s² / (N - 1), s the singular values of the *centred* embeddings (Gao et al. 2017, "A
  theory of multineuronal dimensionality, dynamics and measurement", bioRxiv 214262;
  :func:`participation_ratio`, :func:`covariance_spectrum`); ``rankme`` = RankMe
  ``exp(H(p))``, ``p = s / ||s||_1 + eps`` on the singular values of the *uncentred*
  embeddings (Garrido, Balestriero, Najman, LeCun 2023, "RankMe: Assessing the downstream
  performance of pretrained self-supervised representations by their rank", ICML, eq. 1).
* Subspaces: for a factor (rotation), ``dz = z(g.x) - z(x)`` from consecutive views of the
  same episode; eigenspectrum of its covariance and the share of variance in the top-k
  components (a rotation that lives in a plane: top-2 share = 1). Pairs where only this
  factor changes are used when there are enough; otherwise the other factors' linear
  contribution is regressed out (:func:`factor_delta_z`).
* Rotation circle: the views of an orbit (one episode) projected on a 2-D plane (default: the
  top-2 PCs of the rotation dz), each orbit centred on its fitted circle centre;
  circularity = coefficient of variation of the radius, and the RMS residual of a linear fit
  of the unwrapped polar phase against the unwrapped rotation angle (0 and 0 for a perfect
  circle traversed at a constant rate).
* Leakage: class from z_t (all views, split by episode) vs from z_AGG (logistic probes, same
  capacity, same split), and the pose (sin/cos angle, log scale, shift) of every context view
  from z_AGG vs from z_t (ridge probes, same capacity).
* Equivariance: linear and MLP probes of the relative action from ``(z_v, z_v+1)``, per action
  dimension and averaged (constant dimensions dropped) — :mod:`colsim.analysis.probes`.
* Continual: accuracy matrix from per-evaluation accuracies, forgetting / BWT / FWT with
  Avalanche's definitions (Lomonaco et al. 2021, "Avalanche: an end-to-end library for
  continual learning", CVPR-W; ``avalanche.evaluation.metrics``) — :mod:`.continual`.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr

from colsim.analysis.continual import continual_of_rows
from colsim.analysis.probes import equivariance_r2, linear_probe_accuracy

__all__ = ["FACTORS", "participation_ratio", "covariance_spectrum", "rankme", "singular_values", "spectrum_from_gram",
           "embedding_rank",
           "eigenspectrum", "topk_share", "factor_unchanged", "isolated_pairs", "factor_delta_z", "rotation_plane",
           "rotation_circle", "circularity", "leakage", "equivariance", "accuracy_matrix", "continual_metrics"]

# factor -> the action dimensions that describe it
FACTORS = {"rotation": ("sin_drot", "cos_drot"), "translation": ("dtx", "dty"), "scale": ("dlogscale",)}


def _np(x) -> np.ndarray:
    return np.asarray(x.values if isinstance(x, xr.DataArray) else x, dtype=np.float64)


def _rows(z, feature_dim: str = "unit") -> np.ndarray:
    """(..., D) -> (N, D): a DataArray is stacked over all dims but ``feature_dim``."""
    if isinstance(z, xr.DataArray):
        z = z.transpose(..., feature_dim).values
    z = np.asarray(z, np.float64)
    return z.reshape(-1, z.shape[-1])


# ------------------------------------------------------------------ effective rank
def participation_ratio(eigs) -> float:
    """Participation ratio ``(sum λ)^2 / sum λ^2`` of covariance eigenvalues ``λ`` (>= 0).

    ``λ = s^2 / (N - 1)`` for the singular values s of the centred embeddings (the ratio does not
    depend on the 1 / (N - 1) scale): D equal eigenvalues -> D, one non-zero -> 1. The metric
    ``eff_rank``, in the run and in analysis.
    """
    lam = np.clip(_np(eigs), 0, None)
    lam = lam[np.isfinite(lam)]
    q = float(np.sum(lam ** 2))
    return float(np.sum(lam) ** 2 / q) if q > 0 else float("nan")


def covariance_spectrum(z, feature_dim: str = "unit") -> np.ndarray:
    """Eigenvalues ``s^2 / (N - 1)`` (descending) of the covariance of the rows of ``z`` (N, D),
    s the singular values of the centred rows; rows with a NaN are dropped."""
    x = _rows(z, feature_dim)
    x = x[np.isfinite(x).all(1)]
    if len(x) < 2:
        return np.full(x.shape[1], np.nan)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return s ** 2 / (len(x) - 1)


def rankme(s, eps: float = 1e-7) -> float:
    """RankMe ``exp(-sum p log p)``, ``p_k = s_k / ||s||_1 + eps`` (Garrido et al. 2023, eq. 1)."""
    s = np.abs(_np(s))
    s = s[np.isfinite(s)]
    tot = float(np.sum(s))
    if tot <= 0:
        return float("nan")
    p = s / tot + eps
    p = p[p > 0]  # 0 log 0 = 0
    return float(np.exp(-np.sum(p * np.log(p))))


def singular_values(z, feature_dim: str = "unit") -> np.ndarray:
    """Singular values of the (N, D) embedding matrix (uncentred), descending."""
    x = _rows(z, feature_dim)
    x = x[np.isfinite(x).all(1)]
    if not len(x):
        return np.full(x.shape[1], np.nan)
    return np.linalg.svd(x, compute_uv=False)


def spectrum_from_gram(gram) -> np.ndarray:
    """Singular values from the Gram matrix ``sum_n x_n x_n^T`` (D, D) — the streaming route."""
    w = np.linalg.eigvalsh(_np(gram))[::-1]
    return np.sqrt(np.clip(w, 0, None))


def embedding_rank(z, feature_dim: str = "unit") -> dict:
    """``{"eff_rank", "rankme"}`` of an embedding array (N, D) or DataArray with ``feature_dim``:
    the participation ratio of the centred covariance and RankMe of the uncentred singular values."""
    return {"eff_rank": participation_ratio(covariance_spectrum(z, feature_dim)),
            "rankme": rankme(singular_values(z, feature_dim))}


# ------------------------------------------------------------------ subspaces
def eigenspectrum(x, cov: bool = False) -> np.ndarray:
    """Eigenvalues (descending) of the covariance of rows of ``x`` (N, D), or of ``x`` itself if ``cov``."""
    if cov:
        c = _np(x)
    else:
        r = _rows(x)
        r = r[np.isfinite(r).all(1)]
        if len(r) < 2:
            return np.full(r.shape[1], np.nan)
        c = np.cov(r, rowvar=False)
    return np.clip(np.linalg.eigvalsh(c)[::-1], 0, None)


def topk_share(eigs, k: int = 2) -> float:
    """Share of the total variance in the top ``k`` components of a (descending) spectrum."""
    e = np.sort(np.abs(_np(eigs)))[::-1]
    tot = float(np.sum(e))
    return float(np.sum(e[:k]) / tot) if tot > 0 else float("nan")


def _factor_mask(action_dims, factor: str) -> np.ndarray:
    names = [str(a) for a in action_dims]
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; known: {sorted(FACTORS)}")
    return np.array([n in FACTORS[factor] for n in names])


def factor_unchanged(actions, action_dims, factor: str, tol: float = 1e-6) -> np.ndarray:
    """(..., A) relative actions -> (...) bool: ``factor`` does not change (identity action).

    Identity = 0 for every dimension of the factor except ``cos_drot`` (1). A factor with none
    of its dimensions present counts as unchanged.
    """
    a = np.asarray(actions, np.float64)
    names = [str(n) for n in action_dims]
    out = np.ones(a.shape[:-1], bool)
    for i, n in enumerate(names):
        if n in FACTORS[factor]:
            ident = 1.0 if n == "cos_drot" else 0.0
            out &= np.abs(a[..., i] - ident) <= tol
    return out


def isolated_pairs(actions, action_dims, factor: str, tol: float = 1e-6) -> np.ndarray:
    """(..., A) -> (...) bool: ``factor`` changes and every other factor is unchanged."""
    a = np.asarray(actions, np.float64)
    out = ~factor_unchanged(a, action_dims, factor, tol)
    for other in FACTORS:
        if other != factor:
            out &= factor_unchanged(a, action_dims, other, tol)
    return out


def factor_delta_z(z, actions, factor: str = "rotation", action_dims=None, mode: str = "auto",
                   min_pairs: int = 20, tol: float = 1e-6):
    """Factor-induced ``dz = z(view v+1) - z(view v)`` for one factor -> (pairs, unit).

    z: (sample, view, unit); actions: (sample, view, action_dim), the relative action from view
    v to v+1 (DataArrays, or arrays with ``action_dims`` naming the last axis). ``mode``:

    * "isolated": only the view pairs where this factor changes and the others do not;
    * "residualise": all pairs, minus the least-squares linear contribution of the *other*
      factors' action dimensions (fitted with an intercept on all pairs) — approximate when a
      factor acts nonlinearly, exact when only this factor varies;
    * "auto" (default): "isolated" when at least ``min_pairs`` such pairs exist, else "residualise".
    """
    if isinstance(actions, xr.DataArray):
        action_dims = list(actions["action_dim"].values) if "action_dim" in actions.coords else action_dims
        actions = actions.transpose("sample", "view", "action_dim").values
    if isinstance(z, xr.DataArray):
        z = z.transpose("sample", "view", "unit").values
    action_dims = list(action_dims) if action_dims is not None else []
    z = np.asarray(z, np.float64)
    a = np.asarray(actions, np.float64)[:, :-1]  # (S, V-1, A) actions of the view pairs
    dz = (z[:, 1:] - z[:, :-1]).reshape(-1, z.shape[-1])  # (S*(V-1), D)
    a = a.reshape(-1, a.shape[-1])
    ok = np.isfinite(dz).all(1) & np.isfinite(a).all(1)
    dz, a = dz[ok], a[ok]
    iso = isolated_pairs(a, action_dims, factor, tol)
    if mode == "isolated" or (mode == "auto" and iso.sum() >= min_pairs):
        return dz[iso]
    if mode not in ("auto", "residualise"):
        raise ValueError(f"mode must be 'auto', 'isolated' or 'residualise', got {mode!r}")
    other = ~_factor_mask(action_dims, factor) & (a.std(0) > 1e-8)
    if not other.any() or len(a) < 2:
        return dz
    b = np.column_stack([np.ones(len(a)), a])  # intercept + all action dims
    w, *_ = np.linalg.lstsq(b, dz, rcond=None)
    return dz - a[:, other] @ w[1:][other]


def rotation_plane(dz) -> np.ndarray:
    """(2, D) orthonormal top-2 principal directions of the rotation ``dz`` (pairs, D)."""
    r = _rows(dz)
    r = r[np.isfinite(r).all(1)]
    r = r - r.mean(0)
    _, _, vt = np.linalg.svd(r, full_matrices=False)
    return vt[:2]


def _orbit_centres(xy: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Centres (O, 2) of orbits ``xy`` (O, V, 2) at angles ``ang`` (O, V), fitted jointly.

    Model ``xy[o, v] = c_o + A (cos ang, sin ang)`` with one 2x2 matrix A for all orbits (a
    circle, ellipse or reflection) and a centre per orbit: least squares after removing each
    orbit's mean, then ``c_o = mean_o(xy) - A mean_o(cos, sin)``. Works with 2 views per orbit.
    """
    q = np.stack([np.cos(ang), np.sin(ang)], -1)  # (O, V, 2)
    ok = np.isfinite(xy).all((1, 2)) & np.isfinite(q).all((1, 2))
    pm, qm = xy.mean(1), q.mean(1)  # (O, 2)
    pt, qt = (xy - pm[:, None])[ok].reshape(-1, 2), (q - qm[:, None])[ok].reshape(-1, 2)
    if len(pt) < 2 or np.linalg.matrix_rank(qt) < 2:
        return pm
    a, *_ = np.linalg.lstsq(qt, pt, rcond=None)  # (2, 2): qt @ a ~ pt
    return pm - qm @ a


def rotation_circle(z, angle, plane=None) -> xr.Dataset:
    """Orbits projected on a plane and centred: ``xy`` (orbit, view, xy) and ``angle`` (orbit, view).

    z: (orbit, view, unit) — the views of each episode (one orbit per sample); angle: (orbit,
    view) absolute rotation angles in radians. ``plane`` (2, D) defaults to the top-2 PCs of
    the orbits' consecutive-view differences. Centres: :func:`_orbit_centres`.
    """
    zz = z.transpose(..., "view", "unit").values if isinstance(z, xr.DataArray) else np.asarray(z)
    zz = np.asarray(zz, np.float64)
    ang = _np(angle)
    if plane is None:
        plane = rotation_plane((zz[:, 1:] - zz[:, :-1]).reshape(-1, zz.shape[-1]))
    xy = zz @ np.asarray(plane, np.float64).T  # (O, V, 2)
    xy = xy - _orbit_centres(xy, ang)[:, None]
    return xr.Dataset({"xy": (("orbit", "view", "xy"), xy), "angle": (("orbit", "view"), ang)})


def circularity(xy, angle=None) -> dict:
    """Circularity of centred orbits ``xy`` (orbit, view, 2) against their angles (orbit, view).

    * ``radius_cv`` = std(r) / mean(r) over all points (0 for a circle);
    * ``phase_residual`` = RMS residual (radians) of a linear fit of the unwrapped polar phase on
      the unwrapped angle, pooled over orbits with one intercept per orbit (views are in
      episode order; consecutive views differ by less than pi);
    * ``slope`` of that fit (+-1 for a faithful rotation code), ``n_orbits``.

    Accepts the Dataset of :func:`rotation_circle` as ``xy``.
    """
    if isinstance(xy, xr.Dataset):
        xy, angle = xy["xy"], xy["angle"]
    p, ang = _np(xy), _np(angle)
    ok = np.isfinite(p).all((1, 2)) & np.isfinite(ang).all(1)
    p, ang = p[ok], ang[ok]
    nan = {"radius_cv": float("nan"), "phase_residual": float("nan"), "slope": float("nan"), "n_orbits": 0}
    if not len(p):
        return nan
    r = np.hypot(p[..., 0], p[..., 1])
    if r.mean() <= 0:
        return nan
    th = np.unwrap(ang, axis=1)
    ph = np.unwrap(np.arctan2(p[..., 1], p[..., 0]), axis=1)
    th, ph = th - th.mean(1, keepdims=True), ph - ph.mean(1, keepdims=True)
    den = float(np.sum(th ** 2))
    slope = float(np.sum(th * ph) / den) if den > 1e-12 else float("nan")
    res = float(np.sqrt(np.mean((ph - slope * th) ** 2))) if den > 1e-12 else float("nan")
    return {"radius_cv": float(r.std() / r.mean()), "phase_residual": res, "slope": slope, "n_orbits": int(len(p))}


# ------------------------------------------------------------------ probes
def _pose(label_angle, label_scale=None, label_shift=None) -> tuple[np.ndarray, list[str]]:
    cols, names = [np.sin(label_angle), np.cos(label_angle)], ["sin_angle", "cos_angle"]
    if label_scale is not None:
        cols.append(np.log(np.clip(label_scale, 1e-12, None)))
        names.append("log_scale")
    if label_shift is not None:
        cols += [label_shift[..., 0], label_shift[..., 1]]
        names += ["shift_x", "shift_y"]
    return np.stack(cols, -1), names


def _ridge_r2(x, y, groups, seed=0) -> float:
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    from colsim.analysis.probes import _standardize, split_indices

    if not np.isfinite(x).all():
        return float("nan")
    tr, te = split_indices(len(y), 0.5, seed, groups)
    keep = y[tr].std(0) > 1e-8
    if not keep.any():
        return float("nan")
    xtr, xte = _standardize(x[tr], x[te])
    pred = Ridge(alpha=1.0).fit(xtr, y[tr][:, keep]).predict(xte).reshape(len(te), -1)
    return float(np.mean(r2_score(y[te][:, keep], pred, multioutput="raw_values")))


def leakage(z, z_agg, label_class, label_angle=None, label_scale=None, label_shift=None, seed: int = 0,
            context_views: int | None = None, groups=None) -> dict:
    """Class from z_t vs z_AGG, and pose from z_AGG vs z_t, with probes of the same capacity.

    z (sample, view, unit); z_agg (sample, unit or unit_agg); label_class (sample,); label_angle /
    label_scale (sample, view); label_shift (sample, view, 2); groups (sample,): the split unit
    (source image id, as the run's evaluation uses; default: the episode).

    * Class: logistic regression on z_t of *every* view (each view a row, labelled with its
      episode's class) vs on z_AGG, one seeded split by ``groups`` shared by both (all views of
      an episode on one side) — the in-run ``acc_z`` / ``acc_agg`` definition.
    * Pose (sin/cos angle, log scale, shift) of every *context* view v < C, C = ``context_views``
      = the views z_AGG aggregated (the column's ``embed`` aggregates the first min(window, V);
      default all V views): ridge R² of pose_v from z_AGG and from z_v, each averaged over the C
      views (the same split for every probe).

    Returns ``class_from_z``, ``class_from_zagg``, ``class_leak`` = z minus z_AGG (> 0: the
    invariance split is inverted), ``pose_from_z``, ``pose_from_zagg``, ``pose_leak`` = z_AGG R²
    (should stay below ``pose_from_z``), ``context_views`` = C.
    """
    zz = z.transpose("sample", "view", "unit").values if isinstance(z, xr.DataArray) else np.asarray(z)
    za = z_agg.transpose("sample", ...).values if isinstance(z_agg, xr.DataArray) else np.asarray(z_agg)
    y = _np(label_class).astype(np.int64)
    S, V, D = zz.shape
    g = np.arange(S) if groups is None else np.asarray(groups.values if isinstance(groups, xr.DataArray) else groups)
    out = {"class_from_z": linear_probe_accuracy(zz.reshape(S * V, D), np.repeat(y, V), seed=seed,
                                                 groups=np.repeat(g, V)),
           "class_from_zagg": linear_probe_accuracy(za, y, seed=seed, groups=g)}
    out["class_leak"] = out["class_from_z"] - out["class_from_zagg"]
    C = V if context_views is None else int(context_views)
    if not 1 <= C <= V:
        raise ValueError(f"context_views={context_views} must be between 1 and the number of views {V}")
    out["context_views"] = C
    if label_angle is not None:
        from_z, from_agg = [], []
        for v in range(C):
            sc = _np(label_scale)[:, v] if label_scale is not None else None
            sh = _np(label_shift)[:, v] if label_shift is not None else None
            pose, _ = _pose(_np(label_angle)[:, v], sc, sh)
            from_z.append(_ridge_r2(np.asarray(zz[:, v], np.float64), pose, g, seed))
            from_agg.append(_ridge_r2(np.asarray(za, np.float64), pose, g, seed))
        out["pose_from_z"] = float(np.mean(from_z))
        out["pose_from_zagg"] = float(np.mean(from_agg))
        out["pose_leak"] = out["pose_from_zagg"]
    return out


def equivariance(z, actions, action_dims=None, probe: Literal["linear", "mlp"] = "linear", seed: int = 0,
                 groups=None) -> dict:
    """Equivariance R² from view pairs ``(z_v, z_v+1) -> action_v`` (split by ``groups`` (sample,), e.g. the
    source image of each episode; by episode when None).

    z (sample, view, unit); actions (sample, view, action_dim) (last view's zeros unused).
    Returns :func:`colsim.analysis.probes.equivariance_r2`'s dict: ``r2`` (mean over used
    dims), ``per_dim``, ``dropped`` (constant dims, not scored), ``probe``.
    """
    if isinstance(actions, xr.DataArray):
        if "action_dim" in actions.coords:
            action_dims = [str(a) for a in actions["action_dim"].values]
        actions = actions.transpose("sample", "view", "action_dim").values
    zz = z.transpose("sample", "view", "unit").values if isinstance(z, xr.DataArray) else np.asarray(z)
    S, V, D = zz.shape
    za = zz[:, :-1].reshape(-1, D)
    zb = zz[:, 1:].reshape(-1, D)
    a = np.asarray(actions)[:, :-1].reshape(-1, np.asarray(actions).shape[-1])
    groups = np.repeat(np.arange(S) if groups is None else np.asarray(groups), V - 1)
    return equivariance_r2(za, zb, a, probe=probe, seed=seed, groups=groups, names=action_dims)


# ------------------------------------------------------------------ continual
def accuracy_matrix(acc: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray | None]:
    """Accuracy matrix ``A[after_phase, probe_set]`` and the init row from per-evaluation accuracies.

    acc: (eval, probe_set) with coordinate ``phase`` (eval,) naming the phase each evaluation
    closed ("init" before training). Row r is the *last* evaluation after phase r; phases
    without an evaluation (a run that stopped early) are NaN rows. Returns ``(A, init)``,
    ``init`` None when there is no "init" evaluation.
    """
    names = [str(p) for p in acc["probe_set"].values]
    ph = np.array([str(p) for p in acc["phase"].values]) if "phase" in acc.coords else np.array([])
    vals = acc.transpose("eval", "probe_set").values.astype(np.float64)
    A = np.full((len(names), len(names)), np.nan)
    for r, name in enumerate(names):
        idx = np.nonzero(ph == name)[0]
        if len(idx):
            A[r] = vals[idx[-1]]
    init_idx = np.nonzero(ph == "init")[0]
    init = None
    if len(init_idx):
        init = xr.DataArray(vals[init_idx[0]], dims=["probe_set"], coords={"probe_set": names})
    return xr.DataArray(A, dims=["after_phase", "probe_set"], coords={"after_phase": names, "probe_set": names}), init


def continual_metrics(A, init=None) -> dict:
    """Forgetting, BWT, FWT (Avalanche's definitions; :mod:`.continual`) on the phases completed.

    A (phase, phase) may end in NaN rows (a run that stopped early): the leading all-finite rows are the
    phases completed, T. Forgetting and BWT use ``A[:T, :T]``; FWT uses every completed row, so the
    next-phase accuracy ``A[T-1, T]`` that the last completed evaluation measured still counts
    (FWT_1 .. FWT_min(T, P-1)). Also returns ``per_phase_forgetting`` (``A[k, k] - A[T-1, k]``,
    k < T-1) and ``phases_completed`` T. The arithmetic is :func:`colsim.analysis.continual.continual_of_rows`,
    the same the run's summary.json uses.
    """
    a = _np(A)
    done = np.isfinite(a).all(1)
    T = int(np.argmin(done)) if not done.all() else len(a)
    out = continual_of_rows(a[:T], None if init is None else _np(init))
    out.pop("forgetting_se")
    return out

