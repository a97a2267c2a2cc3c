"""Probes of colsim.analysis.probes: ridge path, grouped splits, frozen read-outs, standard errors."""
import numpy as np


def test_ridge_alpha_path_matches_sklearn_ridgecv():
    """The eigendecomposition path picks the same penalty as RidgeCV over the same grouped folds."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold

    from colsim.analysis.probes import RIDGE_ALPHAS, _ridge_alpha

    rng = np.random.default_rng(3)
    for n, d, noise in ((120, 40, 3.0), (300, 16, 0.3), (80, 100, 1.0)):
        x = rng.normal(size=(n, d))
        y = x[:, :3] @ rng.normal(size=(3, 2)) + noise * rng.normal(size=(n, 2))
        g = np.repeat(np.arange(n // 4), 4)
        folds = list(GroupKFold(5).split(x, y, g))
        ref = RidgeCV(alphas=RIDGE_ALPHAS, cv=folds).fit(x, y).alpha_
        assert _ridge_alpha(x, y, g, seed=0) == ref
