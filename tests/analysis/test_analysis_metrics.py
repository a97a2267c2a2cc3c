"""Metrics on synthetic data with known answers (docs/reference/metrics.md)."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from colsim.analysis import metrics as M
from colsim.analysis._stream import SliceStats, factor_covariance
from colsim.analysis.compare import mean_ci, t_quantile_975
from colsim.analysis.continual import bwt, forgetting, fwt

NAMES = ["sin_drot", "cos_drot", "dtx", "dty", "dlogscale"]


# ------------------------------------------------------------------ effective rank
@pytest.mark.parametrize("d", [1, 4, 32])
def test_participation_ratio_and_rankme_of_identity_like_spectra(d):
    assert M.participation_ratio(np.ones(d)) == pytest.approx(d)
    assert M.rankme(np.ones(d)) == pytest.approx(d, rel=1e-4)
    z = np.vstack([np.eye(d), -np.eye(d)]) * 3.0  # zero mean, covariance ∝ I, equal singular values
    r = M.embedding_rank(z)
    assert r["eff_rank"] == pytest.approx(d) and r["rankme"] == pytest.approx(d, rel=1e-4)


def test_rank_of_collapsed_embedding_is_one():
    z = np.outer(np.arange(1, 50), np.ones(8))  # rank-1 matrix
    r = M.embedding_rank(z)
    assert r["eff_rank"] == pytest.approx(1, abs=1e-6)
    assert r["rankme"] == pytest.approx(1, abs=1e-3)


def test_participation_ratio_of_eigenvalues_and_rankme_entropy():
    # (sum λ)² / sum λ² of λ = (9, 1, 0): 100 / 82 — not (sum s)² / sum s² = 16 / 10 of s = (3, 1, 0)
    assert M.participation_ratio(np.array([9.0, 1.0, 0.0])) == pytest.approx(100 / 82)
    s = np.array([3.0, 1.0, 0.0])
    p = np.array([0.75, 0.25])
    assert M.rankme(s, eps=0) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_eff_rank_is_centred_and_rankme_uncentred():
    """Four points ±1 about (10, 10) along both axes. Centred: covariance ∝ I -> participation ratio 2.
    Uncentred Gram [[402, 400], [400, 402]]: s = (sqrt 802, sqrt 2) -> RankMe exp(H(s / ||s||_1)) ≈ 1.21
    (and the old uncentred (sum s)² / sum s² would say 1.10)."""
    z = np.array([[11.0, 10.0], [9.0, 10.0], [10.0, 11.0], [10.0, 9.0]])
    np.testing.assert_allclose(M.covariance_spectrum(z), [2 / 3, 2 / 3])  # s² / (N - 1) = 2 / 3
    s = np.sqrt([802.0, 2.0])
    q = s / s.sum() + 1e-7  # RankMe's p (+ eps)
    r = M.embedding_rank(z)
    assert r["eff_rank"] == pytest.approx(2.0)
    assert r["rankme"] == pytest.approx(np.exp(-(q * np.log(q)).sum()), rel=1e-6)
    assert r["rankme"] == pytest.approx(1.2108, abs=1e-3)


def test_streaming_gram_matches_svd_and_xarray_input():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 3, 6))
    da = xr.DataArray(z, dims=("sample", "view", "unit"))
    s1 = M.singular_values(da)
    x = z.reshape(-1, 6)
    s2 = M.spectrum_from_gram(x.T @ x)
    np.testing.assert_allclose(s1, s2, rtol=1e-8)


# ------------------------------------------------------------------ rotation subspace and circle
def _rotation_orbits(S=200, V=5, D=16, radius=1.3, seed=0, extra=None):
    """z = centre_s + radius (cos a, sin a) in a random 2-D plane; optional extra factor term."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((D, D)))[0]
    plane = q[:, :2].T
    centre = rng.standard_normal((S, 1, D)) * 2.0
    dang = rng.uniform(-1.2, 1.2, (S, V - 1))
    ang = np.concatenate([rng.uniform(-np.pi, np.pi, (S, 1)), dang], 1).cumsum(1)
    z = centre + radius * (np.cos(ang)[..., None] * plane[0] + np.sin(ang)[..., None] * plane[1])
    act = np.zeros((S, V, 5))
    act[:, :-1, 0], act[:, :-1, 1] = np.sin(dang), np.cos(dang)
    if extra is not None:
        z, act = extra(rng, z, act, q)
    return z, ang, act


