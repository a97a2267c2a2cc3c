"""colsim.load_column (issue 14 item 7): a trained column stepped from Python one view at a time."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
import zarr
from typer.testing import CliRunner

import colsim
from _tiny import TINY
from colsim.build import build_world
from colsim.cli import app
from colsim.loaded import LoadError

ROOT = Path(__file__).resolve().parent.parent
SETS = [a for s in TINY for a in ("--set", s)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "run"
    res = CliRunner().invoke(app, ["run", "stationary", "--steps", "12", "--out", str(out), "--quiet", *SETS])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def col(run_dir):
    return colsim.load_column(run_dir)


@pytest.fixture(scope="module")
def episodes(col):
    return build_world(col.config).probe_set(None, 3, 6, torch.Generator().manual_seed(3), {})  # (3, 6, C, H, W)


def test_load_gives_the_final_checkpoint_and_eval(col, run_dir):
    assert col.trained_steps == 12 and col.checkpoint.name == "phase00-all_digits.pt"
    assert col.probe_eval["step"] == 12 and col.probe_eval["eval"] == 1  # eval 0 is the step-0 evaluation
    assert col.window == 3 and col.obs_shape == (1, 16, 16) and col.action_dim == 5
    assert list(col.classes) == list(range(10))
    assert not col.column.training
    # the loaded parameters are the checkpoint's
    ck = torch.load(col.checkpoint, weights_only=True)["model"]
    for n, t in col.column.state_dict().items():
        assert torch.equal(t, ck[n]), n


def test_stepping_reproduces_batch_embedding(col, episodes):
    """Stepping one view at a time gives the z / z_AGG of ``column.embed`` on the same episode in one batch.

    Not bit for bit: the batch holds V views where a step encodes at most M, and CPU convolution / matmul
    kernels round differently for different batch sizes (measured: at most 5e-7, float32 rounding)."""
    M = col.window
    for n in range(episodes.obs.shape[0]):
        whole = col.column.embed(episodes.obs[n:n + 1], episodes.actions[n:n + 1])  # every view in one batch
        col.reset()
        for v in range(episodes.obs.shape[1]):
            r = col.step(episodes.obs[n, v], episodes.actions[n, v].numpy())
            lo = max(0, v + 1 - M)  # past M views the window has rolled: z_AGG of the last M views
            ref = col.column.embed(episodes.obs[n:n + 1, lo:v + 1], episodes.actions[n:n + 1, lo:v + 1])
            np.testing.assert_allclose(r.z, whole["z"][0, v].numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(r.z_agg, ref["z_agg"][0].numpy(), rtol=0, atol=1e-5)
            if v + 1 <= M:  # no roll yet: the prefix of the whole episode
                pre = col.column.embed(episodes.obs[n:n + 1, :v + 1], episodes.actions[n:n + 1, :v + 1])
                np.testing.assert_allclose(r.z_agg, pre["z_agg"][0].numpy(), rtol=0, atol=1e-5)
        assert col.views == M
    # a different episode gives a different z_AGG (the test can fail)
    assert np.abs(r.z_agg - col.column.embed(episodes.obs[:1, -M:], episodes.actions[:1, -M:])["z_agg"][0].numpy()
                  ).max() > 1e-3


def test_prediction_is_the_columns_own_prediction(col, episodes):
    """1 - cos(prediction after view v, target embedding of view v+1) is the column's prediction loss
    on the episode x_0..x_{v+1} (``embed``'s loss_pred), for every v."""
    c = col.column
    enc = c.target_encoder if c.target_encoder is not None else c.encoder
    n = 1
    col.reset()
    for v in range(episodes.obs.shape[1] - 1):
        r = col.step(episodes.obs[n, v], episodes.actions[n, v])
        with torch.no_grad():
            tgt = enc(episodes.obs[n, v + 1][None])[0][0].numpy()  # (D,)
        loss = 1 - r.prediction @ tgt / (np.linalg.norm(r.prediction) * np.linalg.norm(tgt))
        lo = max(0, v + 1 - col.window)
        ref = c.embed(episodes.obs[n:n + 1, lo:v + 2], episodes.actions[n:n + 1, lo:v + 2])["loss_pred"][0]
        assert loss == pytest.approx(float(ref), abs=1e-5)


def test_hypotheses_are_the_probe_fitted_on_the_last_evaluation(col, run_dir, episodes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    col.reset()
    r = col.step(episodes.obs[0, 0], episodes.actions[0, 0])
    r = col.step(episodes.obs[0, 1], episodes.actions[0, 1])
    h = r.hypotheses
    assert h.shape == (10,) and (h >= 0).all() and h.sum() == pytest.approx(1.0, abs=1e-9)
    assert col.classes[np.argmax(h)] == col.predict_class(r.z_agg[None])[0]
    # the same read-out fitted independently on the store's last evaluation, all probe sets pooled
    probe = xr.open_datatree(run_dir / "store.zarr", engine="zarr")["probe"].to_dataset()
    x = probe["z_agg"].isel(eval=-1).values.reshape(-1, probe.sizes["unit_agg"]).astype(np.float64)
    y = probe["label_class"].values.reshape(-1)
    assert col.probe_eval["samples"] == len(y) == 20
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    np.testing.assert_allclose(h, ref.predict_proba(r.z_agg[None].astype(np.float64))[0], atol=1e-6)
    # ... and not the step-0 evaluation's
    x0 = probe["z_agg"].isel(eval=0).values.reshape(-1, probe.sizes["unit_agg"]).astype(np.float64)
    ref0 = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x0, y)
    assert np.abs(h - ref0.predict_proba(r.z_agg[None].astype(np.float64))[0]).max() > 1e-3


def test_reset_starts_a_new_episode_and_none_action_is_zeros(col, episodes):
    col.reset()
    first = col.step(episodes.obs[2, 0], episodes.actions[2, 0])
    col.step(episodes.obs[2, 1], episodes.actions[2, 1])
    col.reset()
    assert col.views == 0
    again = col.step(episodes.obs[2, 0], episodes.actions[2, 0])
    np.testing.assert_array_equal(first.z_agg, again.z_agg)
    np.testing.assert_array_equal(first.prediction, again.prediction)
    col.reset()
    zero = col.step(episodes.obs[2, 0], None)
    col.reset()
    zero2 = col.step(episodes.obs[2, 0], np.zeros(col.action_dim, np.float32))
    np.testing.assert_array_equal(zero.prediction, zero2.prediction)
    assert np.abs(zero.prediction - first.prediction).max() > 1e-4  # the action reaches the prediction


def test_loading_leaves_the_callers_rng_alone(run_dir):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    colsim.load_column(run_dir)
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_observation_is_one_line(col):
    with pytest.raises(ValueError, match=r"^observation: shape \(16, 16\), expected \(1, 16, 16\)"):
        col.step(np.zeros((16, 16)), None)
    with pytest.raises(ValueError, match=r"^action: shape \(3,\), expected \(5,\)"):
        col.step(np.zeros((1, 16, 16)), np.zeros(3))


def _copy(run_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(run_dir, d)
    return d


def test_errors_name_the_path_and_the_fix(run_dir, tmp_path):
    def fails(path, match, **kw):
        with pytest.raises(LoadError, match=match) as e:
            colsim.load_column(path, **kw)
        assert "\n" not in str(e.value)

    fails(tmp_path / "nope", r"nope: no such run folder; give the folder `colsim run --out` wrote")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", r"empty: no config.yaml, not a colsim run folder")
    fails(run_dir, r"is a single-column run; drop column='a'", column="a")
    fails(run_dir, r"device='tpu': must be 'cpu', 'cuda' or 'cuda:N'", device="tpu")
    if not torch.cuda.is_available():
        fails(run_dir, r"CUDA is not available on this machine; use device='cpu'", device="cuda")

    d = _copy(run_dir, tmp_path)
    shutil.rmtree(d / "checkpoints")
    fails(d, r"copy: no checkpoint in checkpoints/")

    shutil.rmtree(d)
    d = _copy(run_dir, tmp_path)
    zarr.open_group(str(d / "store.zarr"), mode="r+").attrs["status"] = "interrupted"
    fails(d, r"the run is interrupted, not completed; finish it with `colsim run --resume .*copy`")

    shutil.rmtree(d)
    d = _copy(run_dir, tmp_path)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["protocol"]["circuit"] = {"columns": {"a": {}, "b": {}}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    fails(d, r"is a circuit run \(columns \['a', 'b'\]\); load_column loads single-column runs only")
    # the packaged layout (a list of column configs): the message names the columns, not their whole configs
    cfg["protocol"]["circuit"] = {"columns": [{"name": "c0", "sensor": {"patch": {"top": 0, "left": 0, "size": 20}}},
                                              {"name": "c1", "sensor": {"patch": {"top": 0, "left": 12, "size": 20}}}]}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    fails(d, r"is a circuit run \(columns \['c0', 'c1'\]\); load_column")

    shutil.rmtree(d)
    d = _copy(run_dir, tmp_path)
    shutil.rmtree(d / "store.zarr")
    fails(d, r"store.zarr: cannot be opened")


def test_example_runs(run_dir):
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "load_column.py"), str(run_dir), "--episodes", "2",
                          "--views", "3"], capture_output=True, text=True, env={**os.environ}, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count(": top hypothesis") == 6  # 2 episodes x 3 views
    assert "last-view top hypothesis right in" in res.stdout
