"""The objects3d world: pools of object instances, streams whose actions compose into the absolute
orientations (3DIEBench's relative rotation, checked against scipy), views that match their labels,
lighting, probe sets, the packaged protocols and bad input (exit 2, one line naming the field)."""
from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

import colsim.protocols  # noqa: F401  (registers the worlds)
from colsim.config import ConfigError, load_protocol, resolve_run_config, validate_as
from colsim.protocols._rotations import quat_to_matrix
from colsim.protocols.objects3d import LIGHT0, Objects3D, Objects3DConfig, objects3d
from colsim.registry import WORLDS


def make(**kw) -> Objects3D:
    return objects3d(Objects3DConfig(**{"image_size": 16, **kw}))


def run(world, steps, batch=8, length=4, classes=None, overrides=None, seed=0):
    stream = world.stream(batch, length, classes, overrides or {})
    state = stream.init(torch.Generator().manual_seed(seed))
    out = []
    for _ in range(steps):
        state, st = stream.step(state)
        out.append(st)
    return out


def same_rotation(p: torch.Tensor, q: torch.Tensor, atol=1e-5) -> bool:
    """Quaternions (..., 4) p and q are the same rotation (q or -q)."""
    return bool((torch.minimum((p - q).abs().amax(-1), (p + q).abs().amax(-1)) < atol).all())


# ---- objects, pools, registration -------------------------------------------------------------