def test_rotation_in_two_dimensions_has_top2_share_one_and_circularity_zero():
    z, ang, act = _rotation_orbits()
    dz = M.factor_delta_z(z, act, "rotation", NAMES)
    eig = M.eigenspectrum(dz)
    assert M.topk_share(eig, 2) == pytest.approx(1.0, abs=1e-9)
    circ = M.rotation_circle(z, ang)
    c = M.circularity(circ)
    assert c["radius_cv"] < 1e-6
    assert c["phase_residual"] < 1e-6
    assert abs(c["slope"]) == pytest.approx(1.0, abs=1e-6)
    assert c["n_orbits"] == 200
    r = np.hypot(circ["xy"][..., 0], circ["xy"][..., 1])
    np.testing.assert_allclose(r, 1.3, rtol=1e-6)


def test_noise_and_ellipse_break_circularity():
    z, ang, act = _rotation_orbits()
    noisy = z + np.random.default_rng(1).standard_normal(z.shape) * 0.5
    assert M.topk_share(M.eigenspectrum(M.factor_delta_z(noisy, act, "rotation", NAMES)), 2) < 0.6
    plane = M.rotation_plane((z[:, 1:] - z[:, :-1]).reshape(-1, z.shape[-1]))
    squash = z @ plane.T @ np.diag([1.0, 0.3]) @ plane  # ellipse in the plane
    c = M.circularity(M.rotation_circle(squash, ang, plane))
    assert c["radius_cv"] > 0.1


def test_residualised_delta_z_removes_a_linear_cofactor():
    def add_translation(rng, z, act, q):
        S, V, D = z.shape
        d = rng.uniform(-1, 1, (S, V - 1, 2))
        shift = np.concatenate([np.zeros((S, 1, 2)), d], 1).cumsum(1)
        act[:, :-1, 2:4] = d
        return z + shift @ q[:, 2:4].T * 2.0, act

    z, ang, act = _rotation_orbits(extra=add_translation)
    raw = M.factor_delta_z(z, act, "rotation", NAMES, mode="residualise")
    assert M.topk_share(M.eigenspectrum(raw), 2) == pytest.approx(1.0, abs=1e-6)
    mixed = (z[:, 1:] - z[:, :-1]).reshape(-1, z.shape[-1])
    assert M.topk_share(M.eigenspectrum(mixed), 2) < 0.9  # translation adds two more directions
    with pytest.raises(ValueError):
        M.factor_delta_z(z, act, "rotation", NAMES, mode="bogus")


def test_isolated_pairs_and_streaming_covariance_match_in_memory():
    rng = np.random.default_rng(3)
    S, V, D = 120, 4, 8
    z = rng.standard_normal((S, V, D))
    act = np.zeros((S, V, 5))
    which = rng.integers(0, 2, (S, V - 1))
    th = rng.uniform(-1, 1, (S, V - 1))
    act[:, :-1, 0] = np.where(which == 0, np.sin(th), 0)
    act[:, :-1, 1] = np.where(which == 0, np.cos(th), 1)
    act[:, :-1, 2] = np.where(which == 1, rng.uniform(-1, 1, (S, V - 1)), 0)
    iso = M.isolated_pairs(act[:, :-1], NAMES, "rotation")
    np.testing.assert_array_equal(iso, which == 0)
    st = SliceStats(D, 5, NAMES)
    for a in range(0, S, 50):  # three blocks
        st.update(z[a:a + 50], z[a:a + 50, 0], act[a:a + 50])
    for fac in ("rotation", "translation"):
        cov, how = factor_covariance(st, fac)
        assert how == "isolated"
        ref = np.cov(M.factor_delta_z(z, act, fac, NAMES), rowvar=False, bias=True)
        np.testing.assert_allclose(cov, ref, atol=2e-6)  # float32 block products
    cov, how = factor_covariance(st, "scale")
    assert cov is None and how == "none"  # scale never changes
    # residualised route: closed form == explicit residuals
    act2 = act.copy()
    act2[:, :-1, 2] = rng.uniform(-1, 1, (S, V - 1))  # translation changes on every pair
    st2 = SliceStats(D, 5, NAMES)
    st2.update(z, None, act2)
    cov, how = factor_covariance(st2, "rotation", min_pairs=10 ** 9)
    assert how == "residualised"
    ref = np.cov(M.factor_delta_z(z, act2, "rotation", NAMES, mode="residualise"), rowvar=False, bias=True)
    np.testing.assert_allclose(cov, ref, atol=2e-6)
    x = z.reshape(-1, D)
    np.testing.assert_allclose(st.unit_std, x.std(0), rtol=1e-5)
    np.testing.assert_allclose(st.z.gram(), x.T @ x, rtol=1e-5)


