"""Linear / MLP probes on recorded activity (docs/reference/metrics.md).

numpy + scikit-learn only (no torch), so a laptop without the training stack can rerun
them on any store.

* Invariance: logistic-regression probe of the class from z_AGG (or z). The fit/score split is
  grouped (``groups``): pass the source-image id of every sample so that no image is on both
  sides (views of one digit are near-duplicates; an episode-grouped split let the same digit,
  drawn by two episodes, be fitted and scored). Every accuracy comes with its binomial
  standard error ``sqrt(p (1 - p) / n_test)`` (docs/reference/metrics.md, error bars).
* Frozen read-outs (Davari et al., CVPR 2022): :func:`fit_readout` keeps the fitted probe
  (standardisation + logistic weights) as plain arrays so it can be re-applied, unchanged, to
  later embeddings (:func:`readout_accuracy`).
* Equivariance: regress the relative action between two views from their encoder outputs
  ``(z_t, z_t')`` (fed as ``(z_t, z_t' - z_t)``, see :func:`equivariance_r2`); R²
  uniform-averaged over action dimensions, with constant dimensions dropped (not scored 0).
  Linear (ridge) and MLP probes; the result says which.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

__all__ = ["split_indices", "group_sides", "linear_probe", "linear_probe_accuracy", "LinearReadout", "fit_readout",
           "readout_accuracy", "binomial_se", "equivariance_r2", "RIDGE_ALPHAS"]

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


def group_sides(groups: np.ndarray, seed: int = 0, test_fraction: float = 0.5) -> np.ndarray:
    """Bool array shaped like ``groups``, True = fit side: one seeded assignment of every distinct
    group (source image) to a side, so that arrays of several probe sets sharing images split alike
    (the in-run evaluation's split, colsim.evaluate)."""
    groups = np.asarray(groups)
    ug = np.unique(groups)
    perm = np.random.default_rng(seed).permutation(ug)
    k = int(round(len(ug) * (1 - test_fraction)))
    return np.isin(groups, perm[:k])


def _standardize(xtr: np.ndarray, xte: np.ndarray):
    mu = xtr.mean(0, keepdims=True)
    sd = xtr.std(0, keepdims=True) + 1e-6
    return (xtr - mu) / sd, (xte - mu) / sd


def _ridge_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int) -> float:
    """The ridge penalty from ``RIDGE_ALPHAS`` with the best mean held-out R² over 5 folds (by group).

    The same choice as ``sklearn.linear_model.RidgeCV(alphas=RIDGE_ALPHAS, cv=folds)`` (tested equal),
    computed as a regularisation path: one eigendecomposition of the centred fold's ``XᵀX`` gives the
    solution for every penalty (``W(α) = V diag(1 / (e + α)) Vᵀ Xᵀ y``), instead of one solve per
    penalty and fold — the in-run evaluation fits this probe once per probe set.
    """
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold, KFold

    k = min(5, len(x) if groups is None else len(np.unique(groups)))
    if k < 2:
        return 1.0
    folds = list(GroupKFold(k).split(x, y, groups)) if groups is not None else \
        list(KFold(k, shuffle=True, random_state=seed).split(x))
    y2 = y.reshape(len(y), -1)
    scores = np.zeros(len(RIDGE_ALPHAS))
    for tr, va in folds:
        if len(va) < 2:  # R² is undefined on one item: NaN, as r2_score gives (without its warning)
            scores += np.nan
            continue
        mx, my = x[tr].mean(0), y2[tr].mean(0)
        xc = x[tr] - mx
        e, V = np.linalg.eigh(xc.T @ xc)  # (d,), (d, d)
        b = V.T @ (xc.T @ (y2[tr] - my))  # (d, A)
        xv = (x[va] - mx) @ V  # (n_va, d)
        for i, a in enumerate(RIDGE_ALPHAS):
            pred = xv @ (b / (np.clip(e, 0, None) + a)[:, None]) + my
            scores[i] += r2_score(y2[va], pred, multioutput="uniform_average")
    return float(RIDGE_ALPHAS[int(np.argmax(scores))])