def test_family_classes_and_instance_pools():
    w = make()
    assert w.num_classes == 24 and len(w.class_names) == 24 and w.spec.obs_shape == (1, 16, 16)
    assert w.spec.action_dim == 4 and w.spec.action_names == ("qx", "qy", "qz", "qw")
    rows = torch.cat([w.train_index, w.validation_index, w.probe_index])
    assert sorted(rows.tolist()) == list(range(24 * 10))  # disjoint pools covering every instance
    # 10 instances per class: probe round(0.3 * 10) = 3, validation round(0.15 * 10) = 2, train 5
    for idx, lab, k in ((w.probe_index, w.probe_labels, 3), (w.validation_index, w.validation_labels, 2),
                        (w.train_index, w.train_labels, 5)):
        assert np.bincount(lab.numpy()).tolist() == [k] * 24
        assert torch.equal(lab, idx // 10)  # row = class * instances + k
    assert make(family="solids").class_names[:3] == ("cube", "brick", "sphere")
    assert make(family="composites").class_names[0] == "table" and make(family="composites").num_classes == 12
    e = WORLDS["objects3d"]
    assert e.config is Objects3DConfig and "3-D objects" in e.summary


def test_step_labels_are_the_listed_ones_and_views_match_them():
    w = make(lighting="view", depth=True)
    steps = run(w, 5)
    for st in steps:
        assert set(st.labels) == set(Objects3DConfig.LABELS)
        assert st.obs.shape == (8, 2, 16, 16) and st.obs.dtype == torch.float32
        # the picture is the labelled instance under the labelled orientation and light
        again = w.render(st.labels["image"], st.labels["orientation"].double(), st.labels["light"].double())
        assert torch.allclose(st.obs, again, atol=1e-6)
        assert torch.equal(st.labels["class"], st.labels["image"] // 10)
        assert torch.isin(st.labels["image"], w.train_index).all()
        # depth exactly where the object is (shade >= albedo * ambient > 0 on it)
        assert torch.equal(st.obs[:, 0] > 0, st.obs[:, 1] > 0)


# ---- actions: relative rotations that compose into the absolute orientation --------------------

@pytest.mark.parametrize("action,frame", [("quaternion", "object"), ("quaternion", "camera"),
                                          ("rotvec", "object"), ("rotvec", "camera")])
def test_actions_compose_into_the_next_orientation(action, frame):
    w = make(action=action, action_frame=frame)
    A = 4 if action == "quaternion" else 3
    steps = run(w, 13, batch=6, length=5)
    n = 0
    for a, b in zip(steps[:-1], steps[1:]):
        last = a.action.abs().sum(1) == 0  # the last view of an episode: no action
        assert torch.equal(last, b.start) and a.action.shape == (6, A)
        assert (a.labels["image"][~last] == b.labels["image"][~last]).all()  # same instance within an episode
        q, q_next = a.labels["orientation"][~last].double(), b.labels["orientation"][~last].double()
        assert same_rotation(w.compose(q, a.action[~last]), q_next)
        # the same statement as matrices: R' = R R_a (object frame) or R_a R (camera frame)
        Ra = quat_to_matrix(w.compose(torch.tensor([[0.0, 0, 0, 1]]).double().expand(len(q), 4), a.action[~last]))
        R, R_next = quat_to_matrix(q), quat_to_matrix(q_next)
        assert torch.allclose(R @ Ra if frame == "object" else Ra @ R, R_next, atol=1e-5)
        n += int((~last).sum())
    assert n > 40


def test_quaternion_action_is_3diebench_relative_rotation():
    """3DIEBench (Garrido et al. 2023) gives the action as ``rot_1.inv() * rot_2`` in scipy, as_quat
    (x, y, z, w): the object-frame relative rotation, the default here (sign canonical, w >= 0)."""
    w = make()
    ps = w.probe_set(None, 48, 3, torch.Generator().manual_seed(0), {})
    q = ps.labels["orientation"].double().numpy()  # (n, V, 4) scalar-last
    for v in range(2):
        rel = (Rotation.from_quat(q[:, v]).inv() * Rotation.from_quat(q[:, v + 1])).as_quat()
        rel *= np.sign(rel[:, 3:])  # scipy's sign is arbitrary
        np.testing.assert_allclose(ps.actions[:, v].numpy(), rel, atol=1e-5)
    assert (ps.actions[:, -1] == 0).all() and (ps.actions[:, :-1, 3] >= 0).all()
    np.testing.assert_allclose(ps.actions[:, :-1].norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_rotation_range_and_haar_draws():
    ps = make(rotation=30).probe_set(None, 96, 4, torch.Generator().manual_seed(0), {})
    ang = 2 * torch.atan2(ps.labels["orientation"][..., :3].norm(dim=-1), ps.labels["orientation"][..., 3])
    assert ang.max() <= math.radians(30) + 1e-5 and ang.max() > math.radians(25)
    # rotation 180: uniform on SO(3); the angle's mean is pi/2 + 2/pi = 2.2074 (density (1 - cos t) / pi)
    q = torch.cat([st.labels["orientation"] for st in run(make(), 60, batch=32)])  # 1920 views
    ang = 2 * torch.atan2(q[:, :3].norm(dim=-1), q[:, 3])
    assert abs(ang.mean().item() - (math.pi / 2 + 2 / math.pi)) < 0.05
    assert quat_to_matrix(q.double()).mean(0).abs().max() < 0.06  # E[R] = 0 under the Haar measure


@pytest.mark.parametrize("lighting", ["fixed", "episode", "view"])
def test_lighting(lighting):
    w = make(lighting=lighting, light_angle=40)
    steps = run(w, 12, batch=8, length=4)
    light = torch.stack([st.labels["light"] for st in steps])  # (T, B, 3)
    start = torch.stack([st.start for st in steps])
    L0 = torch.tensor(LIGHT0)
    assert torch.allclose(light.norm(dim=-1), torch.ones(()), atol=1e-5)
    cos = (light * L0).sum(-1)
    assert (cos >= math.cos(math.radians(40)) - 1e-5).all()
    same_as_before = (light[1:] - light[:-1]).abs().amax(-1) < 1e-7  # (T-1, B)
    if lighting == "fixed":
        assert (cos > 1 - 1e-6).all()
    elif lighting == "episode":  # constant within an episode, new at a new one
        assert same_as_before[~start[1:]].all() and not same_as_before[start[1:]].any()
    else:
        assert not same_as_before.any()
    ps = w.probe_set(None, 24, 3, torch.Generator().manual_seed(0), {})
    varies = (ps.labels["light"][:, 1:] - ps.labels["light"][:, :1]).abs().amax(-1) > 1e-7
    assert varies.any() == (lighting == "view")


def test_streams_are_seeded_and_their_state_round_trips():
    w = make(lighting="view")
    a, b = run(w, 6, seed=3), run(w, 6, seed=3)
    assert all(torch.equal(x.obs, y.obs) and torch.equal(x.action, y.action) for x, y in zip(a, b))
    assert not torch.equal(run(w, 1, seed=4)[0].obs, a[0].obs)
    stream = w.stream(4, 3, [0, 5], {})
    state = stream.init(torch.Generator().manual_seed(0))
    state, _ = stream.step(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    s2 = torch.load(buf, weights_only=True)
    (_, x), (_, y) = stream.step(state), stream.step(s2)
    assert torch.equal(x.obs, y.obs) and torch.equal(x.labels["orientation"], y.labels["orientation"])
    assert set(torch.cat([st.labels["class"] for st in run(w, 8, classes=[0, 5])]).tolist()) == {0, 5}


def test_probe_sets_balance_classes_and_keep_instances_in_their_pool():
    w = make()
    ps = w.probe_set([1, 2, 3], 30, 4, torch.Generator().manual_seed(0), {})
    assert ps.obs.shape == (30, 4, 1, 16, 16) and ps.actions.shape == (30, 4, 4)
    assert np.bincount(ps.labels["class"].numpy()).tolist() == [0, 10, 10, 10]
    assert torch.isin(ps.labels["image"], w.probe_index).all()
    # each class cycles through its 3 probe instances before repeating: 10 episodes -> 4, 3, 3 uses
    for c in (1, 2, 3):
        used = np.bincount(ps.labels["image"][ps.labels["class"] == c].numpy())
        assert sorted(used[used > 0].tolist()) == [3, 3, 4]
    assert ps.labels["orientation"].shape == (30, 4, 4) and ps.labels["light"].shape == (30, 4, 3)
    val = w.probe_set(None, 24, 2, torch.Generator().manual_seed(0), {}, pool="validation")
    assert torch.isin(val.labels["image"], w.validation_index).all()
    # the probe split groups by instance: an instance's episodes all land on one side of a fit/score split
    from colsim.analysis.probes import group_sides
    side = group_sides(ps.labels["image"].numpy(), seed=0)
    for img in ps.labels["image"].unique():
        assert len(set(side[ps.labels["image"].numpy() == int(img)].tolist())) == 1


def test_phase_overrides():
    w = make()
    ps = w.probe_set(None, 24, 2, torch.Generator().manual_seed(0), {"rotation": 10, "lighting": "view"})
    ang = 2 * torch.atan2(ps.labels["orientation"][..., :3].norm(dim=-1), ps.labels["orientation"][..., 3])
    assert ang.max() <= math.radians(10) + 1e-5
    with pytest.raises(ConfigError, match=r"^protocol\.phases\[1\]\.world\.family: cannot change per phase"):
        w.check_phase([0], {"family": "solids"}, where="protocol.phases[1]")
    with pytest.raises(ConfigError, match=r"^protocol\.phases\[0\]\.classes: must be a non-empty subset of the "
                                          r"world's classes 0\.\.23"):
        w.check_phase([3, 24], where="protocol.phases[0]")


# ---- packaged protocols ---------------------------------------------------------------------

def test_packaged_protocols():
    base = load_protocol("objects3d")
    inc = load_protocol("objects3d_incremental")
    assert base["world"]["name"] == inc["world"]["name"] == "objects3d"
    assert base["world"] == inc["world"] and base["stream"] == inc["stream"]
    assert len(base["phases"]) == 1 and "classes" not in base["phases"][0]
    phases = [ph["classes"] for ph in inc["phases"]]
    # objects introduced over time: disjoint groups covering all 24, three solids (0..11) and three composites each
    assert sorted(c for p in phases for c in p) == list(range(24))
    assert all(sum(c < 12 for c in p) == 3 and len(p) == 6 for p in phases)
    for name in ("objects3d", "objects3d_incremental"):
        cfg = resolve_run_config(name, rule="backprop", steps=8)
        assert cfg.protocol.world["image_size"] == 32


def test_tiny_incremental_run_end_to_end(tmp_path):
    """A few steps of objects3d_incremental through the CLI: every phase's probe set, evaluation and store."""
    from _tiny import TINY

    from colsim.cli import app

    extra = ["protocol.evaluation.probe_samples=24", "protocol.evaluation.at_start=false"]
    sets = [a for s in TINY + extra for a in ("--set", s)]
    res = CliRunner().invoke(app, ["run", "objects3d_incremental", "--rule", "backprop", "--steps", "4", "--quiet",
                                   "--out", str(tmp_path / "r"), *sets])
    assert res.exit_code == 0, res.output
    import json
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["probe_sets"]) == 4
    assert np.isfinite(np.array(summary["accuracy_matrix"], dtype=float)[-1]).all()


# ---- bad input: exit 2, one line naming the field -------------------------------------------

@pytest.mark.parametrize("key,value,expect", [
    ("family", "animals", "protocol.world.family: must be one of 'all', 'solids' or 'composites'"),
    ("image_size", 8, "protocol.world.image_size: must be >= 16"),
    ("image_size", 256, "protocol.world.image_size: must be <= 128"),
    ("instances", 1, "protocol.world.instances: must be >= 2"),
    ("lighting", "disco", "protocol.world.lighting: must be one of"),
    ("action", "euler", "protocol.world.action: must be one of"),
])
def test_bad_world_fields_are_one_line_errors(key, value, expect):
    with pytest.raises(ConfigError) as e:
        validate_as(Objects3DConfig, {"name": "objects3d", key: value}, "protocol.world")
    assert str(e.value).startswith(expect) and "\n" not in str(e.value)


@pytest.mark.parametrize("override,field", [
    ("protocol.world.family=animals", "protocol.world.family: must be one of"),
    ("protocol.world.image_size=7", "protocol.world.image_size: must be >= 16"),
    ("protocol.phases[1].world={family: solids}", "protocol.phases[1].world.family: cannot change per phase"),
    ("protocol.phases[2].classes=[3,30]", "protocol.phases[2].classes: must be a non-empty subset"),
])
def test_cli_exits_2_with_one_line_naming_the_field(override, field):
    from colsim.cli import app

    res = CliRunner().invoke(app, ["validate", "objects3d_incremental", "--set", override])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and field in lines[0], res.output


def test_unknown_family_from_the_shell(tmp_path):
    """The installed command: exit 2, one stderr line naming the field and the valid families."""
    exe = Path(sys.executable).parent / "colsim"
    res = subprocess.run([str(exe), "validate", "objects3d", "--set", "protocol.world.family=animals"],
                         capture_output=True, text=True, cwd=tmp_path)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "protocol.world.family: must be one of 'all', 'solids' or 'composites'" in lines[0]


def test_list_worlds_shows_objects3d():
    from colsim.cli import app

    res = CliRunner().invoke(app, ["list", "worlds"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    rows = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") >= 4}
    assert "class, image, orientation, light, episode" in rows["objects3d"]
    assert "quaternion" in rows["objects3d"] and "3-D objects" in rows["objects3d"]