def test_shifted_float32_moments_keep_precision_for_a_large_mean():
    from colsim.analysis._stream import _Moments

    rng = np.random.default_rng(0)
    x = 1e3 + rng.standard_normal((20000, 4)) * np.array([1.0, 0.1, 0.01, 1.0])
    m = _Moments()
    for a in range(0, len(x), 4096):
        m.add(x[a:a + 4096])
    np.testing.assert_allclose(np.diag(m.cov()), x.var(0), rtol=1e-3)


# ------------------------------------------------------------------ probes
def test_perfectly_separable_classes_give_accuracy_one_and_leakage():
    rng = np.random.default_rng(0)
    S, V, D = 120, 3, 8
    y = rng.integers(0, 3, S)
    z_agg = np.eye(D)[y] * 5 + rng.standard_normal((S, D)) * 0.01  # class lives in z_AGG
    z = rng.standard_normal((S, V, D))  # but not in z_t
    ang = rng.uniform(-np.pi, np.pi, (S, V))
    z[..., 0], z[..., 1] = np.cos(ang) * 3, np.sin(ang) * 3  # pose lives in z_t
    out = M.leakage(z, z_agg, y, ang)
    assert out["class_from_zagg"] == 1.0
    assert out["class_from_z"] < 0.6
    assert out["class_leak"] < 0
    assert out["pose_from_z"] > 0.9 and out["pose_from_zagg"] < 0.2


def test_class_from_z_scores_every_view_split_by_episode():
    """acc_z on all views, grouped by episode — the in-run definition: the probe on (S V) rows with
    the episode as the split unit. Views that are exact copies of their episode's random code (with a
    random class per episode) are memorised by an ungrouped probe but are at chance when every view
    of an episode sits on one side of the split."""
    from colsim.analysis.probes import linear_probe_accuracy, split_indices

    rng = np.random.default_rng(1)
    S, V, D = 80, 4, 100
    y = rng.integers(0, 2, S)
    code = rng.standard_normal((S, 1, D))
    z = np.repeat(code, V, axis=1)  # (S, V, D): every view is its episode's code
    out = M.leakage(z, code[:, 0], y, seed=3)
    groups = np.repeat(np.arange(S), V)
    assert out["class_from_z"] == linear_probe_accuracy(z.reshape(S * V, D), np.repeat(y, V), seed=3, groups=groups)
    assert out["class_from_z"] < 0.75  # grouped: chance level, not memorised
    assert linear_probe_accuracy(z.reshape(S * V, D), np.repeat(y, V), seed=3) > 0.95  # ungrouped would memorise
    # all views are scored: the held-out episodes' V views each
    _, te = split_indices(S * V, 0.5, 3, groups)
    assert len(te) == V * len(split_indices(S, 0.5, 3, np.arange(S))[1])


