"""Linear / MLP probes on recorded activity (REFERENCE.md section 5).

numpy + scikit-learn only (no torch), so a laptop without the training stack can rerun
them on any store.

* Invariance: logistic-regression probe of the class from z_AGG (or z).
* Equivariance: regress the relative action between two views from their encoder outputs
  ``(z_t, z_t')`` (fed as ``(z_t, z_t' - z_t)``, see :func:`equivariance_r2`); R²
  uniform-averaged over action dimensions, with constant dimensions dropped (not scored 0).
  Linear (ridge) and MLP probes; the result says which.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["split_indices", "linear_probe_accuracy", "equivariance_r2", "RIDGE_ALPHAS"]

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))  # the linear equivariance probe's grid


def split_indices(n: int, test_fraction: float = 0.5, seed: int = 0, groups: np.ndarray | None = None):
    """Deterministic train/test split of ``n`` items (by ``groups`` when given, e.g. episodes)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n)
        k = int(round(n * (1 - test_fraction)))
        return np.sort(perm[:k]), np.sort(perm[k:])
    ug = np.unique(groups)
    perm = rng.permutation(ug)
    k = int(round(len(ug) * (1 - test_fraction)))
    train_g = set(perm[:k].tolist())
    mask = np.array([g in train_g for g in groups])
    return np.nonzero(mask)[0], np.nonzero(~mask)[0]


def _standardize(xtr: np.ndarray, xte: np.ndarray):
    mu = xtr.mean(0, keepdims=True)
    sd = xtr.std(0, keepdims=True) + 1e-6
    return (xtr - mu) / sd, (xte - mu) / sd


def _ridge_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int) -> float:
    """The ridge penalty from ``RIDGE_ALPHAS`` with the best mean held-out R² over 5 folds (by group)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, KFold

    k = min(5, len(x) if groups is None else len(np.unique(groups)))
    if k < 2:
        return 1.0
    folds = list(GroupKFold(k).split(x, y, groups)) if groups is not None else \
        list(KFold(k, shuffle=True, random_state=seed).split(x))
    return float(RidgeCV(alphas=RIDGE_ALPHAS, cv=folds).fit(x, y).alpha_)


def linear_probe_accuracy(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.5, seed: int = 0,
                          groups: np.ndarray | None = None, C: float = 1.0, max_iter: int = 500) -> float:
    """Held-out accuracy of a multinomial logistic regression predicting ``y`` (N,) from ``x`` (N, D).

    Features are standardised on the training split. With a single class in the data the
    probe is trivially right: returns 1.0. NaN features (a diverged run) give NaN.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y)
    if not np.isfinite(x).all():
        return float("nan")
    tr, te = split_indices(len(y), test_fraction, seed, groups)
    if len(np.unique(y[tr])) < 2:
        return float(np.mean(y[te] == y[tr][0])) if len(tr) else float("nan")
    xtr, xte = _standardize(x[tr], x[te])
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(xtr, y[tr])
    return float(clf.score(xte, y[te]))


def equivariance_r2(z_a: np.ndarray, z_b: np.ndarray, actions: np.ndarray, probe: Literal["linear", "mlp"] = "linear",
                    test_fraction: float = 0.5, seed: int = 0, groups: np.ndarray | None = None,
                    names: list[str] | None = None, alpha: "float | Literal['cv']" = "cv",
                    features: Literal["diff", "concat"] = "diff") -> dict:
    """R² of predicting the relative action (N, A) from the pair ``(z_a, z_b)`` (N, D) each.

    ``features="diff"`` feeds ``concat(z_a, z_b - z_a)`` — the same information as
    ``concat(z_a, z_b)`` (an invertible linear map of it, so the same probe capacity), but far
    better conditioned for the MLP when a large per-episode component is shared by both views;
    ``"concat"`` feeds the plain concatenation. Targets are standardised on the training split
    for the MLP (R² is invariant to it). Returns ``{"r2": mean over used dims, "per_dim":
    {name: r2}, "dropped": [names of constant dims], "probe": "linear"|"mlp"}``. Constant
    action dimensions (std < 1e-8 on the training split) are dropped, not scored 0.

    The linear probe is ridge regression; ``alpha="cv"`` (default) picks its penalty from
    ``RIDGE_ALPHAS`` by 5-fold cross-validation on the training split (folds by ``groups``, so
    both views of a pair, and all pairs of an episode, stay in one fold). A fixed small penalty
    overfits when the pairs are few for the features (a 100-episode probe set gives 150 training
    pairs for 2 x 128 features: held-out R² < 0 at alpha = 1, where the chosen penalty scores
    what the pooled sets score). A number fixes the penalty.
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor

    za, zb = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    if features not in ("diff", "concat"):
        raise ValueError(f"features must be 'diff' or 'concat', got {features!r}")
    x = np.concatenate([za, zb - za if features == "diff" else zb], axis=1)
    a = np.asarray(actions, np.float64)
    names = list(names) if names is not None else [f"a{i}" for i in range(a.shape[1])]
    if not np.isfinite(x).all():
        return {"r2": float("nan"), "per_dim": {n: float("nan") for n in names}, "dropped": [], "probe": probe}
    tr, te = split_indices(len(a), test_fraction, seed, groups)
    keep = a[tr].std(0) > 1e-8
    dropped = [n for n, k in zip(names, keep) if not k]
    if not keep.any():
        return {"r2": float("nan"), "per_dim": {}, "dropped": dropped, "probe": probe}
    xtr, xte = _standardize(x[tr], x[te])
    ytr, yte = a[tr][:, keep], a[te][:, keep]
    if probe == "linear":
        model = Ridge(alpha=_ridge_alpha(xtr, ytr, None if groups is None else np.asarray(groups)[tr], seed)
                      if alpha == "cv" else float(alpha))
    elif probe == "mlp":
        # early stopping holds out 10 % of the training split; too few pairs for that -> plain fit
        model = MLPRegressor(hidden_layer_sizes=(256,), max_iter=300, early_stopping=len(tr) >= 100,
                             random_state=seed)
    else:
        raise ValueError(f"probe must be 'linear' or 'mlp', got {probe!r}")
    if len(tr) < 2 or len(te) < 2:  # too few pairs to fit and score
        return {"r2": float("nan"), "per_dim": {n: float("nan") for n, k in zip(names, keep) if k},
                "dropped": dropped, "probe": probe}
    mu, sd = (ytr.mean(0), ytr.std(0)) if probe == "mlp" else (0.0, 1.0)
    model.fit(xtr, (ytr - mu) / sd)
    pred = model.predict(xte).reshape(len(te), -1) * sd + mu
    per = r2_score(yte, pred, multioutput="raw_values")
    used = [n for n, k in zip(names, keep) if k]
    return {"r2": float(np.mean(per)), "per_dim": {n: float(v) for n, v in zip(used, per)}, "dropped": dropped,
            "probe": probe}
