"""Tests of the saccades world: scene composition and glimpses by hand (fovea = the crop, periphery = the
pooled neighbourhood), actions = differences of fixations, labels, pools disjoint by source image,
bad input, and the saccades protocol end to end on tiny settings."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import stream_steps
from pydantic import ValidationError
from typer.testing import CliRunner

import colsim.protocols  # noqa: F401  (registers the worlds)
from colsim.analysis.probes import group_sides
from colsim.config import ConfigError, load_protocol, resolve_run_config
from colsim.protocols import _foveate as fv
from colsim.protocols import image_files
from colsim.protocols.affine_digits import _canonical as digit_canvas
from colsim.protocols.saccades import Saccades, SaccadesConfig, compose_scenes, saccades
from colsim.registry import WORLDS

SMALL = dict(scene_size=32, grid=2, glimpse=8)  # 16 px cells, 25 positions per axis
TINY_MODEL = ["model.encoder.channels=[4,8]", "model.action_embed=8", "model.aggregator.layers=1",
              "model.aggregator.heads=2", "model.predictor.hidden=16", "protocol.stream.batch=8",
              "protocol.stream.episode_length=4", "protocol.evaluation.probe_samples=20", "protocol.evaluation.views=3"]


def world(**kw) -> Saccades:
    return saccades(SaccadesConfig(**{**SMALL, **kw}))


def run_stream(w: Saccades, steps: int, batch=6, length=3, classes=None, overrides=None, seed=0):
    return stream_steps(w, steps, batch, length, classes, overrides, seed)


# ---- scenes ----------------------------------------------------------------------------------

def test_compose_scenes_by_hand():
    obj = torch.arange(1, 4, dtype=torch.float32)[:, None, None, None].expand(3, 1, 4, 4).clone() / 10  # 0.1, 0.2, 0.3
    members = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    off = torch.zeros(2, 4, 2, dtype=torch.long)
    off[1, 0] = torch.tensor([1, 0])  # scene 1, slot 0 (top-left cell) moved one column right (dx = 1)
    off[1, 3] = torch.tensor([0, 2])  # slot 3 (bottom-right) moved two rows down: half of it leaves the canvas
    sc = compose_scenes(obj, members, off, grid=2, size=8)[:, 0]  # (2, 8, 8)
    expect = torch.zeros(2, 8, 8)
    expect[0, :4, :4], expect[0, :4, 4:], expect[0, 4:, :4], expect[0, 4:, 4:] = 0.1, 0.2, 0.3, 0.1
    expect[1, :4, 4:] = 0.3  # slot 1: object 2
    expect[1, :4, 1:5] = torch.maximum(expect[1, :4, 1:5], torch.tensor(0.3))  # slot 0 (object 2) shifted; max
    expect[1, 4:, :4] = 0.2  # slot 2: object 1
    expect[1, 6:, 4:] = 0.1  # slot 3 (object 0) two rows down, cut at the border
    assert torch.equal(sc, expect)


def test_world_scenes_hold_their_member_digits():
    from sklearn.datasets import load_digits

    w = world(jitter=0)
    canvas, labels = digit_canvas(16)  # each digit on a 16 px cell, as the world places it
    for k in (0, 7, len(w.scenes) - 1):
        m = w.scene_members[k]
        quads = [w.scenes[k, :, :16, :16], w.scenes[k, :, :16, 16:], w.scenes[k, :, 16:, :16], w.scenes[k, :, 16:, 16:]]
        for s in range(4):
            assert torch.equal(quads[s], canvas[m[s]])
    # a scene's class is the class of each of its digits
    target = torch.tensor(load_digits().target)
    assert (target[w.scene_members] == w.scene_labels[:, None]).all()
    assert w.num_classes == 10 and w.spec.num_classes == 10
    # jitter moves objects by at most jitter px, fixed by split_seed
    a, b = world(jitter=3), world(jitter=3)
    assert torch.equal(a.scenes, b.scenes) and not torch.equal(a.scenes, w.scenes)


# ---- glimpses --------------------------------------------------------------------------------

def test_glimpse_fovea_and_periphery_by_hand():
    S, g, k = 12, 4, 3
    img = torch.arange(S * S, dtype=torch.float32).view(1, 1, S, S)
    top = torch.tensor([[3, 5]])  # x0 = 3 (column), y0 = 5 (row)
    out = fv.glimpse(img, top, g, periphery=k)
    assert out.shape == (1, 2, g, g)
    assert torch.equal(out[0, 0], img[0, 0, 5:9, 3:7])  # the fovea is the crop
    # periphery: the 12 x 12 square centred on the fixation (x, y) = (5, 7): columns -1..10, rows 1..12,
    # pooled 3 x 3; pixels outside the scene count as 0
    per = torch.zeros(g, g)
    for i in range(g):
        for j in range(g):
            vals = [img[0, 0, r, c].item() if 0 <= r < S and 0 <= c < S else 0.0
                    for r in range(1 + 3 * i, 4 + 3 * i) for c in range(-1 + 3 * j, 2 + 3 * j)]
            per[i, j] = sum(vals) / 9
    assert torch.allclose(out[0, 1], per)
    assert torch.equal(fv.glimpse(img, top, g), out[:, :1])  # periphery 0: the fovea alone
    assert torch.equal(fv.fixation_of(top, g), torch.tensor([[5.0, 7.0]]))


def test_stream_glimpses_are_crops_of_the_scene_at_the_fixation():
    w = world(periphery=2, glimpse=8)
    assert w.spec.obs_shape == (2, 8, 8) and w.spec.action_dim == 2 and w.spec.action_names == ("dx", "dy")
    for st in run_stream(w, 4):
        top = (st.labels["fixation"] - 4).long()  # (B, 2): x0, y0
        for b in range(len(top)):
            x0, y0 = top[b].tolist()
            scene = w.scenes[st.labels["image"][b], 0]
            assert torch.equal(st.obs[b, 0], scene[y0:y0 + 8, x0:x0 + 8])
            wide = torch.nn.functional.pad(scene, (4, 4, 4, 4))[y0:y0 + 16, x0:x0 + 16]  # 16 px around the centre
            assert torch.allclose(st.obs[b, 1], wide.reshape(8, 2, 8, 2).mean((1, 3)))
            assert 0 <= x0 <= 32 - 8 and 0 <= y0 <= 32 - 8


def test_salient_fixations_prefer_bright_glimpses():
    img = torch.zeros(1, 1, 10, 10)
    img[0, 0, 7, 2] = 1.0  # one bright pixel at (x, y) = (2, 7)
    cdf = fv.salient_cdf(img, 3, floor=1e-9)
    pos = fv.draw_positions(torch.rand(500, 2, generator=torch.Generator().manual_seed(0)), 8, cdf.expand(500, -1))
    # every glimpse covers the pixel: x0 in 0..2, y0 in 5..7
    assert pos[:, 0].min() >= 0 and pos[:, 0].max() <= 2 and pos[:, 1].min() >= 5 and pos[:, 1].max() <= 7
    assert len({tuple(p) for p in pos.tolist()}) == 9  # all nine such positions, equally likely
    u = torch.tensor([[0.0, 0.99], [0.999, 0.0]])
    assert fv.draw_positions(u, 8).tolist() == [[0, 7], [7, 0]]  # uniform: x0 from u0, y0 from u1
    w_s, w_u = world(), world(fixations="uniform")
    bright = [torch.stack([s.obs for s in run_stream(x, 10, batch=16)]).mean().item() for x in (w_s, w_u)]
    assert bright[0] > 1.3 * bright[1]


# ---- actions and labels ----------------------------------------------------------------------

def test_action_is_the_difference_of_fixations():
    w = world()
    L, unit = 3, 32 - 8
    steps = run_stream(w, 10, length=L)
    for t in range(len(steps) - 1):
        a, b = steps[t], steps[t + 1]
        same = ~b.start  # the next view belongs to the same episode
        assert torch.allclose(a.action[same], (b.labels["fixation"] - a.labels["fixation"])[same] / unit)
        assert (a.action[~same] == 0).all()  # the last view of an episode has no saccade
        assert torch.equal(a.labels["image"][same], b.labels["image"][same])
        assert (a.labels["episode"][same] == b.labels["episode"][same]).all()
    assert [bool(s.start[0]) for s in steps] == [t % L == 0 for t in range(10)]
    assert [bool(s.start[1]) for s in steps[1:]] == [t % L == 2 for t in range(1, 10)]  # staggered streams
    ps = w.probe_set(None, 12, 4, torch.Generator().manual_seed(0))
    fix = ps.labels["fixation"]  # (n, V, 2)
    assert torch.allclose(ps.actions[:, :-1], (fix[:, 1:] - fix[:, :-1]) / unit) and (ps.actions[:, -1] == 0).all()
    assert ps.actions.abs().max() <= 1


def test_labels_and_determinism():
    w = world()
    a, b = run_stream(w, 5, seed=3), run_stream(w, 5, seed=3)
    for x, y in zip(a, b):
        assert torch.equal(x.obs, y.obs) and torch.equal(x.action, y.action)
    for st in a:
        assert set(st.labels) == set(SaccadesConfig.LABELS)
        assert torch.equal(st.labels["class"], w.scene_labels[st.labels["image"]])
        assert torch.isin(st.labels["image"], w.train_scenes).all()
    assert {int(c) for s in run_stream(w, 6, classes=[3, 8], batch=8) for c in s.labels["class"]} <= {3, 8}
    # the stream state round-trips through torch.save (checkpoints)
    s = w.stream(4, 3, None, {})
    state = s.init(torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=True)
    assert torch.equal(s.step(state)[1].obs, s.step(again)[1].obs)


def test_pools_are_disjoint_by_source_image():
    w = world()
    members = [set(w.scene_members[ids].flatten().tolist()) for ids in (w.train_scenes, w.validation_scenes,
                                                                        w.probe_scenes)]
    assert not (members[0] & members[1] or members[0] & members[2] or members[1] & members[2])
    rows = w.scene_members.flatten()
    assert len(rows.unique()) == len(rows)  # a source image is in at most one scene
    for pool, ids in (("probe", w.probe_scenes), ("validation", w.validation_scenes)):
        ps = w.probe_set([0, 1, 2], 30, 2, torch.Generator().manual_seed(1), pool=pool)
        assert torch.isin(ps.labels["image"], ids).all()
        assert sorted(set(ps.labels["class"].tolist())) == [0, 1, 2]
        # the evaluation's split by image: no source digit on both sides
        fit = group_sides(ps.labels["image"].numpy(), seed=0)
        src = w.scene_members[ps.labels["image"]]
        assert not set(src[fit].flatten().tolist()) & set(src[~fit].flatten().tolist())
    # 2 x 2 scenes: the digits' pools (probe 0.3, validation 0.15) cut in groups of four
    assert len(w.probe_scenes) == sum(int((w.scene_labels[w.probe_scenes] == c).sum()) for c in range(10)) > 100


# ---- bad input -------------------------------------------------------------------------------

def test_bad_configs_name_the_field():
    with pytest.raises(ValidationError, match=r"glimpse\n.*must be smaller than the scene \(scene_size 32\), got 40; "
                                               r"lower glimpse or raise scene_size"):
        SaccadesConfig(scene_size=32, glimpse=40)
    with pytest.raises(ValidationError, match="must be smaller than the scene"):
        SaccadesConfig(scene_size=32, glimpse=32)
    with pytest.raises(ValidationError, match="source"):
        SaccadesConfig(source="cifar")
    with pytest.raises(ValidationError, match="multiple of grid 3"):
        SaccadesConfig(scene_size=32, grid=3)
    with pytest.raises(ValidationError, match=r"periphery\n.*must be 0 \(no periphery\) or a pooling factor >= 2"):
        SaccadesConfig(periphery=1)
    with pytest.raises(ValidationError, match="use an odd periphery or an even glimpse"):
        SaccadesConfig(glimpse=9, periphery=2)
    w = world()
    with pytest.raises(ConfigError, match=r"^protocol\.phases\[1\]\.world\.glimpse: cannot change per phase"):
        w.check_phase(None, {"glimpse": 4}, where="protocol.phases[1]")
    assert w.check_phase([2, 1], {"fixations": "uniform"}) == [1, 2]  # the fixation policy may change per phase
    with pytest.raises(ConfigError, match=r"^classes: must be a non-empty subset of the world's classes 0\.\.9"):
        w.check_phase([10])


def test_missing_fashion_files_and_classes_without_scenes(tmp_path):
    image_files.read_images.cache_clear()
    with pytest.raises(ConfigError) as e:
        world(source="fashion", path=str(tmp_path / "none"))
    msg = str(e.value)
    assert msg.startswith("protocol.world.path: ") and "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg
    # a small .npz source: class 1 has 5 images, too few for a 2 x 2 scene in the probe pool
    x = np.random.default_rng(0).integers(0, 256, (25, 8, 8), dtype=np.uint8)
    y = np.array([0] * 20 + [1] * 5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    w = world(source="fashion", path=str(tmp_path / "d.npz"))
    assert w.class_names == ["0", "1"] and w.num_classes == 2
    w.check_phase([0])
    with pytest.raises(ConfigError, match=r"^protocol\.phases\[0\]\.classes: the world's train pool has no scene of "
                                          r"class 1 .*lower world\.grid$"):
        w.check_phase([0, 1], where="protocol.phases[0]")
    mixed = world(source="mixed", path=str(tmp_path / "d.npz"))
    assert mixed.num_classes == 12 and mixed.class_names[10:] == ["0", "1"]
    assert (mixed.scene_members[mixed.scene_labels >= 10] >= 1797).all()  # file rows follow the 1797 digits


@pytest.mark.parametrize("sets,field", [
    (["protocol.world.glimpse=64"], "protocol.world.glimpse: must be smaller than the scene (scene_size 48)"),
    (["protocol.world.source=cifar"], "protocol.world.source: must be one of"),
    (["protocol.world.source=fashion", "protocol.world.path=/nonexistent/fashion"],
     "protocol.world.path: /nonexistent/fashion does not exist; install Fashion-MNIST with `apt-get install "
     "dataset-fashion-mnist`"),
    (["protocol.phases[0].world={glimpse: 8}"], "protocol.phases[0].world.glimpse: cannot change per phase"),
])
def test_cli_bad_input_exit_2_one_line(sets, field, tmp_path):
    from colsim.cli import app

    image_files.read_images.cache_clear()
    args = [a for s in sets for a in ("--set", s)]
    res = CliRunner().invoke(app, ["run", "saccades", *args, "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in " ".join(lines[0].split()) and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


# ---- registry, listing, protocol -------------------------------------------------------------

def test_registered_and_listed():
    from colsim.cli import app

    e = WORLDS["saccades"]
    assert e.config is SaccadesConfig and "saccade" in e.summary
    res = CliRunner().invoke(app, ["list", "worlds"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    rows = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") >= 4}
    assert "class, image, fixation, episode" in rows["saccades"] and "(dx, dy)" in rows["saccades"]


def test_protocol_builds_the_default_column_and_runs(tmp_path):
    from colsim.build import build_run
    from colsim.cli import app

    p = load_protocol("saccades")
    assert p["world"]["name"] == "saccades" and p["model"] == "seqjepa_cnn" and len(p["phases"]) == 1
    for rule in ("backprop", "lpl"):
        cfg = resolve_run_config("saccades", rule=rule)
        built = build_run(cfg)
        C, g = built.world.spec.obs_shape[0], cfg.protocol.world["glimpse"]
        assert built.world.spec.obs_shape == (2, g, g) and C == 2  # fovea + periphery
        state = built.column.init_state(2, "cpu")
        st = run_stream(built.world, 1, batch=2)[0]
        _, trace = built.column(state, st.obs, st.action, st.start)
        assert trace["z"].shape[0] == 2 and torch.isfinite(trace["z"]).all()
    sets = [a for s in TINY_MODEL for a in ("--set", s)]
    res = CliRunner().invoke(app, ["run", "saccades", "--steps", "6", "--out", str(tmp_path / "r"), "--quiet", *sets])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "summary.json").is_file()


@pytest.mark.skipif(not (Path(image_files.FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed in {image_files.FASHION_MNIST} "
                           "(apt-get install dataset-fashion-mnist)")
def test_fashion_scenes():
    image_files.read_images.cache_clear()
    w = world(source="fashion", probe_fraction=0.01, validation_fraction=0.01)
    assert w.class_names[0] == "T-shirt/top" and w.num_classes == 10
    labels = np.concatenate([image_files.read_idx(Path(image_files.FASHION_MNIST) / f"{p}-labels-idx1-ubyte.gz")
                             for p in ("train", "t10k")])
    assert (labels[w.scene_members.numpy()] == w.scene_labels.numpy()[:, None]).all()
    ps = w.probe_set(None, 20, 3, torch.Generator().manual_seed(0))
    assert ps.obs.shape == (20, 3, 1, 8, 8) and torch.isin(ps.labels["image"], w.probe_scenes).all()
