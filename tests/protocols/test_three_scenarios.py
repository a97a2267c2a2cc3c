"""The split_images and permuted_images worlds (van de Ven & Tolias 2019's three scenarios): labels, task ids and
targets per phase by hand, the held-out pools, the permutations, the packaged protocols, and bad input (exit 2, one
line naming the field)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tiny import stream_steps
from typer.testing import CliRunner

import colsim.protocols  # noqa: F401  (registers the worlds)
from colsim import registry
from colsim.build import build_world
from colsim.cli import app
from colsim.config import resolve_run_config
from colsim.protocols import image_files as imf
from colsim.protocols.permuted_images import PermutedImages, PermutedImagesConfig, permutations
from colsim.protocols.split_images import SplitImages, SplitImagesConfig

SCENARIOS = ("split_digits_task", "split_digits_domain", "split_digits_class", "permuted_digits",
             "split_fashion_task", "split_fashion_domain", "split_fashion_class", "permuted_fashion")
HAVE_FASHION = all((Path(imf.FASHION_MNIST) / f"{p}-{k}-ubyte.gz").is_file()
                   for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
runner = CliRunner()


def _steps(world, phase, n=3, batch=64, seed=0):
    return stream_steps(world, n, batch, classes=phase.classes, overrides=phase.world, seed=seed)


def test_packaged_and_shaped():
    names = set(registry.preset_names("protocols"))
    assert set(SCENARIOS) <= names
    for name in SCENARIOS:
        cfg = resolve_run_config(name)
        assert cfg.model.name == "classifier" and len(cfg.protocol.phases) == 5, name
        if name.startswith("split"):
            assert [ph.classes for ph in cfg.protocol.phases] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
        else:
            assert [ph.world["task"] for ph in cfg.protocol.phases] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("scenario,targets,tasks", [("task", 2, 5), ("domain", 2, 0), ("class", 10, 0)])
def test_split_labels_per_phase(scenario, targets, tasks):
    cfg = resolve_run_config(f"split_digits_{scenario}")
    world = build_world(cfg)
    assert (world.spec.num_targets, world.spec.num_tasks, world.spec.obs_shape) == (targets, tasks, (1, 8, 8))
    for k, ph in enumerate(cfg.protocol.phases):
        for st in _steps(world, ph):
            c = st.labels["class"]
            assert set(c.tolist()) == {2 * k, 2 * k + 1}  # task k holds classes 2k, 2k+1
            assert torch.equal(st.labels["target"], c % 2 if scenario != "class" else c)
            assert ("task" in st.labels) == (scenario == "task")
            if scenario == "task":
                assert st.labels["task"].tolist() == [k] * 64
            assert bool(st.start.all()) and st.action.shape == (64, 1) and float(st.action.abs().max()) == 0
            # every obs is its data row's image, unchanged
            assert torch.equal(st.obs, world.images[st.labels["image"]])


def test_pools_are_disjoint_and_probe_sets_come_from_theirs():
    cfg = resolve_run_config("split_digits_class")
    world = build_world(cfg)
    rows = {k: set(v.tolist()) for k, v in world.rows.items()}
    assert not (rows["train"] & rows["probe"]) and not (rows["train"] & rows["validation"])
    assert not (rows["probe"] & rows["validation"]) and sum(map(len, rows.values())) == 1797
    ph = cfg.protocol.phases[3]
    for pool in ("probe", "validation"):
        ps = world.probe_set(ph.classes, 40, 2, torch.Generator().manual_seed(0), ph.world, pool=pool)
        assert ps.obs.shape == (40, 2, 1, 8, 8) and torch.equal(ps.obs[:, 0], ps.obs[:, 1])  # identical views
        assert set(ps.labels["image"].tolist()) <= rows[pool]
        assert sorted(set(ps.labels["class"].tolist())) == [6, 7] and int((ps.labels["class"] == 6).sum()) == 20
    for st in _steps(world, ph):
        assert set(st.labels["image"].tolist()) <= rows["train"]


def test_permutations_fixed_bijections_one_per_task():
    p = permutations(64, 5, 0, True)
    assert torch.equal(p[0], torch.arange(64))  # task 0: the data unpermuted
    for k in range(5):
        assert torch.equal(p[k].sort().values, torch.arange(64))  # a bijection of the pixels
    assert len({tuple(r.tolist()) for r in p}) == 5  # one per task
    assert torch.equal(p, permutations(64, 5, 0, True))  # fixed by the seed
    assert not torch.equal(permutations(64, 5, 0, False)[0], torch.arange(64))


def test_permuted_world_shows_each_task_through_its_permutation():
    cfg = resolve_run_config("permuted_digits")
    world = build_world(cfg)
    assert (world.spec.num_targets, world.spec.num_tasks) == (10, 0)
    sets = [world.probe_set(ph.classes, 30, 2, torch.Generator().manual_seed(1), ph.world) for ph in cfg.protocol.phases]
    for k, ps in enumerate(sets):  # the same generator: the same images, each task's pixels rearranged
        assert torch.equal(ps.labels["image"], sets[0].labels["image"])
        assert torch.equal(ps.labels["target"], ps.labels["class"])
        raw = world.images[ps.labels["image"]].flatten(1)
        assert torch.equal(ps.obs[:, 0].flatten(1), raw[:, world.perm[k]])
        if k:
            assert not torch.equal(ps.obs, sets[0].obs)
    ph = cfg.protocol.phases[2]
    for st in _steps(world, ph, n=2):
        assert sorted(set(st.labels["class"].tolist())) == list(range(10))  # every class in every task
        assert torch.equal(st.obs.flatten(1), world.images[st.labels["image"]].flatten(1)[:, world.perm[2]])


def test_permuted_class_and_task_scenarios():
    w = PermutedImages(PermutedImagesConfig(scenario="class", permutations=3))
    assert (w.spec.num_targets, w.spec.num_tasks) == (30, 0)
    ps = w.probe_set(None, 20, 2, torch.Generator().manual_seed(0), {"task": 2})
    assert torch.equal(ps.labels["target"], 20 + ps.labels["class"])
    w = PermutedImages(PermutedImagesConfig(scenario="task", permutations=3))
    assert (w.spec.num_targets, w.spec.num_tasks) == (10, 3)
    ps = w.probe_set(None, 20, 2, torch.Generator().manual_seed(0), None)  # no task: every task, mixed
    assert ps.labels["task"].min() >= 0 and ps.labels["task"].max() <= 2 and len(set(ps.labels["task"].tolist())) > 1


def test_split_world_task_of_a_joint_phase_follows_the_class():
    w = SplitImages(SplitImagesConfig(scenario="task"))
    ps = w.probe_set(None, 50, 2, torch.Generator().manual_seed(0))
    assert torch.equal(ps.labels["task"], ps.labels["class"] // 2)


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST is not installed")
def test_fashion_probe_pool_is_the_idx_test_part():
    w = SplitImages(SplitImagesConfig(data="fashion", scenario="class"))
    assert w.spec.obs_shape == (1, 28, 28) and w.images.dtype == torch.uint8
    assert w.rows["probe"].tolist() == list(range(60000, 70000))
    assert len(w.rows["validation"]) == 9000 and len(w.rows["train"]) == 51000
    assert not set(w.rows["validation"].tolist()) & set(w.rows["train"].tolist())
    ps = w.probe_set([8, 9], 10, 2, torch.Generator().manual_seed(0))
    assert ps.obs.max() <= 1 and ps.obs.dtype == torch.float32 and set(ps.labels["class"].tolist()) == {8, 9}


@pytest.mark.parametrize("args,field", [
    (["split_digits_domain", "--set", "model.heads=5"], "model.heads: 5 heads (one per task, Task-IL) need task ids"),
    (["stationary", "--model", "classifier_mlp", "--set", "model.heads=5"], "model.heads: 5 heads"),
    (["split_digits_task", "--set", "model.heads=3"], "model.heads: 3 head(s) for a world of 5 tasks"),
    (["permuted_digits", "--set", "protocol.world.permutations=0"], "protocol.world.permutations: must be >= 1"),
    (["permuted_digits", "--set", "protocol.phases[4].world.task=7"], "protocol.phases[4].world"),
    (["split_digits_task", "--set", "protocol.world.tasks=6"], "protocol.world.tasks: 6 tasks x 2 classes"),
])
def test_bad_input_exits_2_with_one_line_naming_the_field(args, field, tmp_path):
    res = runner.invoke(app, ["run", *args, "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert field in " ".join(res.output.split()) and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_joint_streams_show_every_task_and_keep_each_phases_probe_set():
    """``joint: true``: the training stream of any phase mixes every task; the phase's probe set is its own task's."""
    cfg = resolve_run_config("split_digits_task", overrides=["protocol.world.joint=true"])
    world, ph = build_world(cfg), cfg.protocol.phases[1]
    tasks = torch.cat([st.labels["task"] for st in _steps(world, ph, n=3)])
    assert sorted(set(tasks.tolist())) == [0, 1, 2, 3, 4]
    ps = world.probe_set(ph.classes, 40, 2, torch.Generator().manual_seed(0), ph.world)
    assert set(ps.labels["class"].tolist()) == {2, 3}
    cfg = resolve_run_config("permuted_digits", overrides=["protocol.world.joint=true"])
    world, ph = build_world(cfg), cfg.protocol.phases[3]
    st = _steps(world, ph, n=1, batch=200)[0]
    raw = world.images[st.labels["image"]].flatten(1)
    shown = [k for k in range(5) if torch.equal(st.obs[:1].flatten(1), raw[:1, world.perm[k]])]
    assert shown  # every sample is one of the five permutations ...
    perms = {k for n in range(200) for k in range(5) if torch.equal(st.obs[n].flatten(), raw[n, world.perm[k]])}
    assert perms == {0, 1, 2, 3, 4}  # ... and the batch holds all five
    ps = world.probe_set(ph.classes, 20, 2, torch.Generator().manual_seed(0), ph.world)
    assert torch.equal(ps.obs[:, 0].flatten(1), world.images[ps.labels["image"]].flatten(1)[:, world.perm[3]])