def binomial_se(p: float, n: int) -> float:
    """Standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` scored on ``n`` items (NaN if n = 0)."""
    if n <= 0 or not np.isfinite(p):
        return float("nan")
    return float(np.sqrt(p * (1.0 - p) / n))


class LinearReadout(NamedTuple):
    """A fitted linear classifier as arrays: ``argmax(((x - mu) / sd) @ coef.T + intercept)``.

    mu, sd (D,); coef (K, D) and intercept (K,) with K = number of classes (K = 1 row for a
    binary problem, sklearn's convention); classes (K or 2,). ``constant`` is set when the
    training split held one class (the read-out then always answers it).
    """

    mu: np.ndarray
    sd: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = (np.asarray(x, np.float64).reshape(len(x), -1) - self.mu) / self.sd
        if self.coef.shape[0] == 0:  # one class seen in training
            return np.full(len(x), self.classes[0])
        s = x @ self.coef.T + self.intercept  # (N, K)
        if s.shape[1] == 1:  # binary: positive score -> classes[1]
            return self.classes[(s[:, 0] > 0).astype(int)]
        return self.classes[np.argmax(s, axis=1)]

    def log_proba(self, x: np.ndarray) -> np.ndarray:
        """Class log-probabilities (N, len(classes)) of ``x`` (N, D), ordered as ``classes``: the
        multinomial softmax of the scores (sklearn's ``predict_log_proba``; a binary read-out's one
        score s gives ``[log sigmoid(-s), log sigmoid(s)]``; one class seen in training: 0)."""
        x = (np.asarray(x, np.float64).reshape(len(x), -1) - self.mu) / self.sd
        if self.coef.shape[0] == 0:
            return np.zeros((len(x), len(self.classes)))
        s = x @ self.coef.T + self.intercept  # (N, K), or (N, 1) for two classes
        if s.shape[1] == 1:
            s = np.concatenate([np.zeros_like(s), s], axis=1)
        return s - np.logaddexp.reduce(s, axis=1, keepdims=True)  # log softmax


def fit_readout(x: np.ndarray, y: np.ndarray, C: float = 1.0, max_iter: int = 500) -> LinearReadout:
    """Multinomial logistic regression on standardised ``x`` (N, D) -> ``y`` (N,), as a :class:`LinearReadout`."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y)
    mu = x.mean(0)
    sd = x.std(0) + 1e-6
    classes = np.unique(y)
    if len(classes) < 2:
        return LinearReadout(mu, sd, np.zeros((0, x.shape[1])), np.zeros(0), classes)
    clf = LogisticRegression(C=C, max_iter=max_iter).fit((x - mu) / sd, y)
    return LinearReadout(mu, sd, clf.coef_.copy(), clf.intercept_.copy(), clf.classes_.copy())


def readout_accuracy(readout: LinearReadout, x: np.ndarray, y: np.ndarray) -> "tuple[float, float]":
    """(accuracy, binomial standard error) of a fitted read-out on ``x`` (N, D), ``y`` (N,)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(x) == 0 or not np.isfinite(x).all():
        return float("nan"), float("nan")
    acc = float(np.mean(readout.predict(x) == np.asarray(y)))
    return acc, binomial_se(acc, len(x))


