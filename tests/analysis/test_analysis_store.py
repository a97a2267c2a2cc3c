"""open_run / open_runs over synthetic stores with the run-store layout."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from colsim.analysis.store import RunStoreError, open_run, open_runs, run_info


def test_open_run_folder_or_store_and_clear_errors(make_run, tmp_path):
    p = make_run("r")
    for path in (p, p / "store.zarr"):
        tree = open_run(path)
        assert {"metrics", "probe", "evaluation"} <= set(tree.children)
        assert tree["probe"]["z"].dims == ("eval", "probe_set", "sample", "view", "unit")
        assert run_info(tree)["rule"] == "lpl" and run_info(tree)["seed"] == 0
    with pytest.raises(RunStoreError, match=str(tmp_path / "missing")):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunStoreError, match="not a colsim run store"):
        open_run(tmp_path / "empty")


def test_open_run_without_consolidated_metadata(make_run):
    p = make_run("interrupted", status="interrupted", consolidate=False)
    tree = open_run(p)
    assert tree.attrs["status"] == "interrupted"
    assert "metrics" in tree.children and "loss" in tree["metrics"]


def test_open_runs_stacks_a_sweep_and_aligns_ragged_runs(make_run):
    paths = [make_run("bp0", rule="backprop", seed=0), make_run("bp1", rule="backprop", seed=1),
             make_run("lpl0", rule="lpl", seed=0),
             make_run("lpl1", rule="lpl", seed=1, status="diverged", diverge_at=200, n_evals=2)]
    ds = open_runs(paths)
    assert ds.sizes["rule"] == 2 and ds.sizes["seed"] == 2 and ds.sizes["model"] == 1 and ds.sizes["protocol"] == 1
    assert list(ds["rule"].values) == ["backprop", "lpl"]
    assert ds["loss"].dims == ("rule", "model", "protocol", "seed", "step")
    assert ds.sizes["step"] == 360
    one = dict(model="seqjepa-tiny", protocol="nonstationary")
    div = ds["loss"].sel(rule="lpl", seed=1, **one)
    assert np.isnan(div.sel(step=slice(200, None))).all()
    # before the divergence only each phase's first step (no context yet, nothing predicted) is NaN
    before = div.sel(step=slice(0, 198))
    assert np.isnan(before.sel(step=[0, 120])).all()
    assert np.isfinite(before.drop_sel(step=[0, 120])).all()
    acc = ds["evaluation.acc_agg"].sel(rule="lpl", seed=1, **one)
    assert np.isfinite(acc.isel(eval=slice(0, 2))).all() and np.isnan(acc.isel(eval=slice(2, None))).all()
    assert ds["status"].sel(rule="lpl", seed=1, **one).item() == "diverged"
    assert ds["evaluation.eval_phase"].sel(rule="backprop", seed=0, **one).values.tolist()[0] == "init"
    # a sweep is a data dimension
    assert ds["loss"].mean("seed").sizes == {"rule": 2, "model": 1, "protocol": 1, "step": 360}


def test_open_runs_rejects_duplicate_runs(make_run):
    a, b = make_run("a"), make_run("b")
    with pytest.raises(RunStoreError, match="same"):
        open_runs([a, b])


def test_store_layout_matches_the_spec(make_run):
    tree = xr.open_datatree(str(make_run("r") / "store.zarr"), engine="zarr")
    probe = tree["probe"]
    assert probe["z_agg"].dims == ("eval", "probe_set", "sample", "unit")
    assert probe["actions"].dims == ("probe_set", "sample", "view", "action_dim")
    assert list(probe["action_dim"].values) == ["sin_drot", "cos_drot", "dtx", "dty", "dlogscale"]
    assert probe["phase"].values.tolist() == ["init", "phase0", "phase1", "phase2"]
    assert tree["metrics"]["step"].dtype == np.int64


def test_open_runs_with_analysis_groups(sweep_runs):
    ds = open_runs(sweep_runs)
    assert ds["analysis.acc_matrix"].dims == ("rule", "model", "protocol", "seed", "after_phase", "probe_set")
    assert ds["analysis.dz_top2_share"].dims[-3:] == ("eval", "probe_set", "factor")
    n = ds["analysis.n_alarms"].squeeze(["model", "protocol"])
    assert n.sel(rule="lpl+metaplastic").values.tolist() == [1.0, 1.0]
    assert "analysis.alarm_kind" not in ds and "analysis.circle_xy" not in ds


def test_open_run_cuts_a_half_written_evaluation(make_run):
    """A crash mid-append leaves z one evaluation longer than its coordinates: cut to the shortest."""
    import zarr

    p = make_run("ragged", status="interrupted", consolidate=False)
    z = zarr.open_group(str(p / "store.zarr" / "probe"), mode="a", use_consolidated=False)["z"]
    z.resize((z.shape[0] + 1,) + z.shape[1:])
    tree = open_run(p)
    assert tree["probe"].sizes["eval"] == 4 and tree["probe"]["z"].shape[0] == 4
    assert list(tree["probe"]["phase"].values) == ["init", "phase0", "phase1", "phase2"]