def test_pose_leakage_uses_every_context_view():
    """z_AGG holds the pose of context view 0 only (views 0..2 are context, view 3 the target).
    Pose from z_AGG, averaged over the C = 3 context views: R² ≈ (1 + 0 + 0) / 3. The old fixed
    view V - 2 = 2 scored ≈ 0; with C = 1 the score is ≈ 1."""
    rng = np.random.default_rng(2)
    S, V, D = 400, 4, 6
    y = rng.integers(0, 2, S)
    ang = rng.uniform(-np.pi, np.pi, (S, V))  # independent angles per view
    z = rng.standard_normal((S, V, D))
    z[..., 0], z[..., 1] = np.cos(ang), np.sin(ang)  # every view's own pose lives in its z_t
    z_agg = np.column_stack([np.cos(ang[:, 0]), np.sin(ang[:, 0]), rng.standard_normal((S, 4))])
    out = M.leakage(z, z_agg, y, ang, context_views=3)
    assert out["context_views"] == 3
    assert out["pose_from_zagg"] == pytest.approx(1 / 3, abs=0.03)
    assert out["pose_from_z"] == pytest.approx(1.0, abs=0.01)
    assert M.leakage(z, z_agg, y, ang, context_views=1)["pose_from_zagg"] == pytest.approx(1.0, abs=0.01)
    assert M.leakage(z, z_agg, y, ang)["context_views"] == V  # default: every view
    with pytest.raises(ValueError, match="context_views"):
        M.leakage(z, z_agg, y, ang, context_views=5)


def test_equivariance_linear_code_and_constant_dimension_dropped():
    rng = np.random.default_rng(0)
    S, V, D = 150, 4, 10
    shift = rng.uniform(-2, 2, (S, V, 2)).cumsum(1)
    w = rng.standard_normal((2, D))
    z = shift @ w + rng.standard_normal((S, 1, D))  # per-episode offset shared by the views
    act = np.zeros((S, V, 5))
    act[:, :-1, 2:4] = np.diff(shift, axis=1)
    act[:, :-1, 1] = 1.0  # cos_drot constant: no rotation
    da = xr.DataArray(act, dims=("sample", "view", "action_dim"), coords={"action_dim": NAMES})
    res = M.equivariance(xr.DataArray(z, dims=("sample", "view", "unit")), da)
    assert res["probe"] == "linear"
    assert set(res["dropped"]) == {"sin_drot", "cos_drot", "dlogscale"}
    assert res["per_dim"]["dtx"] > 0.99 and res["per_dim"]["dty"] > 0.99
    assert res["r2"] == pytest.approx(np.mean(list(res["per_dim"].values())))
    mlp = M.equivariance(z, act, NAMES, probe="mlp")
    assert mlp["probe"] == "mlp" and mlp["r2"] > 0.8


def test_equivariance_linear_probe_penalty_by_cross_validation_does_not_overfit_few_pairs():
    """100 episodes x 3 pairs of 2 x 128 features (one probe set): the action lives in 4 units,
    the rest is per-view noise. A fixed alpha = 1 fits the noise (held-out R² < 0); the
    cross-validated penalty keeps part of the signal (8x the episodes keep more)."""
    from colsim.analysis.probes import equivariance_r2

    def pairs(S, seed):
        rng = np.random.default_rng(seed)
        shift = rng.uniform(-1, 1, (S, 4, 2)).cumsum(1)
        z = rng.standard_normal((S, 4, 128)) * 0.3
        z[..., :2] += shift
        z[..., 2:4] += shift * 0.5
        act = np.diff(shift, axis=1)  # (S, 3, 2)
        g = np.repeat(np.arange(S), 3)
        return z[:, :-1].reshape(-1, 128), z[:, 1:].reshape(-1, 128), act.reshape(-1, 2), g

    za, zb, a, g = pairs(100, 0)
    fixed = equivariance_r2(za, zb, a, groups=g, alpha=1.0)["r2"]
    cv = equivariance_r2(za, zb, a, groups=g)["r2"]
    za8, zb8, a8, g8 = pairs(800, 1)
    many = equivariance_r2(za8, zb8, a8, groups=g8)["r2"]
    assert fixed < 0
    assert cv > 0.25 and cv > fixed + 0.25
    assert many > cv + 0.2


