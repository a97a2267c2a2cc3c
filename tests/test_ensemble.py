"""Seed ensembles (``colsim run --seeds ... --ensemble``): each seed's run folder equals its separate run's to 1e-6
in float32 on CPU; what cannot run as an ensemble exits 2 with one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from _tiny import TINY
from colsim.cli import app

runner = CliRunner()
SETS = [a for s in TINY for a in ("--set", s)]
# a short run through two phases (evaluated at their ends, steps 3 and 6)
ARGS = ["run", "nonstationary", "--rule", "backprop", "--steps", "6", "--seeds", "0,1", "--quiet", *SETS,
        "--set", "protocol.phases=[{name: a, steps: 3, classes: [0, 1]}, {name: b, steps: 3, classes: [2, 3]}]",
        "--set", "protocol.evaluation.at_start=false"]
TIMING = {"steps_per_s"}  # wall-clock figures, never equal
SUMMARY_TIMING = {"wall_s", "eval_s", "eval_share"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ensemble")
    ens = runner.invoke(app, [*ARGS, "--ensemble", "--out", str(tmp / "ens")])
    assert ens.exit_code == 0, ens.output
    sep = runner.invoke(app, [*ARGS, "--out", str(tmp / "sep")])
    assert sep.exit_code == 0, sep.output
    return tmp


def _close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.dtype.kind in "fc":
        assert a.shape == b.shape, what
        assert np.array_equal(np.isnan(a), np.isnan(b)), what
        assert np.nanmax(np.abs(a - b), initial=0.0) <= 1e-6, (what, np.nanmax(np.abs(a - b)))
    else:
        assert np.array_equal(a, b), what


def _close_tree(a, b, what: str) -> None:
    if isinstance(b, dict):
        assert set(a) == set(b), what
        for k in b:
            _close_tree(a[k], b[k], f"{what}.{k}")
    elif isinstance(b, (list, float, int)) and not isinstance(b, bool) and np.asarray(b).dtype.kind in "fiu":
        _close(np.asarray(a, dtype=float), np.asarray(b, dtype=float), what)
    else:
        assert a == b, what


@pytest.mark.parametrize("seed", [0, 1])
def test_ensemble_equals_separate_runs(pair, seed):
    ens, sep = pair / f"ens-s{seed}", pair / f"sep-s{seed}"
    for group in ("metrics", "probe", "evaluation"):
        a, b = xr.open_zarr(ens / "store.zarr", group=group), xr.open_zarr(sep / "store.zarr", group=group)
        assert set(a.data_vars) == set(b.data_vars), group
        assert a.sizes == b.sizes, group
        for v in set(b.data_vars) - TIMING:
            _close(np.asarray(a[v].values), np.asarray(b[v].values), f"{group}/{v}")
    losses = xr.open_zarr(ens / "store.zarr", group="metrics")["loss"].values
    assert np.isfinite(losses[1:3]).all() and len(losses) == 6  # trained, with a context from the second tick
    sa, sb = json.loads((ens / "summary.json").read_text()), json.loads((sep / "summary.json").read_text())
    assert set(sa) == set(sb)
    for k in set(sb) - SUMMARY_TIMING:
        _close_tree(sa[k], sb[k], f"summary {k}")
    assert xr.open_zarr(ens / "store.zarr").attrs["ensemble"] == [0, 1]
    assert xr.open_zarr(ens / "store.zarr").attrs["status"] == "completed"


def test_ensemble_checkpoint_is_the_seed_s_own(pair):
    """The phase-end checkpoint of seed 1 holds seed 1's parameters and optimizer state, as its separate run's."""
    from colsim.checkpoint import load_checkpoint

    a = load_checkpoint(pair / "ens-s1" / "checkpoints" / "phase00-a.pt")
    b = load_checkpoint(pair / "sep-s1" / "checkpoints" / "phase00-a.pt")
    assert a["step"] == b["step"] == 3
    for n, t in b["model"].items():
        assert torch.allclose(a["model"][n], t, atol=1e-6), n
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sb:
        for n in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.allclose(sa[k][n], sb[k][n], atol=1e-6), (k, n)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # seed 1's dropout draws, no other seed's


@pytest.mark.parametrize("args, says", [
    (["--seeds", "3"], "one seed"),
    (["--rule", "lpl", "--seeds", "0,1"], "rule 'lpl' cannot run as a seed ensemble"),
    (["--seeds", "0,1", "--set", "model.encoder.output_norm=batch"], "model.encoder.output_norm=batch"),
    ([], "give the seeds"),
])
def test_ensemble_refusals_exit_2_with_one_line(tmp_path, args, says):
    rule = [] if "--rule" in args else ["--rule", "backprop"]
    res = runner.invoke(app, ["run", "nonstationary", *rule, *args, "--ensemble", "--steps", "5", "--quiet",
                              "--out", str(tmp_path / "x"), *SETS])
    assert res.exit_code == 2, res.output
    assert says in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not list(Path(tmp_path).glob("x*"))  # refused before any run folder is made
