"""Circuit analyses (issue 14): per-column / voted probes, accuracy vs columns, steps to recognition,
linear CKA — on hand-computed examples and synthetic circuit stores with planted structure."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from colsim.analysis import circuits as C
from colsim.analysis._synthetic_circuit import circuit_activity, write_synthetic_circuit_run
from colsim.analysis.probes import fit_readout
from colsim.analysis.store import open_run

PLANT = dict(n_columns=3, n_samples=400, n_views=4, n_units=8, n_classes=4, n_evals=2, signal=1.5)


def _probe(path):
    return open_run(path)["probe"].to_dataset().load()


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """Aligned columns (shared weights), independent noise of equal size: voting must help."""
    p = write_synthetic_circuit_run(tmp_path_factory.mktemp("c") / "aligned", column_noise=(1.0, 1.0, 1.0),
                                    with_actions=False, **PLANT)
    return C.circuit_analysis(_probe(p))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """Columns in rotated frames, independent noise: the mean of z_AGG mixes frames, evidence does not."""
    p = write_synthetic_circuit_run(tmp_path_factory.mktemp("c") / "rotated", rotate=True, with_actions=False,
                                    **PLANT)
    return C.circuit_analysis(_probe(p))


# ------------------------------------------------------------------ steps to recognition, by hand

# label 0, two classes, three views. Column A: wrong after view 1 (0.4 < 0.6), right after view 2
# (0.4*0.9 = 0.36 > 0.06) and 3 -> 2 steps. Column B: right (0.7), wrong (0.14 < 0.24), right
# (0.126 > 0.024) -> 3 steps. Vote (A + B): 0.28 > 0.18, 0.0504 > 0.0144, 0.0227 > 0.0007 -> 1 step.
A = np.log([[0.4, 0.6], [0.9, 0.1], [0.5, 0.5]])
B = np.log([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1]])


def test_steps_to_recognition_hand_computed():
    assert C.steps_to_recognition(A, 0) == 2
    assert C.steps_to_recognition(B, 0) == 3
    assert C.steps_to_recognition(A + B, 0) == 1
    assert np.isnan(C.steps_to_recognition(A, 1))  # label 1: wrong after the last view -> never (NaN)
    assert np.isnan(C.steps_to_recognition(A, -1))  # a class the read-out never saw
    np.testing.assert_array_equal(C.steps_to_recognition(np.stack([A, B]), np.array([0, 0])), [2, 3])
    # right at first, wrong at the end: not recognised although the argmax was right once
    assert np.isnan(C.steps_to_recognition(np.log([[0.9, 0.1], [0.01, 0.99], [0.01, 0.99]]), 0))


def test_recognition_vote_and_paired_gain_by_hand():
    lp = np.stack([A, B])[None, :, None]  # (eval 1, column 2, scored 1, tick 3, class 2)
    ev = xr.Dataset({"log_proba": (("eval", "column", "scored", "tick", "class"), lp), "label": ("scored", [0])},
                    coords={"eval": [0], "column": ["a", "b"], "tick": [1, 2, 3], "class": [0, 1]})
    r = C.recognition(ev)
    assert list(r["column"].values) == ["a", "b", "vote"]
    np.testing.assert_array_equal(r["steps"].values[0, :, 0], [2, 3, 1])
    np.testing.assert_array_equal(r["recognized"].values[0], [1, 1, 1])
    assert r["steps_single"].values[0, 0] == 2.5
    assert r["steps_gain"].values[0] == 1.5  # (2 + 3) / 2 - 1
    # accumulated argmax right after each view: a wrong, right, right; b right, wrong, right; vote always
    np.testing.assert_array_equal(r["acc_tick"].values[0], [[0, 1, 1], [1, 0, 1], [1, 1, 1]])


def test_log_proba_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 5))
    for k in (2, 3):
        y = rng.integers(0, k, 90)
        r = fit_readout(x, y)
        ref = LogisticRegression(max_iter=500).fit((x - r.mu) / r.sd, y).predict_log_proba((x - r.mu) / r.sd)
        np.testing.assert_allclose(r.log_proba(x), ref, atol=1e-8)
        np.testing.assert_array_equal(np.argmax(r.log_proba(x), 1), np.searchsorted(r.classes, r.predict(x)))


# ------------------------------------------------------------------ linear CKA

def test_linear_cka_hand_computed_and_invariances():
    assert C.linear_cka([[1], [2], [3]], [[1], [0], [2]]) == pytest.approx(0.25)  # squared correlation 0.5²
    # X = I3[:, :2], Y = its first column: centred, ||YᵀX||² = 5/9, ||XᵀX||_F = √10/3, ||YᵀY|| = 2/3
    x = np.eye(3)[:, :2]
    assert C.linear_cka(x, x[:, :1]) == pytest.approx(5 / (2 * np.sqrt(10)))
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 6))
    Q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    assert C.linear_cka(X, X) == pytest.approx(1.0)
    assert C.linear_cka(X, 3.5 * X @ Q) == pytest.approx(1.0)  # orthogonal transform + isotropic scaling
    assert C.linear_cka(X @ Q, X + 7.0) == pytest.approx(1.0)  # translation (centred)
    assert C.linear_cka(X, X @ np.diag([1, 1, 1, 1, 1, 20.0])) < 0.5  # not invariant to anisotropic scaling
    Y = rng.standard_normal((50, 4))
    assert C.linear_cka(X, Y) == pytest.approx(C.linear_cka(Y, X))
    assert np.isnan(C.linear_cka(np.ones((5, 2)), X[:5]))
    with pytest.raises(ValueError, match="same items"):
        C.linear_cka(X, Y[:10])


def test_cka_matrix_of_rotated_rescaled_columns_is_one(tmp_path):
    p = write_synthetic_circuit_run(tmp_path / "r", n_columns=3, n_samples=60, n_evals=2, rotate=True, rho=1.0,
                                    column_noise=(1.0, 1.0, 1.0), column_scale=(1.0, 2.0, 0.5), with_actions=False)
    cka = C.cka_matrix(_probe(p))
    assert cka.dims == ("eval", "column", "column_other")
    assert list(cka["column"].values) == ["c0", "c1", "c2", "vote"]
    np.testing.assert_allclose(cka.sel(column=["c0", "c1", "c2"], column_other=["c0", "c1", "c2"]).values, 1.0,
                               atol=1e-5)
    assert (cka.sel(column="vote", column_other="c0").values < 0.99).all()  # the mean of rotated frames is not
    # independent noise: columns agree more as the class signal grows (codebooks converge)
    q = write_synthetic_circuit_run(tmp_path / "q", n_columns=2, n_samples=200, n_evals=3, signal=3.0,
                                    with_actions=False)
    off = C.cka_matrix(_probe(q)).sel(column="c0", column_other="c1").values
    assert off[0] < 0.2 < 0.5 < off[-1]
    zq = C.cka_matrix(_probe(q), "z")  # per-view z: same shape, unit diagonal
    np.testing.assert_allclose(np.diagonal(zq.values, axis1=1, axis2=2), 1.0)


# ------------------------------------------------------------------ planted stores

def test_voting_beats_every_single_column_on_aligned_columns(aligned):
    ds, s = aligned
    acc = ds["circuit_acc_agg"].isel(eval=-1)
    best = float(acc.sel(column=["c0", "c1", "c2"]).max())
    assert float(acc.sel(column="vote")) > best + 0.05
    assert s["circuit_acc_vote"] == float(acc.sel(column="vote"))
    assert s["circuit_acc_single"] == pytest.approx(float(acc.sel(column=["c0", "c1", "c2"]).mean()))
    # training (class signal 0.2 -> 1) raises every accuracy
    assert (ds["circuit_acc_agg"].isel(eval=-1) > ds["circuit_acc_agg"].isel(eval=0) + 0.2).all()
    # accuracy vs number of columns: k = 1 is column c0 alone, k = N the (mean) vote, rising
    for v in ("mean", "evidence"):
        curve = ds[f"circuit_acc_vs_columns_{v}"].isel(eval=-1).values
        assert curve[-1] > curve[0] + 0.05, v
    mean = ds["circuit_acc_vs_columns_mean"].isel(eval=-1).values
    assert mean[0] == float(acc.sel(column="c0"))
    assert mean[-1] == pytest.approx(float(acc.sel(column="vote")), abs=0.011)
    # the evidence curve's ends are the accumulated argmax after the last view of column c0 and of the vote
    tick = ds["circuit_acc_tick"].isel(eval=-1, tick=-1)
    ev = ds["circuit_acc_vs_columns_evidence"].isel(eval=-1).values
    assert (ev[0], ev[-1]) == (float(tick.sel(column="c0")), float(tick.sel(column="vote")))
    # steps to recognition: the evidence vote recognises more episodes, sooner
    assert s["recognized_vote"] > s["recognized_single"] + 0.05
    assert s["steps_vote"] < s["steps_single"]
    assert s["steps_gain"] > 3 * s["steps_gain_se"] > 0


def test_evidence_vote_works_where_the_mean_of_rotated_frames_does_not(rotated):
    ds, s = rotated
    acc = ds["circuit_acc_agg"].isel(eval=-1)
    ev = ds["circuit_acc_vs_columns_evidence"].isel(eval=-1).values
    mean = ds["circuit_acc_vs_columns_mean"].isel(eval=-1).values
    assert float(acc.sel(column="vote")) < float(acc.sel(column="c0"))  # mixing frames loses c0's clean view
    assert ev[-1] > mean[-1] + 0.05
    assert s["steps_gain"] > 3 * s["steps_gain_se"] > 0
    assert s["cka_columns_mean"] < 0.3  # independent noise, rotated frames


def test_planted_activity_is_what_the_docstring_says():
    a = circuit_activity(0, n_columns=2, n_samples=10, n_evals=2, rotate=True, rho=1.0, column_noise=(1.0, 1.0),
                         column_scale=(1.0, 2.0))
    R = a["rotation"]
    np.testing.assert_allclose(a["z"][:, :, 1] @ R[1], 2 * a["z"][:, :, 0] @ R[0], atol=1e-12)
    np.testing.assert_allclose(a["z"][:, :, 2], a["z"][:, :, :2].mean(2))
    np.testing.assert_allclose(a["z_agg"], a["z"].mean(4))
    img, y = a["label_image"][0], a["label_class"][0]
    assert all(len(set(y[img == i])) == 1 for i in np.unique(img))  # one class an image


# ------------------------------------------------------------------ single-column stores, errors

def test_single_column_store_gives_one_line_errors(make_run):
    probe = _probe(make_run(n_evals=2))
    for fn in (C.column_accuracy, C.evidence, C.cka_matrix, C.accuracy_vs_columns, C.circuit_analysis):
        with pytest.raises(C.NotACircuitError, match="no 'column' dimension") as exc:
            fn(probe)
        assert "\n" not in str(exc.value)


def test_consensus_vote_is_not_recomputed(tmp_path):
    p = write_synthetic_circuit_run(tmp_path / "c", n_columns=2, n_samples=40, n_evals=1, with_actions=False)
    with pytest.raises(ValueError, match="'mean' or 'evidence'"):
        C.accuracy_vs_columns(_probe(p), "consensus")


# ------------------------------------------------------------------ analyze / CLI wiring

def test_analyze_writes_circuit_variables_and_scores_the_vote(tmp_path):
    from colsim.analysis.analyze import analyze_run, summary_from_store

    p = write_synthetic_circuit_run(tmp_path / "run", n_columns=3, n_samples=120, n_evals=2, signal=1.5)
    s = analyze_run(p, mlp="none")
    a = open_run(p)["analysis"].to_dataset().load()
    assert a["circuit_acc_agg"].dims == ("eval", "column")
    assert a["circuit_cka"].dims == ("eval", "column", "column_other")
    assert a["circuit_acc_vs_columns_mean"].dims == ("eval", "n_columns")
    assert list(a["n_columns"].values) == [1, 2, 3]
    assert a["circuit_steps"].dims == ("eval", "column", "scored")
    assert a["step"].values.tolist() == [0, 300]
    # the single-column analyses score the vote's recorded output: its acc_agg is the vote column's
    assert a["acc_agg"].values[:, 0] == pytest.approx(a["circuit_acc_agg"].sel(column="vote").values)
    assert s["circuit_vote"] == "mean" and s["circuit_columns"] == ["c0", "c1", "c2"]
    assert summary_from_store(p)["steps_vote"] == s["steps_vote"]
    assert json.loads(a.attrs["summary"])["analysis_version"] == 4


def test_alarms_watch_each_column(tmp_path):
    from colsim.analysis.alarms import health_alarms

    step = np.arange(200)
    loss = np.ones((200, 2))
    loss[150:, 1] = np.nan  # column c1 diverges
    m = xr.Dataset({"loss": (("step", "column"), loss), "grad_norm": ("step", np.ones(200))},
                   coords={"step": step, "column": ["c0", "c1"]})
    al = health_alarms(m)
    assert [(a["kind"], a["variable"], a["step"]) for a in al] == [("nonfinite", "loss[c1]", 150)]


def test_cli_analyze_prints_the_circuit_table(tmp_path, capsys):
    from colsim.analysis.cli import analyze

    p = write_synthetic_circuit_run(tmp_path / "run", n_columns=2, n_samples=60, n_evals=2, with_actions=False)
    analyze([str(p)])
    out = capsys.readouterr().out
    assert "circuit" in out and "steps to recognition" in out and "vote" in out


# ------------------------------------------------------------------ dashboard

def test_dashboard_has_the_circuit_panels_only_for_circuits(tmp_path):
    from types import SimpleNamespace

    from colsim.analysis._circuit_panels import CIRCUIT_TITLES, circuit_rows, column_mean
    from colsim.analysis.dashboard import _empty, _hv, build_layout, dashboard

    from colsim.analysis.analyze import analyze_run

    p = write_synthetic_circuit_run(tmp_path / "run", n_columns=2, n_samples=60, n_evals=3, with_actions=False)
    analyze_run(p, mlp="none")
    text = dashboard([p], tmp_path / "d.html").read_text(encoding="utf-8")
    for title in CIRCUIT_TITLES:
        assert f"{title} - backprop" in text, title
    assert "step: 0" in text and "step: 300" in text and "single (mean)" in text  # the CKA matrix at the first and last evaluation
    rows = build_layout([p])[0][-len(CIRCUIT_TITLES):]
    assert not any(isinstance(panel, _hv().Text) for row in rows for panel in row)  # all four have data
    plain = SimpleNamespace(analysis=xr.Dataset({"acc_agg": ("eval", [0.5])}))  # a single-column run
    assert circuit_rows(_hv(), {"lpl": [plain]}, _empty, {}) == []
    m = open_run(p)["metrics"].to_dataset()
    mm = column_mean(m)
    assert mm["loss"].dims == ("step",) and mm["grad_norm"].dims == ("step",)
    np.testing.assert_allclose(mm["loss"].values, m["loss"].values.mean(1), rtol=1e-6)


def test_compare_tabulates_voting_against_single_columns_over_seeds(tmp_path):
    from colsim.analysis.compare import compare_runs

    ps = [write_synthetic_circuit_run(tmp_path / f"s{s}", seed=s, n_columns=2, n_samples=80, n_evals=1,
                                      column_noise=(1.0, 1.0), with_actions=False) for s in (0, 1)]
    t = compare_runs(ps, ["rule"], metrics=["acc_agg", "circuit_acc_vote", "steps_vote", "steps_single",
                                            "cka_columns_mean"])
    assert t.metrics == ["acc_agg", "circuit_acc_vote", "steps_vote", "steps_single", "cka_columns_mean"]
    row = t.rows[0]
    assert row["n_runs"] == 2
    from colsim.analysis.analyze import summary_from_store

    vote = [summary_from_store(p)["circuit_acc_vote"] for p in ps]
    assert row["circuit_acc_vote"] == pytest.approx(np.mean(vote))
    assert row["acc_agg"] == pytest.approx(np.mean(vote))  # a circuit's acc_agg is its vote's