# ------------------------------------------------------------------ continual (Avalanche definitions)
A3 = np.array([[0.9, 0.1, 0.2],
               [0.6, 0.8, 0.3],
               [0.5, 0.4, 0.7]])
INIT = np.array([0.1, 0.05, 0.1])


def test_forgetting_bwt_fwt_known_values():
    assert forgetting(A3) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.4)) / 2)
    assert bwt(A3) == pytest.approx(((0.5 - 0.9) + (0.4 - 0.8)) / 2)
    assert fwt(A3, INIT) == pytest.approx(((0.1 - 0.05) + (0.3 - 0.1)) / 2)


def _acc_da(rows, phases):
    return xr.DataArray(np.array(rows), dims=("eval", "probe_set"),
                        coords={"probe_set": ["p0", "p1", "p2"], "phase": ("eval", phases)})


def test_accuracy_matrix_from_evaluations_and_truncated_run():
    acc = _acc_da([INIT, [0.5, 0.5, 0.5], A3[0], A3[1], A3[2]], ["init", "p0", "p0", "p1", "p2"])
    A, init = M.accuracy_matrix(acc)
    np.testing.assert_allclose(A.values, A3)  # the last evaluation after each phase
    np.testing.assert_allclose(init.values, INIT)
    c = M.continual_metrics(A, init)
    assert c["phases_completed"] == 3
    assert c["forgetting"] == pytest.approx(0.4) and c["bwt"] == pytest.approx(-0.4)
    assert c["fwt"] == pytest.approx(0.125)
    np.testing.assert_allclose(c["per_phase_forgetting"], [0.4, 0.4])
    # a run that diverged during phase 2: two phases completed, no init evaluation
    A2, init2 = M.accuracy_matrix(_acc_da([A3[0], A3[1]], ["p0", "p1"]))
    assert init2 is None and np.isnan(A2.values[2]).all()
    c2 = M.continual_metrics(A2)
    assert c2["phases_completed"] == 2
    assert c2["forgetting"] == pytest.approx(0.9 - 0.6) and c2["bwt"] == pytest.approx(0.6 - 0.9)
    assert np.isnan(c2["fwt"])  # no init evaluation
    # the same truncated run with its init evaluation: FWT_1 = A[0,1] - init[1] = 0.1 - 0.05 and
    # FWT_2 = A[1,2] - init[2] = 0.3 - 0.1, both measured before the run stopped
    c3 = M.continual_metrics(A2, INIT)
    assert c3["fwt"] == pytest.approx(((0.1 - 0.05) + (0.3 - 0.1)) / 2)
    # stopped after phase 0: FWT_1 alone, although forgetting / BWT need two phases
    A1, _ = M.accuracy_matrix(_acc_da([INIT, A3[0]], ["init", "p0"]))
    c4 = M.continual_metrics(A1, INIT)
    assert c4["phases_completed"] == 1 and np.isnan(c4["forgetting"])
    assert c4["fwt"] == pytest.approx(0.1 - 0.05)


def test_fwt_of_completed_rows():
    assert fwt(A3[:2], INIT) == pytest.approx(((0.1 - 0.05) + (0.3 - 0.1)) / 2)  # (T=2, P=3)
    assert fwt(A3[:1], INIT) == pytest.approx(0.05)
    assert fwt(A3, INIT) == fwt(A3[:2], INIT)  # the last row adds no FWT term
    assert np.isnan(fwt(np.array([[0.5]]), np.array([0.1])))
    with pytest.raises(ValueError, match="rows"):
        fwt(np.ones((3, 2)), np.zeros(2))


# ------------------------------------------------------------------ CI
def test_t_quantiles_and_mean_ci():
    assert t_quantile_975(1) == pytest.approx(12.706)
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=2e-3)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (2, 7, 30, 45, 90, 500):
        assert t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-3)
    mu, ci, n = mean_ci([1.0, 2.0, 3.0, None, float("nan")])
    assert (mu, n) == (2.0, 3)
    assert ci == pytest.approx(4.303 * 1.0 / np.sqrt(3))
