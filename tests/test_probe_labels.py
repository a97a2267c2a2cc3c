"""The run store's ``probe`` group holds every label the world's probe sets carry (issue 13 items 2-3):
objects3d's orientation (quaternion) and light, saccades' fixation, with their dims, equal to the
world's own ProbeSet drawn with the run's probe generator."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from _tiny import TINY
from colsim.build import build_world
from colsim.cli import app
from colsim.config import resolve_run_config
from colsim.simulate import _seeded
from colsim.analysis.schema import label_layout as label_dims

SACCADES = ["protocol.world.scene_size=32", "protocol.world.grid=2", "protocol.world.glimpse=8"]
EXPECT = {  # world -> label -> store dims after probe_set
    "objects3d": {"class": ("sample",), "image": ("sample",), "orientation": ("sample", "view", "quat"),
                  "light": ("sample", "view", "light_dim")},
    "saccades": {"class": ("sample",), "image": ("sample",), "fixation": ("sample", "view", "xy")},
    "stationary": {"class": ("sample",), "image": ("sample",), "angle": ("sample", "view"),
                      "shift": ("sample", "view", "xy"), "scale": ("sample", "view")},
}


@pytest.mark.parametrize("protocol,extra", [
    ("objects3d", ["protocol.world.lighting=view"]),
    ("saccades", SACCADES),
    ("stationary", []),
])
def test_probe_group_stores_every_label_of_the_world(tmp_path, protocol, extra):
    tiny = [s for s in TINY if protocol != "saccades" or not s.startswith("protocol.world.image_size")]
    sets = tiny + extra + ["protocol.evaluation.at_start=false", "protocol.evaluation.probe_samples=12"]
    steps = 2
    args = ["run", protocol, "--rule", "backprop", "--steps", str(steps), "--seed", "4", "--quiet",
            "--out", str(tmp_path / "r")] + [a for s in sets for a in ("--set", s)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    probe = xr.open_datatree(str(tmp_path / "r" / "store.zarr"), engine="zarr")["probe"].to_dataset()

    cfg = resolve_run_config(protocol, rule="backprop", overrides=sets, steps=steps, seed=4)
    world = build_world(cfg)
    ev = cfg.protocol.evaluation
    truth = [world.probe_set(ph.classes, ev.probe_samples, ev.views, _seeded(4, 7, j), ph.world, pool=ev.pool)
             for j, ph in enumerate(cfg.protocol.phases)]
    assert set(truth[0].labels) == set(EXPECT[protocol])  # the world's own labels, all of them
    stored = {v[len("label_"):] for v in probe.data_vars if v.startswith("label_")}
    assert stored == set(EXPECT[protocol])
    for lab, dims in EXPECT[protocol].items():
        da = probe[f"label_{lab}"]
        assert da.dims == ("probe_set", *dims), lab
        want = np.stack([p.labels[lab].numpy() for p in truth])
        assert da.shape == want.shape and da.dtype == want.dtype, lab
        np.testing.assert_array_equal(da.values, want, err_msg=lab)
    if protocol == "objects3d":
        q = probe["label_orientation"].values
        np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-5)  # unit quaternions
        assert probe.sizes["quat"] == 4 and probe.sizes["light_dim"] == 3
        light = probe["label_light"].values
        np.testing.assert_allclose(np.linalg.norm(light, axis=-1), 1.0, atol=1e-5)  # unit light directions
        assert np.ptp(light[..., 0]) > 0  # lighting: view changes the light across views
    if protocol == "saccades":
        fix = probe["label_fixation"].values  # glimpse centres, pixels, inside the 32 px scene
        assert ((fix >= 4) & (fix <= 28)).all() and probe.sizes["xy"] == 2


def test_label_dims_names():
    assert label_dims("class", 1) == ("sample",)
    assert label_dims("angle", 2) == ("sample", "view")
    assert label_dims("orientation", 3) == ("sample", "view", "quat")
    assert label_dims("depth", 4) == ("sample", "view", "depth_dim0", "depth_dim1")
    with pytest.raises(ValueError, match="fixation"):
        label_dims("fixation", 4)