def linear_probe(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.5, seed: int = 0,
                 groups: np.ndarray | None = None, C: float = 1.0, max_iter: int = 500) -> dict:
    """Fit a logistic probe on one side of a grouped split of ``x`` (N, D), score it on the other.

    Returns ``{"acc", "se", "n_test", "readout", "train", "test"}``: held-out accuracy, its
    binomial standard error, the number of scored items, the fitted :class:`LinearReadout`
    and the index arrays of the split. No group (source image, episode) is on both sides.
    NaN features (a diverged run) give NaN accuracy and no read-out.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y)
    tr, te = split_indices(len(y), test_fraction, seed, groups)
    if not np.isfinite(x).all() or len(te) == 0:
        return {"acc": float("nan"), "se": float("nan"), "n_test": len(te), "readout": None, "train": tr, "test": te}
    readout = fit_readout(x[tr], y[tr], C=C, max_iter=max_iter)
    acc, se = readout_accuracy(readout, x[te], y[te])
    return {"acc": acc, "se": se, "n_test": len(te), "readout": readout, "train": tr, "test": te}


def linear_probe_accuracy(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.5, seed: int = 0,
                          groups: np.ndarray | None = None, C: float = 1.0, max_iter: int = 500) -> float:
    """Held-out accuracy of :func:`linear_probe` (multinomial logistic regression, features standardised
    on the training split). With a single class in the training split the probe answers that class.
    NaN features (a diverged run) give NaN."""
    return linear_probe(x, y, test_fraction, seed, groups, C, max_iter)["acc"]


def equivariance_r2(z_a: np.ndarray, z_b: np.ndarray, actions: np.ndarray, probe: Literal["linear", "mlp"] = "linear",
                    test_fraction: float = 0.5, seed: int = 0, groups: np.ndarray | None = None,
                    names: list[str] | None = None, alpha: "float | Literal['cv']" = "cv",
                    features: Literal["diff", "concat"] = "diff", n_boot: int = 200) -> dict:
    """R² of predicting the relative action (N, A) from the pair ``(z_a, z_b)`` (N, D) each.

    ``features="diff"`` feeds ``concat(z_a, z_b - z_a)`` — the same information as
    ``concat(z_a, z_b)`` (an invertible linear map of it, so the same probe capacity), but far
    better conditioned for the MLP when a large per-episode component is shared by both views;
    ``"concat"`` feeds the plain concatenation. Targets are standardised on the training split
    for the MLP (R² is invariant to it). Returns ``{"r2": mean over used dims, "per_dim":
    {name: r2}, "dropped": [names of constant dims], "probe": "linear"|"mlp", "r2_se": standard error
    of "r2", "per_dim_se": {name: se}}`` (bootstrap over the scored groups, ``n_boot`` resamples,
    the fitted probe held fixed; ``n_boot=0`` gives NaN). Constant
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
    yfit = (ytr - mu) / sd  # (n, A); one column -> (n,), as sklearn's MLPRegressor expects
    model.fit(xtr, yfit[:, 0] if yfit.shape[1] == 1 else yfit)
    pred = model.predict(xte).reshape(len(te), -1) * sd + mu
    per = r2_score(yte, pred, multioutput="raw_values")
    used = [n for n, k in zip(names, keep) if k]
    se = _bootstrap_r2_se(yte, pred, None if groups is None else np.asarray(groups)[te], seed, n_boot)
    return {"r2": float(np.mean(per)), "per_dim": {n: float(v) for n, v in zip(used, per)}, "dropped": dropped,
            "probe": probe, "r2_se": float(se[-1]), "per_dim_se": {n: float(v) for n, v in zip(used, se[:-1])}}


def _bootstrap_r2_se(y: np.ndarray, pred: np.ndarray, groups: np.ndarray | None, seed: int, n_boot: int) -> np.ndarray:
    """Bootstrap standard errors (A + 1,) of the per-dimension R² and of their mean, resampling the
    scored items by group (episode / image) with replacement; the fitted probe is held fixed."""
    A = y.shape[1]
    if n_boot < 2:
        return np.full(A + 1, np.nan)
    rng = np.random.default_rng(seed + 7919)
    g = np.arange(len(y)) if groups is None else groups
    ug, inv = np.unique(g, return_inverse=True)
    members = [np.nonzero(inv == k)[0] for k in range(len(ug))]
    out = np.empty((n_boot, A + 1))
    for b in range(n_boot):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(ug), len(ug))])
        yy, pp = y[idx], pred[idx]
        ss_tot = ((yy - yy.mean(0)) ** 2).sum(0)
        r2 = 1.0 - ((yy - pp) ** 2).sum(0) / np.where(ss_tot > 0, ss_tot, np.nan)
        out[b, :A] = r2
        out[b, A] = np.mean(r2)
    return np.nanstd(out, axis=0, ddof=1)
