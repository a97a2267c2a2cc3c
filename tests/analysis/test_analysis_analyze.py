"""analyze_run: writes the analysis group, idempotent, works on what a failed run left."""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from colsim.analysis.analyze import analyze_run, summary_from_store


def _analysis(path):
    return xr.open_datatree(str(path / "store.zarr"), engine="zarr")


def test_analyze_writes_known_structure_and_is_idempotent(make_run):
    p = make_run("r", rising_component=True)
    s1 = analyze_run(p, mlp="none")
    tree = _analysis(p)
    a = tree["analysis"]
    assert {"metrics", "probe", "evaluation", "analysis"} <= set(tree.children)  # other groups intact
    assert tree.attrs["rule"] == "lpl" and tree.attrs["status"] == "completed"
    assert a["acc_agg"].dims == ("eval", "probe_set") and a.sizes["eval"] == 4
    assert list(a["phase"].values) == ["init", "phase0", "phase1", "phase2"]
    A = a["acc_matrix"].values
    init = a["acc_init"].values
    assert (np.diag(A) > 0.75).all() and (np.diag(A) > init + 0.2).all()  # each phase's classes learned ...
    assert s1["forgetting"] > 0.1 and s1["bwt"] == -s1["forgetting"]  # ... and partly forgotten later
    assert s1["dz_top2_share_rotation"] > 0.9  # the synthetic rotation lives in a plane
    assert s1["radius_cv"] < 0.1 and s1["phase_residual"] < 0.1
    assert s1["equivariance_r2_dim_linear"]["dtx"] > 0.7  # translation is coded linearly
    assert np.isnan(a["equivariance_r2"].sel(regressor="mlp")).all()  # mlp="none"
    assert set(a["dz_method"].values.ravel()) == {"isolated"}
    assert [x["kind"] for x in s1["alarms"]] == ["rising_component"]
    assert a["alarm_variable"].values.tolist() == ["lpl.l0.dec"]
    assert a["circle_xy"].dims == ("orbit", "view", "xy")
    before = a.to_dataset().load()
    s2 = analyze_run(p, mlp="none")
    after = _analysis(p)["analysis"].to_dataset().load()
    xr.testing.assert_identical(before.drop_attrs(), after.drop_attrs())
    for k in ("acc_agg", "forgetting", "z_eff_rank", "alarms"):
        assert s1[k] == s2[k]
    assert summary_from_store(p)["forgetting"] == s2["forgetting"]


def test_analyze_mlp_at_last_evaluation(make_run):
    p = make_run("m")
    s = analyze_run(p, mlp_max_samples=64)  # default mlp="last"
    r2 = _analysis(p)["analysis"]["equivariance_r2"].sel(regressor="mlp")
    assert np.isfinite(r2.isel(eval=-1)).all() and np.isnan(r2.isel(eval=slice(0, -1))).all()
    assert np.isfinite(s["equivariance_r2_mlp"])


def test_analyze_diverged_run_with_missing_evaluations(make_run):
    p = make_run("d", status="diverged", diverge_at=200, n_evals=2)
    s = analyze_run(p, mlp="none")
    assert s["status"] == "diverged" and s["n_evals"] == 2
    assert s["phases_completed"] == 1 and s["forgetting"] is None  # needs two phases; NaN -> null
    assert s["final_eval_phase"] == "phase0"
    assert any(a["kind"] == "nonfinite" and a["step"] == 199 for a in s["alarms"])
    a = _analysis(p)["analysis"]
    assert np.isnan(a["acc_matrix"].values[1:]).all() and np.isfinite(a["acc_matrix"].values[0]).all()
    json.dumps(s)  # JSON-clean summary


def test_analyze_run_without_any_evaluation_or_probe(make_run):
    p = make_run("none", status="interrupted", diverge_at=50, n_evals=0, consolidate=False)
    s = analyze_run(p)
    assert s["n_evals"] == 0 and s["acc_source"] is None
    assert "analysis" in _analysis(p).children  # written and consolidated
    q = make_run("evalonly", with_probe=False)
    s = analyze_run(q)
    assert s["acc_source"].startswith("in-run evaluation")
    assert s["phases_completed"] == 3 and s["forgetting"] > 0


def test_block_size_does_not_change_results(make_run):
    p = make_run("b", n_samples=64, sample_chunk=16)
    analyze_run(p, mlp="none", block_bytes=1)  # one 16-sample chunk per block: 4 blocks per slice
    small = _analysis(p)["analysis"].to_dataset().load()
    analyze_run(p, mlp="none", block_bytes=1 << 30)
    big = _analysis(p)["analysis"].to_dataset().load()
    for v in ("z_eff_rank", "z_rankme", "zagg_eff_rank", "dz_eigenspectrum", "unit_std", "acc_agg"):
        np.testing.assert_allclose(small[v].values, big[v].values, rtol=1e-5, atol=1e-7)


def test_layer_sparsity_from_the_optional_layers_group(make_run):
    p = make_run("layers", with_layers=True, n_phases=2)
    analyze_run(p, mlp="none")
    a = _analysis(p)["analysis"]
    ls = a["layer_sparsity"]
    assert ls.dims == ("eval", "layer") and list(a["layer"].values) == ["0", "1", "2"]
    # ReLU of N(0,1) - [0, 0.5, 1]: zero fractions Phi(0), Phi(0.5), Phi(1)
    np.testing.assert_allclose(ls.mean("eval").values, [0.5, 0.691, 0.841], atol=0.02)


def test_z_agg_with_its_own_width(make_run):
    """The simulator writes z_AGG over ``unit_agg`` (its own width), not ``unit``."""
    p = make_run("agg", agg_dim="unit_agg", agg_units=24, factor_mode="mixed", n_phases=2)
    s = analyze_run(p, mlp="none")
    assert np.isfinite(s["zagg_eff_rank"]) and np.isfinite(s["acc_agg"])
    a = _analysis(p)["analysis"]
    assert set(a["dz_method"].values.ravel()) == {"residualised"}  # every pair changes every factor
